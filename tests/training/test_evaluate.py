"""Tests for training.evaluate: box IoU, both DeepPCB protocols, outcomes, the operating point,
and the end-to-end report on group-held-out synthetic boards."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from app.inference.defects import Defect
from app.inference.inferencer import Inferencer
from app.inference.pipeline import InferenceResult
from app.inference.registration import AlignmentError
from pcb_inspect.cli import main as cli_main
from tests.conftest import save_tiny_model, save_tiny_pair_model
from training.data import load_sample, read_split
from training.evaluate import (
    IOU_MATCH,
    Detection,
    Truth,
    average_precision,
    box_iou,
    build_parser,
    choose_operating_point,
    detection_outcomes,
    evaluate,
    match_image,
    official_match,
    official_order,
    official_protocol,
    readme_protocol,
)
from training.synth import encode, make_board, write_deeppcb_folder

CLASSES = ("open", "short", "mousebite", "spur", "spurious_copper", "pin_hole")
REPORT_KEYS = {
    "data", "split", "val_groups", "boards", "weights", "weights_sha256", "mode",
    "precision_mode", "gating", "tiles", "threshold", "min_area_px", "min_confidence",
    "merge_distance_px",
    "operating_point_chosen_here", "box_margin_px", "iou_match", "precision", "recall",
    "f_score", "map", "official", "alignment_failures", "mean_dice", "mean_iou",
    "boards_per_second", "per_class",
}
OFFICIAL_KEYS = {"ap", "precision", "recall", "hmean", "matched", "detections", "truths"}
CLASS_KEYS = {"dice", "iou", "precision", "recall", "ap", "truths", "predictions"}
RATES = ("precision", "recall", "f_score", "map", "mean_dice", "mean_iou")
CLASS_RATES = ("dice", "iou", "precision", "recall", "ap")
OUTCOMES = {"matched", "wrong_class", "duplicate", "background", "missed"}


def det(label: int, confidence: float, box, image: int = 0, area: int = 50) -> Detection:
    return Detection(image, label, confidence, area, tuple(float(v) for v in box))


def truth(label: int, box, image: int = 0) -> Truth:
    return Truth(image, label, tuple(float(v) for v in box))


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


# --- official protocol ------------------------------------------------------------------------

# Two truths side by side and two detections: D1 overlaps both truths (IoU 0.54 each), D2 is
# exactly A and misses B (IoU 0.25).
A, B = (0, 0, 10, 10), (6, 0, 16, 10)
D1, D2 = (3, 0, 13, 10), (0, 0, 10, 10)


def test_the_geometry_of_the_hand_examples():
    assert box_iou(A, D1) == pytest.approx(70 / 130)
    assert box_iou(B, D1) == pytest.approx(70 / 130)
    assert box_iou(A, D2) == 1.0
    assert box_iou(B, D2) == pytest.approx(0.25)


def test_official_takes_ground_truths_in_file_order():
    dets = [det(1, 0.9, D1), det(1, 0.8, D2)]
    # A first: A takes D1 (the first free detection over 0.33), and B has nothing left.
    first = official_protocol(dets, [truth(1, A), truth(1, B)], 1, 0.0)
    assert (first["matched"], first["detections"], first["truths"]) == (1, 2, 2)
    assert first["precision"] == pytest.approx(0.5) and first["recall"] == pytest.approx(0.5)
    # B first: B takes D1, and A still gets D2.
    second = official_protocol(dets, [truth(1, B), truth(1, A)], 1, 0.0)
    assert (second["matched"], second["precision"], second["recall"]) == (2, 1.0, 1.0)
    assert second["hmean"] == pytest.approx(1.0) and second["ap"] == pytest.approx(1.0)


def test_official_reads_each_boards_detections_by_confidence():
    truths = [truth(1, A), truth(1, B)]
    # D1 more confident: A takes it, and B is left with D2 (IoU 0.25): one match, in
    # whichever order the detections are listed.
    for dets in ([det(1, 0.5, D2), det(1, 0.9, D1)], [det(1, 0.9, D1), det(1, 0.5, D2)]):
        assert official_protocol(dets, truths, 1, 0.0)["matched"] == 1
    # D2 more confident: A takes D2, which leaves D1 to B.
    report = official_protocol([det(1, 0.9, D2), det(1, 0.5, D1)], truths, 1, 0.0)
    assert report["matched"] == 2
    assert [d.confidence for d in official_order([det(1, 0.5, D2), det(1, 0.9, D1)])] == [
        0.9, 0.5]


def test_official_consumes_a_pair_whatever_the_class_but_counts_it_only_when_it_agrees():
    # A (open) is first in the file. D1, a short, overlaps A and B (a short): A takes it, so
    # the pair is wrong, and B, which D1 would have fitted, is left with nothing.
    truths = [truth(1, A), truth(2, B)]
    report = official_protocol([det(2, 0.9, D1)], truths, 1, 0.0)
    assert (report["matched"], report["detections"], report["truths"]) == (0, 1, 2)
    assert report["precision"] == 0.0 and report["recall"] == 0.0 and report["ap"] == 0.0
    assert official_match(official_order([det(2, 0.9, D1)]), truths) == [(0, 0, False)]
    # With B first in the file, B takes D1 and the classes agree.
    assert official_protocol([det(2, 0.9, D1)], truths[::-1], 1, 0.0)["matched"] == 1
    # Order and class together: the wrong-class D1 ranked first eats A; D2 (an open, exactly
    # A) then misses B. Ranked the other way, A takes D2 and B takes D1: both correct.
    first = official_protocol([det(2, 0.9, D1), det(1, 0.8, D2)], truths, 1, 0.0)
    assert (first["matched"], first["ap"]) == (0, 0.0)
    second = official_protocol([det(2, 0.8, D1), det(1, 0.9, D2)], truths, 1, 0.0)
    assert (second["matched"], second["ap"]) == (2, pytest.approx(1.0))
    # The README protocol matches by class: D1 goes to B and D2 to A either way.
    for dets in ([det(2, 0.9, D1), det(1, 0.8, D2)], [det(2, 0.8, D1), det(1, 0.9, D2)]):
        assert readme_protocol(dets, truths, 1, 6, 0.0)["true_positives"] == 2


def test_official_ap_is_the_pooled_non_interpolated_sum_over_truths():
    # Two images, two truths. Ranked over both images: miss (0.9, image 1), hit (0.8),
    # hit (0.7): AP = (1/2 + 2/3) / 2. An interpolated AP would give 2/3.
    truths = [truth(2, A), truth(5, (40, 40, 50, 50))]
    dets = [
        det(2, 0.8, A),
        det(5, 0.7, (40, 40, 50, 50)),
        det(1, 0.9, (0, 0, 10, 10), image=1),  # image 1 has no truth
    ]
    report = official_protocol(dets, truths, 2, 0.0)
    assert report["ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision([0.9, 0.8, 0.7], [False, True, True], 2) == pytest.approx(2 / 3)
    assert (report["matched"], report["detections"], report["truths"]) == (2, 3, 2)
    assert report["precision"] == pytest.approx(2 / 3) and report["recall"] == 1.0
    # The operating point filters P, R and hmean, not the AP.
    high = official_protocol(dets, truths, 2, 0.75)
    assert high["ap"] == report["ap"]
    assert (high["matched"], high["detections"]) == (1, 2)
    assert high["precision"] == pytest.approx(1 / 2) and high["recall"] == pytest.approx(1 / 2)


def test_official_ap_ranks_every_candidate_and_the_area_rule_only_filters_the_point():
    truths = [truth(1, A)]
    # A speck more confident than the hit: it drags the ranked AP down, and the area rule
    # takes it out of precision and recall only.
    dets = [det(1, 0.9, A, area=60), det(1, 0.95, (50, 50, 52, 52), area=3)]
    report = official_protocol(dets, truths, 1, 0.0, min_area_px=10)
    assert report["ap"] == pytest.approx(1 / 2)
    assert (report["matched"], report["detections"], report["hmean"]) == (1, 1, 1.0)
    readme = readme_protocol(dets, truths, 1, 6, 0.0, min_area_px=10)
    assert readme["map"] == pytest.approx(0.5 / 6)  # class 1: 1/2, the others: no truth
    assert (readme["true_positives"], readme["detections"], readme["f_score"]) == (1, 1, 1.0)


def test_readme_area_rule_frees_the_truth_for_a_less_confident_detection():
    truths = [truth(1, A)]
    # The small D1 is more confident and takes A; with it cut, the larger D2 matches.
    dets = [det(1, 0.9, D1, area=5), det(1, 0.8, D2, area=50)]
    assert readme_protocol(dets, truths, 1, 6, 0.0)["true_positives"] == 1
    cut = readme_protocol(dets, truths, 1, 6, 0.0, min_area_px=10)
    assert (cut["true_positives"], cut["detections"], cut["precision"]) == (1, 1, 1.0)
    assert choose_operating_point(dets, truths, 1, 6)[2] == pytest.approx(1.0)


def test_official_hmean_is_the_harmonic_mean_of_precision_and_recall():
    truths = [truth(1, (k * 20, 0, k * 20 + 10, 10)) for k in range(4)]
    dets = [
        det(1, 0.9, (0, 0, 10, 10)),
        det(1, 0.8, (20, 0, 30, 10)),
        det(1, 0.7, (200, 200, 210, 210)),  # background
    ]
    report = official_protocol(dets, truths, 1, 0.0)
    assert report["precision"] == pytest.approx(2 / 3)
    assert report["recall"] == pytest.approx(1 / 2)
    assert report["hmean"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # 4/7
    assert report["ap"] == pytest.approx((1 + 1) / 4)


def test_official_without_detections_or_truths():
    empty = official_protocol([], [truth(1, A)], 1, 0.0)
    assert (empty["ap"], empty["precision"], empty["recall"], empty["hmean"]) == (0, 0, 0, 0)
    nothing = official_protocol([det(1, 0.9, A)], [], 1, 0.0)
    assert (nothing["ap"], nothing["recall"], nothing["hmean"], nothing["truths"]) == (0, 0, 0, 0)


# --- README protocol --------------------------------------------------------------------------


def readme_example() -> tuple[list[Detection], list[Truth]]:
    """Class 1: a hit (0.9) and a background detection (0.6); class 2: a wrong-class detection
    on class 1's box (0.8) and a hit (0.4)."""
    truths = [truth(1, (0, 0, 10, 10)), truth(2, (20, 20, 30, 30))]
    dets = [
        det(1, 0.9, (0, 0, 10, 10)),
        det(1, 0.6, (50, 50, 60, 60)),
        det(2, 0.8, (0, 0, 10, 10)),
        det(2, 0.4, (20, 20, 30, 30)),
    ]
    return dets, truths


