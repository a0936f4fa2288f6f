"""Every route of the API, read from the app's own OpenAPI schema (so a new route is covered
the day it is added), refuses a request without a key (401) and a key of a lower role (403),
before it reads anything of the request."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.helpers.app import ADMIN, INSPECT, REVIEW, assert_error

#: Open to anyone: the probes (the metrics' access is the deployment's choice).
OPEN = {"/livez", "/readyz", "/metrics"}
#: The lowest role of each protected route; every other route needs the ``inspect`` role.
ADMIN_ONLY = {("PUT", "/v1/golden-boards/{product}"), ("DELETE", "/v1/golden-boards/{product}"),
              ("GET", "/v1/inspections/export"), ("DELETE", "/v1/inspections/{inspection_id}"),
              ("PUT", "/v1/products/{product}/recipe")}
REVIEW_PREFIXES = ("/v1/inspections", "/v1/stats")


def routes() -> list[tuple[str, str]]:
    spec = create_app().openapi()
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if p not in OPEN]


def concrete(path: str) -> str:
    return (path.replace("{product}", "board-a")
            .replace("{inspection_id}", "insp_00000000000000000000000000"))


@pytest.mark.parametrize(("method", "path"), routes(), ids=lambda v: str(v))
def test_every_route_needs_a_key_of_its_role(
    client: TestClient, method: str, path: str
) -> None:
    url = concrete(path)
    assert_error(client.request(method, url), 401, "unauthorized")
    assert_error(client.request(method, url, headers={"x-api-key": "k-wrong"}), 401,
                 "unauthorized")
    if (method, path) in ADMIN_ONLY:
        assert_error(client.request(method, url, headers=REVIEW), 403, "forbidden")
        assert_error(client.request(method, url, headers=INSPECT), 403, "forbidden")
    elif path.startswith(REVIEW_PREFIXES):
        assert_error(client.request(method, url, headers=INSPECT), 403, "forbidden")
    # The right key gets past authentication (whatever the request then lacks).
    assert client.request(method, url, headers=ADMIN).status_code not in (401, 403)
