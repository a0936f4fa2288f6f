"""Tests for training.evaluate: box IoU, DeepPCB matching, AP, and the end-to-end report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pcb_inspect.cli import main as cli_main
from pcb_inspect.synth import write_deeppcb_folder
from tests.conftest import save_tiny_model
from training.evaluate import (
    IOU_MATCH,
    average_precision,
    box_iou,
    build_parser,
    evaluate,
    match_image,
)

CLASSES = ("open", "short", "mousebite", "spur", "spurious_copper", "pin_hole")
REPORT_KEYS = {
    "data", "split", "boards", "weights", "weights_sha256", "precision_mode", "threshold",
    "min_area_px", "box_margin_px", "iou_match", "precision", "recall", "f_score", "map",
    "mean_dice", "mean_iou", "boards_per_second", "per_class",
}
CLASS_KEYS = {"dice", "iou", "precision", "recall", "ap", "truths", "predictions"}
RATES = ("precision", "recall", "f_score", "map", "mean_dice", "mean_iou")
CLASS_RATES = ("dice", "iou", "precision", "recall", "ap")


# --- box_iou ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),  # identical
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),  # disjoint
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges, max exclusive
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),  # half overlap: 50 / (100 + 100 - 50)
        ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # contained
        ((0, 0, 4, 2), (2, 1, 6, 5), 2 / (8 + 16 - 2)),  # corner overlap 2x1
        ((3, 3, 3, 3), (3, 3, 3, 3), 0.0),  # empty boxes: no union
    ],
)
def test_box_iou_hand_values(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert box_iou(b, a) == pytest.approx(expected, abs=1e-12)


# --- match_image ------------------------------------------------------------------------------


def test_match_is_greedy_by_confidence():
    truth = [(1, (0, 0, 10, 10))]
    # The less confident prediction comes first in the list but must not take the truth.
    preds = [(1, 0.6, (0, 0, 10, 10)), (1, 0.9, (1, 0, 10, 10))]
    assert match_image(preds, truth) == [False, True]


def test_match_requires_the_same_class():
    truth = [(2, (0, 0, 10, 10))]
    assert match_image([(3, 0.9, (0, 0, 10, 10))], truth) == [False]
    assert match_image([(2, 0.9, (0, 0, 10, 10))], truth) == [True]


def test_match_iou_must_exceed_the_threshold_strictly():
    assert IOU_MATCH == 0.33
    truth = [(1, (0, 0, 100, 1))]
    assert box_iou((0, 0, 33, 1), (0, 0, 100, 1)) == 0.33
    assert match_image([(1, 0.9, (0, 0, 33, 1))], truth) == [False]  # IoU == 0.33
    assert match_image([(1, 0.9, (0, 0, 34, 1))], truth) == [True]  # IoU == 0.34
    assert match_image([(1, 0.9, (0, 0, 34, 1))], truth, iou_threshold=0.5) == [False]


def test_each_truth_is_used_once():
    truth = [(1, (0, 0, 10, 10))]
    preds = [(1, 0.9, (0, 0, 10, 10)), (1, 0.8, (0, 0, 10, 10)), (1, 0.7, (0, 0, 10, 10))]
    assert match_image(preds, truth) == [True, False, False]
    two = [(1, (0, 0, 10, 10)), (1, (30, 30, 40, 40))]
    preds = [(1, 0.5, (30, 30, 40, 40)), (1, 0.9, (0, 0, 10, 10))]
    assert match_image(preds, two) == [True, True]


def test_match_takes_the_best_free_truth():
    truths = [(1, (0, 0, 10, 10)), (1, (6, 0, 16, 10))]
    # The first prediction overlaps both truths (IoU 0.33 and 0.82): it must take the better,
    # which leaves the first truth to the second prediction.
    preds = [(1, 0.9, (5, 0, 15, 10)), (1, 0.8, (0, 0, 10, 10))]
    assert match_image(preds, truths) == [True, True]


def test_match_without_truths_or_predictions():
    assert match_image([(1, 0.9, (0, 0, 5, 5))], []) == [False]
    assert match_image([], [(1, (0, 0, 5, 5))]) == []


# --- average_precision ------------------------------------------------------------------------


def test_average_precision_hand_example():
    # Sorted by confidence: hit, miss, hit; 2 truths.
    # Recall steps 0 -> 0.5 at precision 1, then 0.5 -> 1 at precision 2/3.
    expected = 0.5 * 1.0 + 0.5 * (2 / 3)
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(expected)
    assert expected == pytest.approx(0.8333, abs=1e-4)


def test_average_precision_ignores_input_order():
    confidences, hits = [0.9, 0.8, 0.7, 0.6, 0.5], [True, False, True, False, True]
    expected = average_precision(confidences, hits, 4)
    pairs = list(zip(confidences, hits, strict=True))
    random.Random(0).shuffle(pairs)
    shuffled = average_precision([p[0] for p in pairs], [p[1] for p in pairs], 4)
    assert shuffled == pytest.approx(expected)
    # By hand: recall 0.25 @ 1, 0.5 @ 2/3 (interpolated from 3 hits in 5 -> max(2/3, 3/5)),
    # 0.75 @ 3/5.
    assert expected == pytest.approx(0.25 * 1 + 0.25 * (2 / 3) + 0.25 * (3 / 5))


def test_average_precision_interpolates_precision_upwards():
    # miss, hit: raw precision at recall 1 is 1/2; nothing better to its right.
    assert average_precision([0.9, 0.8], [False, True], 1) == pytest.approx(0.5)
    # miss, hit, hit with 2 truths: precision 1/2 at recall .5, 2/3 at recall 1 -> both 2/3.
    assert average_precision([0.9, 0.8, 0.7], [False, True, True], 2) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("confidences", "hits", "n_truth", "expected"),
    [
        ([0.9, 0.8], [True, True], 2, 1.0),  # perfect
        ([0.9], [True], 2, 0.5),  # half the truths found
        ([0.9, 0.8], [False, False], 2, 0.0),  # all wrong
        ([], [], 3, 0.0),  # nothing predicted
        ([0.9], [False], 0, 0.0),  # nothing to find
    ],
)
def test_average_precision_edge_cases(confidences, hits, n_truth, expected):
    assert average_precision(confidences, hits, n_truth) == pytest.approx(expected)


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory) -> tuple[Path, Path]:
    """Three synthetic 160 px boards and a tiny model with a 64 px tile."""
    base = tmp_path_factory.mktemp("evaluate")
    data = write_deeppcb_folder(base / "data", n_pairs=3, seed=0, size=160)
    weights = save_tiny_model(base / "model", tile_size=64)
    return data, weights


def check_report(report: dict, boards: int) -> None:
    assert set(report) == REPORT_KEYS
    assert report["boards"] == boards
    assert report["iou_match"] == IOU_MATCH
    for key in RATES:
        assert 0.0 <= report[key] <= 1.0, key
    assert report["boards_per_second"] > 0
    assert len(report["weights_sha256"]) == 64
    assert list(report["per_class"]) == list(CLASSES)
    for name, metrics in report["per_class"].items():
        assert set(metrics) == CLASS_KEYS, name
        for key in CLASS_RATES:
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["predictions"] >= 0


def test_evaluate_end_to_end(eval_setup):
    data, weights = eval_setup
    args = build_parser().parse_args(
        ["--data", str(data), "--weights", str(weights), "--split", "all", "--limit", "2",
         "--batch-size", "4"]
    )
    report = evaluate(args)
    check_report(report, boards=2)
    assert report["split"] == "all"
    assert report["weights"] == str(weights)
    assert report["threshold"] == 0.5  # the card's
    # Every synthetic board carries one defect of each type.
    assert {m["truths"] for m in report["per_class"].values()} == {2}


def test_cli_evaluate_writes_the_report(eval_setup, tmp_path, capsys):
    data, weights = eval_setup
    out = tmp_path / "reports" / "eval.json"
    code = cli_main(
        ["evaluate", "--data", str(data), "--weights", str(weights), "--split", "val",
         "--threshold", "0.9", "--box-margin", "3", "--out", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    check_report(report, boards=1)  # 3 boards, val fraction 0.1: one kept apart
    assert report["split"] == "val"
    assert report["threshold"] == 0.9
    assert report["box_margin_px"] == 3
    assert "F-score" in capsys.readouterr().out
