"""Which differences come from the golden board: on synthetic boards with one drawn defect,
compared both ways (the board has it; the golden board has it)."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference.defects import Defect, PostprocessConfig
from app.inference.pipeline import InferenceResult
from app.inference.postprocess import summarize
from app.inference.registration import Alignment
from app.services.golden_defects import comes_from_golden, split_golden_defects
from pcb_inspect.classes import CLASS_NAMES
from training.synth import make_board, moved

SIDE = 256
SEEDS = range(4)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_a_defect_of_the_board_stays_the_boards(name: str, seed: int):
    board = make_board(seed=seed, size=SIDE, n_defects=1, defect_classes=[name])
    assert not comes_from_golden(board.image, board.template, board.defects[0].bbox)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_pin_hole_in_the_golden_board_is_the_golden_boards(seed: int):
    board = make_board(seed=seed, size=SIDE, n_defects=1, defect_classes=["pin_hole"])
    # The golden board is the one with the defect; the board is right.
    assert comes_from_golden(board.template, board.image, board.defects[0].bbox)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["open", "short", "mousebite", "spur", "spurious_copper"])
def test_other_golden_board_defects_stay_differences(name: str, seed: int):
    # Not told by shape (a speck of copper looks like a small pad): the check on PUT is what
    # catches them.
    board = make_board(seed=seed, size=SIDE, n_defects=1, defect_classes=[name])
    assert not comes_from_golden(board.template, board.image, board.defects[0].bbox)


def test_a_slightly_misregistered_golden_board_still_tells(seed: int = 0):
    board = make_board(seed=seed, size=SIDE, n_defects=1, defect_classes=["pin_hole"])
    golden = moved(board.image, 0.6, -0.4, 0.0)  # registration leaves sub-pixel residue
    assert comes_from_golden(board.template, golden, board.defects[0].bbox)
    assert not comes_from_golden(moved(board.image, 0.6, -0.4, 0.0), board.template,
                                    board.defects[0].bbox)


def test_nothing_differs_nothing_moves():
    board = make_board(seed=3, size=SIDE, n_defects=0)
    assert not comes_from_golden(board.image, board.image, (10, 10, 40, 40))


def _result(defects: list[Defect], class_map: np.ndarray, config: PostprocessConfig,
            alignment: Alignment | None) -> InferenceResult:
    h, w = class_map.shape
    return InferenceResult(w, h, defects, summarize(defects, CLASS_NAMES, h * w, config),
                           class_map, 1, {}, alignment)


def _defect(i: int, name: str, bbox: tuple[int, int, int, int]) -> Defect:
    area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
    return Defect(id=i, class_=name, confidence=0.9, bbox=bbox, area_px=area,
                  area_mm2=area / 48.0**2, centroid=(bbox[0] + 0.5, bbox[1] + 0.5))


def test_split_moves_the_golden_boards_defect_out_of_defects_summary_and_mask():
    # The golden board has a pin hole; the board has a real short elsewhere.
    drawn = make_board(seed=1, size=SIDE, n_defects=2, defect_classes=["pin_hole", "short"])
    hole, short = (d.bbox for d in drawn.defects)
    golden, board = drawn.template.copy(), drawn.template.copy()
    for image, (x0, y0, x1, y1) in ((golden, hole), (board, short)):
        image[y0:y1, x0:x1] = drawn.image[y0:y1, x0:x1]
    config = PostprocessConfig(threshold=0.5, min_area_px=0, pixels_per_mm=48.0,
                               fail_rule="count", fail_min_count=1)
    class_map = np.zeros((SIDE, SIDE), np.uint8)
    for bbox, label in ((hole, CLASS_NAMES.index("short") + 1),
                        (short, CLASS_NAMES.index("short") + 1)):
        class_map[bbox[1] : bbox[3], bbox[0] : bbox[2]] = label
    boxes = sorted([hole, short], key=lambda b: (b[1], b[0]))  # ids in the order of position
    defects = [_defect(i, "short", b) for i, b in enumerate(boxes, start=1)]
    identity = Alignment(0.0, 0.0, 0.0, 1.0, np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    result = _result(defects, class_map, config, identity)

    kept, from_golden = split_golden_defects(result, board, golden, config, CLASS_NAMES)
    assert [d.bbox for d in from_golden] == [hole]
    assert [(d.id, d.bbox) for d in kept.defects] == [(1, short)]
    assert kept.summary.defect_count == 1 and kept.summary.by_class["short"] == 1
    assert not kept.class_map[hole[1] : hole[3], hole[0] : hole[2]].any()
    assert kept.class_map[short[1] : short[3], short[0] : short[2]].all()

    # Without a golden board's alignment (the single-image model) nothing moves.
    single = _result(defects, class_map, config, None)
    assert split_golden_defects(single, board, golden, config, CLASS_NAMES) == (single, [])