def test_readme_per_class_ap_and_f_at_a_min_confidence():
    dets, truths = readme_example()
    report = readme_protocol(dets, truths, 1, 2, 0.5)
    one, two = report["per_class"][1], report["per_class"][2]
    assert one["ap"] == pytest.approx(1.0)  # hit, then miss
    assert two["ap"] == pytest.approx(0.5)  # miss, then hit: recall 1 at precision 1/2
    assert report["map"] == pytest.approx(0.75)
    # At 0.5 the class-2 hit (0.4) is dropped; the AP does not depend on the cut.
    assert (one["predictions"], one["precision"], one["recall"]) == (2, 0.5, 1.0)
    assert (two["predictions"], two["precision"], two["recall"]) == (1, 0.0, 0.0)
    assert (report["true_positives"], report["detections"], report["truths"]) == (1, 3, 2)
    assert report["precision"] == pytest.approx(1 / 3)
    assert report["recall"] == pytest.approx(1 / 2)
    assert report["f_score"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4
    everything = readme_protocol(dets, truths, 1, 2, 0.0)
    assert (everything["precision"], everything["recall"]) == (0.5, 1.0)
    assert everything["f_score"] == pytest.approx(2 / 3)
    assert everything["map"] == report["map"]


def test_readme_map_averages_over_every_class():
    dets, truths = readme_example()
    # Classes 3..6 have no truth: their AP counts as 0.
    assert readme_protocol(dets, truths, 1, 6, 0.0)["map"] == pytest.approx(1.5 / 6)


def test_readme_matches_within_each_image_only():
    truths = [truth(1, A, image=0)]
    report = readme_protocol([det(1, 0.9, A, image=1)], truths, 2, 1, 0.0)
    assert report["true_positives"] == 0 and report["recall"] == 0.0


# --- detection_outcomes -----------------------------------------------------------------------


def test_detection_outcomes_one_of_each():
    truths = [truth(1, (0, 0, 10, 10)), truth(2, (50, 50, 60, 60)), truth(4, (0, 0, 8, 8), 1)]
    dets = [
        det(1, 0.6, (100, 100, 110, 110)),  # background
        det(1, 0.9, (0, 0, 10, 10)),  # matched
        det(3, 0.7, (1, 0, 10, 10)),  # wrong_class: on the class-1 truth
        det(1, 0.8, (0, 1, 10, 10)),  # duplicate: the class-1 truth is already taken
    ]
    rows = detection_outcomes(dets, truths, 2)
    detections = [r for r in rows if r["kind"] == "detection"]
    assert [(r["confidence"], r["outcome"]) for r in detections] == [
        (0.9, "matched"), (0.8, "duplicate"), (0.7, "wrong_class"), (0.6, "background"),
    ]  # most confident first
    assert [r["class"] for r in detections] == [1, 1, 3, 1]
    assert detections[0]["box"] == [0.0, 0.0, 10.0, 10.0]
    assert detections[0]["area_px"] == 50 and detections[0]["image"] == 0
    missed = [r for r in rows if r["kind"] == "truth"]
    assert [(r["image"], r["class"], r["outcome"], r["box"]) for r in missed] == [
        (0, 2, "missed", [50.0, 50.0, 60.0, 60.0]),
        (1, 4, "missed", [0.0, 0.0, 8.0, 8.0]),
    ]
    assert {r["outcome"] for r in rows} == OUTCOMES
    json.dumps(rows)  # the dump writes them as JSON


def test_detection_outcomes_agree_with_the_readme_protocol():
    rng = random.Random(0)
    for trial in range(20):
        n_images = 3

        def box():
            x, y = rng.randrange(0, 40), rng.randrange(0, 40)
            return (x, y, x + rng.randrange(4, 12), y + rng.randrange(4, 12))

        truths = [truth(rng.randint(1, 3), box(), rng.randrange(n_images)) for _ in range(8)]
        dets = [det(rng.randint(1, 3), rng.random(), box(), rng.randrange(n_images))
                for _ in range(12)]
        rows = detection_outcomes(dets, truths, n_images)
        report = readme_protocol(dets, truths, n_images, 3, 0.0)
        outcomes = [r["outcome"] for r in rows]
        assert outcomes.count("matched") == report["true_positives"], trial
        assert outcomes.count("matched") + outcomes.count("missed") == len(truths), trial
        assert sum(r["kind"] == "detection" for r in rows) == len(dets), trial


# --- choose_operating_point -------------------------------------------------------------------


def test_choose_operating_point_raises_the_confidence_past_the_false_positives():
    truths = [truth(1, (0, 0, 10, 10)), truth(2, (20, 0, 30, 10))]
    dets = [
        det(1, 0.9, (0, 0, 10, 10)),
        det(2, 0.8, (20, 0, 30, 10)),
        det(1, 0.3, (50, 50, 60, 60)),  # two confident-ish false positives, below every hit
        det(2, 0.2, (70, 70, 80, 80)),
    ]
    assert readme_protocol(dets, truths, 1, 6, 0.0)["f_score"] == pytest.approx(2 / 3)
    area, min_confidence, f = choose_operating_point(dets, truths, 1, 6)
    assert f == pytest.approx(1.0)
    assert 0.3 < min_confidence <= 0.8
    assert area <= 50  # every detection has 50 px: no area cut removes a hit
    assert readme_protocol(dets, truths, 1, 6, min_confidence)["f_score"] == pytest.approx(1.0)


def test_choose_operating_point_cuts_small_false_positives_by_area():
    truths = [truth(1, (0, 0, 10, 10))]
    dets = [det(1, 0.9, (0, 0, 10, 10), area=60), det(1, 0.95, (50, 50, 52, 52), area=3)]
    area, min_confidence, f = choose_operating_point(dets, truths, 1, 6)
    assert f == pytest.approx(1.0)
    assert 3 < area <= 60  # the speck is more confident than the hit: only its area tells


def test_choose_operating_point_without_detections():
    area, min_confidence, f = choose_operating_point([], [truth(1, A)], 1, 6)
    assert f == 0.0 and area >= 0 and 0.0 <= min_confidence < 1.0


# --- end to end -------------------------------------------------------------------------------

VAL_GROUP = "00002"


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory) -> tuple[Path, Path]:
    """Two synthetic board groups (two 160 px boards of 00001, one of 00002) and a tiny model
    with a 64 px tile."""
    base = tmp_path_factory.mktemp("evaluate")
    data = write_deeppcb_folder(base / "data", n_pairs=2, seed=0, size=160)
    write_deeppcb_folder(data, n_pairs=1, seed=10, size=160, group=VAL_GROUP)
    weights = save_tiny_model(base / "model", tile_size=64)
    return data, weights


