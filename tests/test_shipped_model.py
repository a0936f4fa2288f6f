"""The shipped weights, served end to end, find the annotated defects of real DeepPCB boards.

Needs the DeepPCB training split in ``../shared/datasets/deeppcb`` (not part of the project);
where it is absent, the test skips and says so. Boards come from the board groups that
training held out (``training.data.VAL_GROUPS``), so they are designs the models never saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import DEFAULT_WEIGHTS, Settings
from app.inference.card import default_card_path, load_card
from app.main import create_app

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "deeppcb"
PAIR_WEIGHTS = DEFAULT_WEIGHTS.with_name("pcb_pair_unet.keras")
N_BOARDS = 8
#: Floors well under the validation numbers in MODEL_CARD.md, so the test catches a broken
#: model or serving path, not noise (DeepPCB protocol, IoU > 0.33, the card's margin).
MIN_RECALL = {"single": 0.5, "pair": 0.85}
MIN_PRECISION = {"single": 0.3, "pair": 0.8}

pytestmark = [
    pytest.mark.data,
    # Slow: loads both full-size models and inspects 16 full boards.
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"DeepPCB data not present at {DATA}"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    assert DEFAULT_WEIGHTS.is_file(), f"shipped weights missing: {DEFAULT_WEIGHTS}"
    assert PAIR_WEIGHTS.is_file(), f"shipped pair weights missing: {PAIR_WEIGHTS}"
    settings = Settings(weights_path=DEFAULT_WEIGHTS, pair_weights_path=PAIR_WEIGHTS,
                        data_dir=tmp_path_factory.mktemp("data"))
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("mode", ["single", "pair"])
def test_shipped_models_find_annotated_defects(client: TestClient, mode: str) -> None:
    from training.data import parse_annotations, read_split, split_by_groups
    from training.evaluate import match_image

    weights = PAIR_WEIGHTS if mode == "pair" else DEFAULT_WEIGHTS
    card = load_card(default_card_path(weights))
    margin = int(getattr(card, "annotation_box_margin_px", 0) or 0)
    _, val = split_by_groups(read_split(DATA))
    found = total = reported = 0
    for sample in val[:: len(val) // N_BOARDS][:N_BOARDS]:
        files = {"file": (sample.test_path.name, sample.test_path.read_bytes(), "image/jpeg")}
        if mode == "pair":
            files["template"] = (sample.template_path.name, sample.template_path.read_bytes(),
                                 "image/jpeg")
        r = client.post("/predict?mask=none", files=files)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["mode"] == mode
        assert body["image"] == {"width": 640, "height": 640}
        if mode == "pair":
            assert body["reference"]["source"] == "upload"
            assert body["reference"]["alignment"]["score"] > 0.5
        preds = [
            (
                card.classes.index(d["class"]) + 1,
                d["confidence"],
                (d["bbox"][0] - margin, d["bbox"][1] - margin,
                 d["bbox"][2] + margin, d["bbox"][3] + margin),
            )
            for d in body["defects"]
        ]
        truths = [(b.label, (b.x1, b.y1, b.x2, b.y2)) for b in parse_annotations(
            sample.annotation_path)]
        found += sum(match_image(preds, truths))
        total += len(truths)
        reported += len(preds)
    assert total > 0
    assert found / total >= MIN_RECALL[mode], f"{mode}: found {found} of {total} defects"
    assert found / max(reported, 1) >= MIN_PRECISION[mode], (
        f"{mode}: {found} of {reported} reported defects are real"
    )
