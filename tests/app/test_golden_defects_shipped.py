"""A golden board with a pin hole, served by the shipped models end to end: ``PUT`` warns
about the pin hole, and a good board inspected against it is not given that pin hole as a
defect (a short, or anything else), while the same pin hole on the board itself is one.

Boards from ``training.synth``: ``image`` carries one drawn pin hole, ``template`` is the
same board without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.core.config import DEFAULT_WEIGHTS, Settings
from app.main import create_app
from training.synth import encode, make_board

PAIR_WEIGHTS = DEFAULT_WEIGHTS.with_name("pcb_pair_unet.keras")
#: Boards whose pin hole is large enough for both shipped models to see (seed 0 draws a 5 px
#: hole that the pair model misses on the board itself; seed 1 one at the border).
SEEDS = (2, 3)

# Slow: loads both full-size models.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    assert DEFAULT_WEIGHTS.is_file() and PAIR_WEIGHTS.is_file(), "shipped weights missing"
    settings = Settings(weights_path=DEFAULT_WEIGHTS, pair_weights_path=PAIR_WEIGHTS,
                        data_dir=tmp_path_factory.mktemp("data"))
    with TestClient(create_app(settings)) as c:
        yield c


def overlaps(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_pin_hole_in_the_golden_board(client: TestClient, seed: int) -> None:
    board = make_board(seed=seed, size=640, n_defects=1, defect_classes=["pin_hole"])
    hole = board.defects[0].bbox
    product = f"pin-hole-{seed}"

    put = client.put(f"/v1/golden-boards/{product}",
                     files={"file": ("golden.png", encode(board.image), "image/png")})
    assert put.status_code == 201, put.text
    stored = put.json()
    assert stored["checked_by"]["mode"] == "single"
    assert any(w["class"] == "pin_hole" and overlaps(w["bbox"], hole)
               for w in stored["warnings"]), stored["warnings"]
    # Stored all the same: the warnings are advice, not a refusal; and kept with the board.
    got = client.get(f"/v1/golden-boards/{product}")
    assert got.status_code == 200
    assert (got.json()["warnings"], got.json()["checked_by"]) == (stored["warnings"],
                                                                  stored["checked_by"])

    good = client.post("/predict", params={"product": product, "mask": "none"},
                       files={"file": ("board.png", encode(board.template), "image/png")})
    assert good.status_code == 200, good.text
    body = good.json()
    assert not [d for d in body["defects"] if overlaps(d["bbox"], hole)], body["defects"]
    assert all(overlaps(d["bbox"], hole) for d in body["reference_defects"])
    # The station learns that the golden board it was compared with is suspect.
    assert body["reference"]["warnings"] == len(stored["warnings"])

    # The other way round the pin hole is the board's, and it is reported as a defect.
    clean = client.put(f"/v1/golden-boards/{product}",
                       files={"file": ("golden.png", encode(board.template), "image/png")})
    bad = client.post("/predict", params={"product": product, "mask": "none"},
                      files={"file": ("board.png", encode(board.image), "image/png")}).json()
    assert any(overlaps(d["bbox"], hole) for d in bad["defects"]), bad["defects"]
    assert bad["reference_defects"] == []
    assert bad["reference"]["warnings"] == len(clean.json()["warnings"])