def parse(data: Path, weights: Path, *extra: str):
    return build_parser().parse_args(
        ["--data", str(data), "--weights", str(weights), "--batch-size", "4", *extra]
    )


def check_report(report: dict, boards: int, mode: str = "single") -> None:
    assert set(report) == REPORT_KEYS
    assert report["boards"] == boards
    assert report["iou_match"] == IOU_MATCH
    assert report["mode"] == mode
    for key in RATES:
        assert 0.0 <= report[key] <= 1.0, key
    assert report["boards_per_second"] > 0
    assert len(report["weights_sha256"]) == 64
    official = report["official"]
    assert set(official) == OFFICIAL_KEYS
    for key in ("ap", "precision", "recall", "hmean"):
        assert 0.0 <= official[key] <= 1.0, key
    assert official["truths"] == sum(m["truths"] for m in report["per_class"].values())
    assert official["detections"] == sum(m["predictions"] for m in report["per_class"].values())
    assert list(report["per_class"]) == list(CLASSES)
    for name, metrics in report["per_class"].items():
        assert set(metrics) == CLASS_KEYS, name
        for key in CLASS_RATES:
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["predictions"] >= 0
    json.dumps(report)  # --out writes it


def test_evaluate_holds_out_the_validation_group(eval_setup):
    data, weights = eval_setup
    report = evaluate(parse(data, weights, "--split", "val", "--val-groups", VAL_GROUP))
    check_report(report, boards=1)
    assert report["split"] == "val"
    assert report["val_groups"] == [VAL_GROUP]
    assert report["weights"] == str(weights)
    assert report["threshold"] == 0.5  # the card's
    assert report["min_area_px"] == 0 and report["min_confidence"] == 0.0  # the card's
    assert report["merge_distance_px"] == 3  # the card's default
    assert report["operating_point_chosen_here"] is None
    assert report["alignment_failures"] == []
    # The one board of the validation group carries one defect of each type.
    assert {m["truths"] for m in report["per_class"].values()} == {1}


