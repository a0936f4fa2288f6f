"""The warnings of a golden board outlive the ``PUT`` that found them: ``GET`` and the list
return them with the model that checked the board, an inspection against the board counts them
in its ``reference``, a restart of the service keeps them, a replacement replaces them, and a
board stored without a check reads as not checked (``null``), not as a clean one.

Tiny real models (single and pair) with their cards' confidence cut lowered until the single
one finds defects on a drawn board; the golden board is a ``training.synth`` board with its drawn
defects, the board inspected against it the same board without them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.services.golden_store import GoldenStore
from tests.helpers.app import app_client, defect_cut, tiny_settings, with_thresholds
from tests.helpers.boards import encode, make_defective_board

SIDE = 256
BOARD = make_defective_board(seed=1, size=SIDE)
DEFECTIVE = encode(BOARD.image)
CLEAN = encode(BOARD.template)


@pytest.fixture(scope="module")
def models(tiny_weights: Path, tiny_pair_weights: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny models, cut where the single one finds defects on a drawn board."""
    single, pair = with_thresholds(tmp_path_factory.mktemp("models"), tiny_weights,
                                   tiny_pair_weights, confidence=defect_cut(tiny_weights))
    return single, pair


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


Start = Callable[[], AbstractContextManager[TestClient]]


@pytest.fixture
def start(models: tuple[Path, Path], data_dir: Path) -> Start:
    """Starts the service on ``data_dir``: each ``with`` is a new app through its lifespan
    (models loaded, nothing carried over in memory), so a second one is a restart."""
    single, pair = models
    return lambda: app_client(single, pair_weights_path=pair, data_dir=data_dir)


def put(client: TestClient, product: str, data: bytes) -> dict[str, Any]:
    response = client.put(f"/v1/golden-boards/{product}",
                          files={"file": ("golden.png", data, "image/png")})
    assert response.status_code in (200, 201), response.text[:500]
    body: dict[str, Any] = response.json()
    return body


def get(client: TestClient, path: str, **kw: Any) -> dict[str, Any]:
    response = client.get(path, **kw)
    assert response.status_code == 200, response.text[:500]
    body: dict[str, Any] = response.json()
    return body


def reference(client: TestClient, product: str) -> dict[str, Any]:
    """The ``reference`` of an inspection of the clean board against ``product``'s board."""
    response = client.post("/predict", params={"product": product, "mask": "none"},
                           files={"file": ("board.png", CLEAN, "image/png")})
    assert response.status_code == 200, response.text[:500]
    ref: dict[str, Any] = response.json()["reference"]
    return ref


def test_warnings_are_kept_across_a_restart_and_shown_to_inspections(start: Start) -> None:
    with start() as client:
        stored = put(client, "warned", DEFECTIVE)
        warnings, checked_by = stored["warnings"], stored["checked_by"]
        assert warnings, "the single model at this cut finds defects on the drawn board"
        assert checked_by == {"name": "tiny-test-unet", "version": "0.0.1-test",
                              "mode": "single"}
        meta = {k: stored[k] for k in ("product", "width", "height", "sha256", "created")}

    # A new process on the same data dir (lifespan and all): nothing held in memory.
    with start() as client:
        board = get(client, "/v1/golden-boards/warned")
        assert board == {**meta, "warnings": warnings, "checked_by": checked_by}
        assert get(client, "/v1/golden-boards")["boards"] == [board]

        ref = reference(client, "warned")
        assert (ref["source"], ref["sha256"]) == ("product", meta["sha256"])
        assert ref["warnings"] == len(warnings)
        batch = client.post("/predict/batch", params={"product": "warned", "mask": "none"},
                            files=[("files", ("a.png", CLEAN, "image/png"))])
        assert batch.status_code == 200, batch.text[:500]
        assert batch.json()["results"][0]["result"]["reference"]["warnings"] == len(warnings)

        # An uploaded golden board was never checked: nothing to count.
        upload = client.post("/predict", params={"mask": "none"},
                             files=[("file", ("b.png", CLEAN, "image/png")),
                                    ("golden", ("g.png", DEFECTIVE, "image/png"))])
        assert upload.status_code == 200, upload.text[:500]
        assert upload.json()["reference"]["warnings"] is None


def test_a_replaced_board_shows_its_own_warnings_only(start: Start, models: tuple[Path, Path],
                                                     data_dir: Path) -> None:
    with start() as client:
        first = put(client, "swap", DEFECTIVE)
        second = put(client, "swap", CLEAN)
        assert second["sha256"] != first["sha256"]
        board = get(client, "/v1/golden-boards/swap")
        assert (board["sha256"], board["warnings"]) == (second["sha256"], second["warnings"])
        assert reference(client, "swap")["warnings"] == len(second["warnings"])

        # Replaced again by a writer that does not check (another replica without a model, or
        # a version before checks were kept): the board reads as not checked, even though its
        # predecessors' checks were stored.
        put(client, "swap", DEFECTIVE)
        GoldenStore(tiny_settings(models[0], data_dir=data_dir).golden_dir, 0).put(
            "swap", BOARD.template[:, ::-1].copy())
        board = get(client, "/v1/golden-boards/swap")
        assert (board["warnings"], board["checked_by"]) == (None, None)


def test_a_board_stored_without_a_check_reads_as_not_checked(
    start: Start, models: tuple[Path, Path], data_dir: Path,
) -> None:
    # As a board stored before checks were kept: the board's file and no check file.
    GoldenStore(tiny_settings(models[0], data_dir=data_dir).golden_dir, 0).put(
        "old", BOARD.image)
    with start() as client:
        board = get(client, "/v1/golden-boards/old")
        assert (board["warnings"], board["checked_by"]) == (None, None)
        assert get(client, "/v1/golden-boards")["boards"] == [board]
        ref = reference(client, "old")
        assert ref["product"] == "old" and ref["warnings"] is None
        # Stored again through the API, the same board is checked from then on.
        stored = put(client, "old", DEFECTIVE)
        assert stored["sha256"] == board["sha256"]
        assert get(client, "/v1/golden-boards/old")["warnings"] == stored["warnings"]
