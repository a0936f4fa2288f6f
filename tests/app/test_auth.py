"""API keys (``PCB_API_KEYS``): inspections, model metadata and golden boards need one;
probes do not."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.config import Settings
from tests.helpers.app import app_client, assert_error
from tests.helpers.boards import board_png

BOARD = board_png(64, 64, seed=1)


@pytest.fixture(scope="module")
def client(tiny_weights: Path) -> Iterator[TestClient]:
    # Two inspect keys: during a rotation both the old and the new key are accepted; golden
    # boards are changed with the admin key.
    with app_client(tiny_weights,
                    api_keys="line-old:inspect:k1,line-new:inspect:k2,ops:admin:k-admin") as c:
        yield c


def predict(client: TestClient, headers: dict[str, str]) -> object:
    return client.post("/predict", files={"file": ("b.png", BOARD, "image/png")},
                       headers=headers)


PROTECTED = [
    ("POST", "/predict"),
    ("POST", "/predict/batch"),
    ("GET", "/v1/model"),
    # Golden boards decide what every later inspection of a product is compared with.
    ("PUT", "/v1/golden-boards/p1"),
    ("GET", "/v1/golden-boards"),
    ("GET", "/v1/golden-boards/p1"),
    ("DELETE", "/v1/golden-boards/p1"),
]
BAD_CREDENTIALS = {
    "none": {},
    "wrong_bearer": {"authorization": "Bearer k3"},
    "wrong_x_api_key": {"x-api-key": "nope"},
    "prefix_of_a_key": {"authorization": "Bearer k"},
    "key_plus_suffix": {"x-api-key": "k1k2"},
    "basic_scheme": {"authorization": "Basic azE6"},
    "empty_bearer": {"authorization": "Bearer "},
    "empty_x_api_key": {"x-api-key": ""},
    "case_changed": {"x-api-key": "K1"},
}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("headers", list(BAD_CREDENTIALS.values()), ids=list(BAD_CREDENTIALS))
def test_missing_or_wrong_key_is_401(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = client.request(method, path, headers=headers)
    error = assert_error(response, 401, "unauthorized")
    assert "Bearer" in error["message"] and "X-API-Key" in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_bearer_first_key_works(client: TestClient) -> None:
    response = predict(client, {"authorization": "Bearer k1"})
    assert response.status_code == 200, response.text[:300]  # type: ignore[attr-defined]


def test_x_api_key_second_key_works(client: TestClient) -> None:
    response = predict(client, {"x-api-key": "k2"})
    assert response.status_code == 200, response.text[:300]  # type: ignore[attr-defined]
    assert client.get("/v1/model", headers={"x-api-key": "k2"}).status_code == 200


def test_golden_boards_work_with_a_key(client: TestClient) -> None:
    key = {"authorization": "Bearer k1"}
    admin = {"x-api-key": "k-admin"}
    # Storing or removing a golden board takes the admin role; reading any valid key.
    assert_error(client.put("/v1/golden-boards/p1", headers=key,
                            files={"file": ("g.png", BOARD, "image/png")}), 403, "forbidden")
    put = client.put("/v1/golden-boards/p1", files={"file": ("g.png", BOARD, "image/png")},
                     headers=admin)
    assert put.status_code == 201, put.text[:300]
    assert client.get("/v1/golden-boards/p1", headers=key).status_code == 200
    assert_error(client.delete("/v1/golden-boards/p1", headers={"x-api-key": "k2"}), 403)
    assert client.delete("/v1/golden-boards/p1", headers=admin).status_code == 204


def test_scheme_is_case_insensitive(client: TestClient) -> None:
    assert client.get("/v1/model", headers={"authorization": "bearer k1"}).status_code == 200


def test_auth_is_checked_before_the_body_is_read(client: TestClient) -> None:
    # A keyless client learns nothing about its upload: 401, not an image error.
    response = client.post("/predict", content=b"junk", headers={"content-type": "image/png"})
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_probes_are_open(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, (path, response.text[:200])


def test_metrics_need_a_key(client: TestClient) -> None:
    # They tell verdict counts and false-call rates; Prometheus gets a key of its own.
    assert_error(client.get("/metrics"), 401, "unauthorized")
    assert client.get("/metrics", headers={"x-api-key": "k1"}).status_code == 200


def test_rejections_are_counted(client: TestClient) -> None:
    def rejected() -> float:
        for line in client.get("/metrics", headers={"x-api-key": "k1"}).text.splitlines():
            if line.startswith('pcb_rejected_total{reason="unauthorized"}'):
                return float(line.split()[-1])
        return 0.0

    before = rejected()
    client.get("/v1/model")
    assert rejected() == before + 1


def test_empty_keys_are_refused_in_settings(tiny_weights: Path) -> None:
    from pydantic import ValidationError

    from tests.helpers.app import tiny_settings

    # An empty key would let in anyone sending "Bearer " with nothing after it.
    with pytest.raises(ValidationError, match="entry 2: key"):
        tiny_settings(tiny_weights, api_keys="a:inspect:k1,b:inspect: ")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("st-3:inspect:abc", [("st-3", "inspect", "abc")]),
        # Spaces around entries and names are dropped; a key may hold colons.
        (" st-3:review:abc , ops:admin:a:b:c ", [("st-3", "review", "abc"),
                                                 ("ops", "admin", "a:b:c")]),
        ('[{"name": "boss", "role": "admin", "key": "s3cr3t-1"}, {"name": "line", '
         '"key": "s3cr3t-2"}]', [("boss", "admin", "s3cr3t-1"), ("line", "inspect", "s3cr3t-2")]),
        ("", []),
    ],
)
def test_api_keys_with_names_and_roles(
    monkeypatch: pytest.MonkeyPatch, tiny_weights: Path, env: str,
    expected: list[tuple[str, str, str]],
) -> None:
    # One syntax, name:role:key separated by commas, and its JSON form.
    monkeypatch.setenv("PCB_API_KEYS", env)
    entries = Settings(weights_path=tiny_weights).api_keys
    assert [(e.name, e.role, e.key) for e in entries] == expected
    # The key is never part of an entry's repr (it ends up in logs).
    assert all(e.key not in repr(e) for e in entries)


def test_malformed_json_keys_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, tiny_weights: Path
) -> None:
    monkeypatch.setenv("PCB_API_KEYS", '["k1", ')
    with pytest.raises(ValidationError, match="PCB_API_KEYS looks like a JSON list"):
        Settings(weights_path=tiny_weights)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ('[{"name": "a", "role": "boss", "key": "x"}]', "entry 1: role 'boss'"),
        ("a:review:k1,a:admin:k2", "names must be unique"),
        ('[{"name": "a", "key": ""}]', "entry 1: key"),
        # The forms without a name and a role are gone: one key, or a JSON list of strings.
        ("s3cr3t", "entry 1 is not name:role:key"),
        ("a:inspect:k1,s3cr3t", "entry 2 is not name:role:key"),
        ("a:boss:k1", "entry 1 is not name:role:key"),
        ('["s3cr3t"]', "entry 1 is not an object"),
    ],
)
def test_bad_keys_are_refused_by_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch, tiny_weights: Path, env: str, message: str
) -> None:
    monkeypatch.setenv("PCB_API_KEYS", env)
    with pytest.raises(ValidationError, match=re.escape(message)) as err:
        Settings(weights_path=tiny_weights)
    # The key received is never part of the message.
    assert "s3cr3t" not in str(err.value.errors()[0]["msg"])