def test_evaluate_all_pairs_with_a_limit(eval_setup):
    data, weights = eval_setup
    report = evaluate(parse(data, weights, "--split", "all", "--limit", "2",
                            "--min-confidence", "0.25", "--min-area-px", "4"))
    check_report(report, boards=2)
    assert report["split"] == "all" and report["val_groups"] is None
    assert (report["min_area_px"], report["min_confidence"]) == (4, 0.25)
    assert {m["truths"] for m in report["per_class"].values()} == {2}


def test_evaluate_val_split_needs_a_validation_group(eval_setup):
    data, weights = eval_setup
    # The synthetic folder has none of training.data.VAL_GROUPS.
    with pytest.raises(ValueError, match="no sample belongs to the validation groups"):
        evaluate(parse(data, weights, "--split", "val"))


def test_evaluate_reports_the_operating_point_it_chose(eval_setup):
    data, weights = eval_setup
    report = evaluate(parse(data, weights, "--split", "all", "--threshold", "0.0",
                            "--choose-operating-point"))
    check_report(report, boards=3)
    chosen = report["operating_point_chosen_here"]
    assert chosen == {"min_area_px": report["min_area_px"],
                      "min_confidence": report["min_confidence"]}
    assert type(chosen["min_confidence"]) is float


@pytest.fixture
def oracle(eval_setup, monkeypatch) -> None:
    """Makes the Inferencer return each board's ground truth: a defect per annotated box."""
    data, _ = eval_setup
    answers = {}
    for sample in read_split(data):
        image, mask, boxes = load_sample(sample)
        answers[hashlib.sha256(image.tobytes()).hexdigest()] = (mask, boxes)

    def predict(self, pixels, config, golden=None):
        mask, boxes = answers[hashlib.sha256(pixels.tobytes()).hexdigest()]
        defects = []
        for k, b in enumerate(boxes, start=1):
            area = int(np.count_nonzero(mask[b.y1 : b.y2, b.x1 : b.x2] == b.label))
            defects.append(Defect(id=k, class_=b.class_name, confidence=0.9,
                                  bbox=(b.x1, b.y1, b.x2, b.y2), area_px=area, area_mm2=0.0,
                                  centroid=((b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2)))
        h, w = pixels.shape
        return InferenceResult(w, h, defects, None, mask.copy(), 1, {})

    monkeypatch.setattr(Inferencer, "predict", predict)


def test_evaluate_scores_a_perfect_prediction_perfectly(eval_setup, oracle, tmp_path):
    data, weights = eval_setup
    dump = tmp_path / "outcomes.jsonl"
    report = evaluate(parse(data, weights, "--split", "val", "--val-groups", f"{VAL_GROUP},00001",
                            "--box-margin", "0", "--dump", str(dump)))
    check_report(report, boards=3)
    assert report["val_groups"] == [VAL_GROUP, "00001"]
    for key in ("precision", "recall", "f_score", "map", "mean_dice", "mean_iou"):
        assert report[key] == pytest.approx(1.0), key
    official = report["official"]
    assert (official["matched"], official["detections"], official["truths"]) == (18, 18, 18)
    assert official["ap"] == pytest.approx(1.0) and official["hmean"] == pytest.approx(1.0)
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 18
    assert {r["outcome"] for r in rows} == {"matched"}
    assert sorted({r["key"] for r in rows}) == ["00001000", "00001001", "00002000"]
    assert sorted(r["class"] for r in rows if r["key"] == "00002000") == sorted(CLASSES)


def test_evaluate_with_the_class_confused_is_wrong_class(eval_setup, oracle, tmp_path,
                                                          monkeypatch):
    data, weights = eval_setup
    perfect = Inferencer.predict

    def shuffled(self, pixels, config, golden=None):
        result = perfect(self, pixels, config, golden)
        turned = [d.model_copy(update={"class_": CLASSES[(CLASSES.index(d.class_) + 1)
                                                         % len(CLASSES)]})
                  for d in result.defects]
        return dataclasses.replace(result, defects=turned)

    monkeypatch.setattr(Inferencer, "predict", shuffled)
    dump = tmp_path / "outcomes.jsonl"
    report = evaluate(parse(data, weights, "--split", "val", "--val-groups", VAL_GROUP,
                            "--box-margin", "0", "--dump", str(dump)))
    assert report["f_score"] == 0.0 and report["map"] == 0.0
    # The official protocol pairs each defect with its box all the same, and counts none.
    assert report["official"]["hmean"] == 0.0 and report["official"]["matched"] == 0
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    outcomes = [r["outcome"] for r in rows]
    assert outcomes.count("wrong_class") == 6 and outcomes.count("missed") == 6


def test_a_board_that_does_not_align_counts_as_all_missed(eval_setup, oracle, monkeypatch):
    data, weights = eval_setup
    perfect = Inferencer.predict
    refused = read_split(data)[0]
    refused_image, _, _ = load_sample(refused)

    def refusing(self, pixels, config, golden=None):
        if np.array_equal(pixels, refused_image):
            raise AlignmentError("not the same design", 0.123456)
        return perfect(self, pixels, config, golden)

    monkeypatch.setattr(Inferencer, "predict", refusing)
    report = evaluate(parse(data, weights, "--split", "all", "--box-margin", "0"))
    check_report(report, boards=3)
    assert report["alignment_failures"] == [{"key": refused.key, "score": 0.1235}]
    # Its six defects are missed; the two other boards are found whole.
    assert report["official"]["truths"] == 18 and report["official"]["matched"] == 12
    assert report["precision"] == pytest.approx(1.0)
    assert report["recall"] == pytest.approx(12 / 18)
    assert {m["truths"] for m in report["per_class"].values()} == {3}
    assert all(m["dice"] < 1.0 for m in report["per_class"].values())


@pytest.fixture(scope="module")
def pair_weights(tmp_path_factory) -> Path:
    return save_tiny_pair_model(tmp_path_factory.mktemp("evaluate_pair"), tile_size=64)


def test_evaluate_a_pair_model(eval_setup, pair_weights, tmp_path):
    data, _ = eval_setup
    report = evaluate(parse(data, pair_weights, "--split", "val", "--val-groups", VAL_GROUP))
    check_report(report, boards=1, mode="pair")
    assert report["alignment_failures"] == []

    # A template of another design: the service refuses the pair, and so does the report.
    other = write_deeppcb_folder(tmp_path / "other", n_pairs=1, seed=0, size=160)
    (sample,) = read_split(other)
    sample.template_path.write_bytes(encode(make_board(seed=99, size=160).template, "JPEG",
                                            quality=95))
    report = evaluate(parse(other, pair_weights, "--split", "all"))
    check_report(report, boards=1, mode="pair")
    assert [f["key"] for f in report["alignment_failures"]] == [sample.key]
    assert report["recall"] == 0.0 and report["official"]["detections"] == 0


def test_cli_evaluate_writes_the_report_and_the_dump(eval_setup, tmp_path, capsys):
    data, weights = eval_setup
    out = tmp_path / "reports" / "eval.json"
    dump = tmp_path / "dumps" / "outcomes.jsonl"
    code = cli_main(
        ["evaluate", "--data", str(data), "--weights", str(weights), "--split", "val",
         "--val-groups", VAL_GROUP, "--threshold", "0.0", "--min-confidence", "0",
         "--box-margin", "3", "--out", str(out), "--dump", str(dump)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    check_report(report, boards=1)
    assert report["split"] == "val" and report["val_groups"] == [VAL_GROUP]
    assert report["threshold"] == 0.0
    assert report["box_margin_px"] == 3
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert rows and {r["key"] for r in rows} == {"00002000"}
    assert {r["outcome"] for r in rows} <= OUTCOMES
    assert all(r["class"] in CLASSES for r in rows)
    detections = [r for r in rows if r["kind"] == "detection"]
    assert len(detections) == report["official"]["detections"] >= 1  # threshold 0 finds some
    for r in detections:
        assert r["outcome"] != "missed" and 0.0 <= r["confidence"] <= 1.0 and r["area_px"] > 0
        assert len(r["box"]) == 4
    truths = [r for r in rows if r["kind"] == "truth"]
    assert {r["outcome"] for r in truths} <= {"missed"}
    matched = sum(r["outcome"] == "matched" for r in detections)
    assert matched + len(truths) == report["official"]["truths"] == 6
    printed = capsys.readouterr().out
    assert "F-score" in printed and "hmean" in printed
