"""Tests for training.crossval (operating points chosen on other board groups) and
training.maps (the per-board maps it scores from)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from app.inference.inferencer import Inferencer
from tests.conftest import save_tiny_pair_model
from training.crossval import Variant, board_candidates, build_parser, crossvalidate
from training.crossval import leave_one_group_out as logo
from training.crossval import nested_leave_one_group_out as nested_logo
from training.data import read_split
from training.evaluate import Detection, Truth, choose_operating_point, readme_protocol
from training.maps import board_maps, cache_path, cached_board_maps, load_board_maps
from training.synth import encode, make_board, write_deeppcb_folder

CLASSES = ("open", "short", "mousebite", "spur", "spurious_copper", "pin_hole")


def det(image: int, confidence: float, box, label: int = 1, area: int = 50) -> Detection:
    return Detection(image, label, confidence, area, tuple(float(v) for v in box))


def truth(image: int, box, label: int = 1) -> Truth:
    return Truth(image, label, tuple(float(v) for v in box))


HIT = (0, 0, 10, 10)
ELSEWHERE = (50, 50, 60, 60)


# --- leave one group out ----------------------------------------------------------------------


def test_each_group_is_scored_at_the_point_chosen_on_the_others():
    # Boards 0-1: group "a", 2: "b", 3: "c". Every board has one truth and its hit (0.9).
    # Group a carries a confident false positive (0.8), b a timid one (0.3), c none. Chosen on
    # b + c the cut lands between 0.3 and 0.8; chosen on a + b or a + c, above 0.8.
    groups = ["a", "a", "b", "c"]
    truths = [truth(i, HIT) for i in range(4)]
    cands = [det(i, 0.9, HIT) for i in range(4)]
    cands += [det(0, 0.8, ELSEWHERE), det(2, 0.3, ELSEWHERE)]

    report = logo(cands, truths, groups, 6)

    per = report["per_group"]
    assert list(per) == ["a", "b", "c"]
    for held in per:
        inside = {i for i, g in enumerate(groups) if g == held}
        area, conf, f = choose_operating_point(
            [d for d in cands if d.image not in inside],
            [t for t in truths if t.image not in inside], 4, 6)
        assert (per[held]["min_area_px"], per[held]["min_confidence"]) == (area, conf)
        assert per[held]["f_score_where_chosen"] == f
        expected = readme_protocol([d for d in cands if d.image in inside],
                                   [t for t in truths if t.image in inside], 4, 6, conf, area)
        assert per[held]["f_score"] == expected["f_score"]
    assert 0.3 < per["a"]["min_confidence"] <= 0.8  # chosen on b + c: a's 0.8 gets through
    assert (per["a"]["detections"], per["a"]["true_positives"]) == (3, 2)
    for held in ("b", "c"):
        assert per[held]["min_confidence"] > 0.8  # chosen with a's boards
        assert (per[held]["detections"], per[held]["true_positives"]) == (1, 1)
    # Pooled: the counts of the three held-out scorings.
    assert (report["true_positives"], report["detections"], report["truths"]) == (4, 5, 4)
    assert report["precision"] == pytest.approx(4 / 5) and report["recall"] == 1.0
    assert report["f_score"] == pytest.approx(8 / 9)
    assert report["official"]["hmean"] == pytest.approx(8 / 9)
    # Chosen on all four boards the cut passes every hit and no false positive: F 1, which
    # is what choosing and reporting on the same boards would claim.
    assert choose_operating_point(cands, truths, 4, 6)[2] == pytest.approx(1.0)


def test_variant_parsing():
    assert Variant.parse("0.5:6") == Variant(0.5, 6, False)
    assert Variant.parse("0.4:3:diff") == Variant(0.4, 3, True)
    assert Variant.parse("0.5:6:diff").name == "t0.5-m6-diff"
    for bad in ("0.5", "0.5:3:x", "a:b"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            Variant.parse(bad)


# --- end to end, on synthetic groups and the tiny pair model ----------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("crossval")
    data = write_deeppcb_folder(base / "data", n_pairs=1, seed=0, size=160, group="00001")
    write_deeppcb_folder(data, n_pairs=1, seed=10, size=160, group="00002")
    write_deeppcb_folder(data, n_pairs=1, seed=20, size=160, group="00003")
    weights = save_tiny_pair_model(base / "model", tile_size=64)
    return data, weights


def test_maps_are_cached_once_and_read_back_whole(setup, tmp_path):
    data, weights = setup
    inferencer = Inferencer.load(weights)
    sample = read_split(data)[0]
    fresh = board_maps(inferencer, sample)
    assert fresh.fg_q is not None and fresh.fg_q.dtype == np.uint16
    assert fresh.warped is not None and fresh.warped.shape == fresh.fg_q.shape

    cached = cached_board_maps(inferencer, sample, tmp_path)
    path = cache_path(tmp_path, inferencer.weights_sha256, sample.key)
    assert path.is_file() and not list(path.parent.glob("*.tmp.npz"))
    again = load_board_maps(path)
    for name in ("fg_q", "cls", "cls_p", "warped"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fresh, name))
        np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name))
    # The cache is what is read next time, not the model: a changed file shows through.
    np.savez_compressed(path, fg_q=np.zeros_like(fresh.fg_q), cls=fresh.cls,
                        cls_p=fresh.cls_p, warped=fresh.warped)
    assert not cached_board_maps(inferencer, sample, tmp_path).fg_q.any()

    # Post-processing the maps gives what the service returns for that board.
    import cv2

    board = cv2.imread(str(sample.test_path), cv2.IMREAD_GRAYSCALE)
    reference = cv2.imread(str(sample.template_path), cv2.IMREAD_GRAYSCALE)
    from app.inference.defects import PostprocessConfig

    config = PostprocessConfig(threshold=0.5, min_area_px=0, pixels_per_mm=48.0)
    served = inferencer.predict(board, config, golden=reference)
    mine = board_candidates(fresh, board, Variant(0.5, 3), CLASSES, 48.0, 0, 0)
    assert [(CLASSES[d.label - 1], d.confidence, d.area_px, d.box) for d in mine] == [
        (d.class_, d.confidence, d.area_px, tuple(float(v) for v in d.bbox))
        for d in served.defects]


def test_a_refused_pair_is_cached_as_refused(setup, tmp_path):
    _, weights = setup
    other = write_deeppcb_folder(tmp_path / "other", n_pairs=1, seed=0, size=160)
    (sample,) = read_split(other)
    sample.template_path.write_bytes(encode(make_board(seed=99, size=160).template, "JPEG",
                                            quality=95))
    inferencer = Inferencer.load(weights)
    maps = cached_board_maps(inferencer, sample, tmp_path / "cache")
    assert maps.fg_q is None and maps.alignment_score is not None
    again = cached_board_maps(inferencer, sample, tmp_path / "cache")
    assert again.fg_q is None and again.alignment_score == pytest.approx(maps.alignment_score)
    assert board_candidates(again, None, Variant(0.5, 3), CLASSES, 48.0, 10, 0) == []


def test_crossvalidate_reports_every_variant_per_held_out_group(setup, tmp_path):
    data, weights = setup
    out = tmp_path / "cv.json"
    args = build_parser().parse_args([
        "--data", str(data), "--weights", str(weights), "--val-groups", "00001,00002,00003",
        "--cache", str(tmp_path / "maps"), "--variants", "0.0:3", "0.0:6:diff",
        "--out", str(out)])
    report = crossvalidate(args)
    assert report["boards"] == 3 and report["mode"] == "pair"
    assert list(report["variants"]) == ["t0-m3", "t0-m6-diff"]
    for v in report["variants"].values():
        cv = v["crossvalidated"]
        assert list(cv["per_group"]) == ["00001", "00002", "00003"]
        assert cv["truths"] == 18  # six defects a synthetic board
        assert cv["true_positives"] == sum(g["true_positives"] for g in cv["per_group"].values())
        for key in ("f_score", "precision", "recall"):
            assert 0.0 <= cv[key] <= 1.0
        assert 0.0 <= v["map"] <= 1.0 and 0.0 <= v["official_ap"] <= 1.0
        assert v["candidates"] >= 1  # threshold 0: the untrained model finds something
    assert len(list((tmp_path / "maps").rglob("*.npz"))) == 3
    # From the cache, the same report.
    again = crossvalidate(args)
    assert again["variants"] == report["variants"]
    from training.crossval import main

    assert main(["--data", str(data), "--weights", str(weights), "--val-groups",
                 "00001,00002,00003", "--cache", str(tmp_path / "maps"), "--variants",
                 "0.0:3", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["variants"]["t0-m3"] == report["variants"]["t0-m3"]


def test_the_variant_too_is_chosen_on_the_other_groups():
    groups = ["a", "a", "b", "c"]
    truths = [truth(i, HIT) for i in range(4)]
    good = [det(i, 0.9, HIT) for i in range(4)] + [det(0, 0.8, ELSEWHERE)]
    # "split" finds each defect in two pieces, neither large enough to match, except on c.
    split = [det(i, 0.9, (0, 0, 3, 10)) for i in range(3)] + [det(3, 0.95, HIT)]
    split += [det(i, 0.9, (7, 0, 10, 10)) for i in range(3)]

    nested = nested_logo({"good": good, "split": split}, truths, groups, 6)

    # Held out c, "good" wins on a + b; held out a or b, "good" still wins on the others.
    assert {g: s["variant"] for g, s in nested["per_group"].items()} == dict.fromkeys("abc",
                                                                                     "good")
    plain = logo(good, truths, groups, 6)
    assert nested["f_score"] == plain["f_score"]
    assert nested["true_positives"] == plain["true_positives"] == 4
    # Each group is scored with what was chosen without it: c, where "split" is perfect,
    # gets "good" all the same.
    alone = nested_logo({"split": split}, truths, groups, 6)
    assert alone["per_group"]["c"]["f_score"] == 1.0 and alone["true_positives"] == 1


def test_write_card_puts_the_crossvalidated_figures_in_the_card(setup, tmp_path):
    import shutil

    from app.inference.card import load_card

    data, weights = setup
    model = tmp_path / "model"
    shutil.copytree(weights.parent, model)
    out = tmp_path / "cv.json"
    args = ["--data", str(data), "--weights", str(model / weights.name), "--val-groups",
            "00001,00002,00003", "--cache", str(tmp_path / "maps"), "--out", str(out)]
    from training.crossval import main

    assert main([*args, "--write-card"]) == 0
    report = json.loads(out.read_text())
    (name,) = report["variants"]
    assert name == "t0.5-m3"  # the card's own rules
    card = json.loads((model / "pair.card.json").read_text())
    validation = card["validation"]
    cv = report["variants"][name]["crossvalidated"]
    assert validation["readme_protocol"]["f_score"] == round(cv["f_score"], 4)
    assert validation["official_protocol"]["hmean"] == round(cv["official"]["hmean"], 4)
    assert list(validation["per_group"]) == ["00001", "00002", "00003"]
    assert "--write-card" not in validation["protocol"] and "--cache" in validation["protocol"]
    assert load_card(model / "pair.card.json").thresholds.min_area_px == 0  # the rest kept


def test_an_evaluations_candidates_give_the_same_crossvalidation(setup, tmp_path):
    from training import evaluate
    from training.crossval import from_evaluation

    data, weights = setup
    groups = "00001,00002,00003"
    candidates = tmp_path / "candidates.json"
    evaluate.evaluate(evaluate.build_parser().parse_args([
        "--data", str(data), "--weights", str(weights), "--val-groups", groups,
        "--threshold", "0.0", "--candidates", str(candidates)]))
    from_candidates = from_evaluation(candidates, 0.0, 3, 0)
    report = crossvalidate(build_parser().parse_args([
        "--data", str(data), "--weights", str(weights), "--val-groups", groups,
        "--cache", str(tmp_path / "maps"), "--variants", "0.0:3"]))
    assert from_candidates["variants"] == report["variants"]
    assert from_candidates["val_groups"] == ["00001", "00002", "00003"]
