"""Operating points that predict unseen designs: leave one board group out (``python -m
training.crossval``).

The validation boards are whole board groups (designs, ``training.data.VAL_GROUPS``). Choosing
the operating point (``min_area_px``, ``min_confidence``) on the boards it is then reported on
flatters it, and the official test split is mostly made of designs that the training split
lacks. So: for each validation group in turn, the operating point is chosen on the other groups
(best README-protocol F) and scored on this one; the cross-validated figures pool the counts of
the three held-out scorings (the per-group table gives each). The ranking metrics (README mAP,
official AP) do not depend on the operating point: they come from the ranked list of every
candidate above the pixel threshold, before ``min_area_px`` and ``min_confidence``.

The model runs once per board (:mod:`training.maps` caches its maps, ``--cache``), so each
post-processing variant (pixel threshold, merge distance, merging on the registered difference)
is a cheap pass over the cached maps; ``--variants`` scores several side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.evaluate import (
    Detection,
    Truth,
    choose_operating_point,
    official_protocol,
    readme_protocol,
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One post-processing rule set: the pixel threshold and how fragments are merged."""

    threshold: float
    merge_distance_px: int
    #: Merge fragments that touch one component of the registered difference (pair model).
    link: bool = False

    @property
    def name(self) -> str:
        return (f"t{self.threshold:g}-m{self.merge_distance_px}"
                + ("-diff" if self.link else ""))

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``THRESHOLD:MERGE[:diff]``, e.g. ``0.5:3`` or ``0.5:8:diff``."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "diff"):
            raise argparse.ArgumentTypeError(
                f"expected THRESHOLD:MERGE[:diff], e.g. 0.5:3 or 0.5:3:diff. Received: {text!r}")
        return cls(float(parts[0]), int(parts[1]), len(parts) == 3)


def board_candidates(
    maps: Any, board: np.ndarray | None, variant: Variant, classes: Sequence[str],
    pixels_per_mm: float, margin: int, image: int,
) -> list[Detection]:
    """Every defect above the pixel threshold of one board (no area or confidence rule), through
    the service's post-processing, with its box grown by the annotation margin."""
    from app.inference.defects import PostprocessConfig
    from app.inference.postprocess import (
        describe_defects,
        gather_defect_pixels,
        registered_difference,
    )

    if maps.fg_q is None:  # registration refused the pair: the service reports nothing
        return []
    config = PostprocessConfig(threshold=variant.threshold, min_area_px=0,
                               pixels_per_mm=pixels_per_mm,
                               merge_distance_px=variant.merge_distance_px)
    link = None
    if variant.link:
        if maps.warped is None or board is None:
            raise ValueError("merging on the registered difference needs the pair model's maps")
        link = registered_difference(board, maps.warped)
    pixels = gather_defect_pixels(maps.fg_q, maps.cls, maps.cls_p, variant.threshold)
    result = describe_defects(pixels, classes, config, link=link)
    h, w = maps.fg_q.shape
    return [
        Detection(image, list(classes).index(d.class_) + 1, float(d.confidence),
                  int(d.area_px),
                  (max(0, d.bbox[0] - margin), max(0, d.bbox[1] - margin),
                   min(w, d.bbox[2] + margin), min(h, d.bbox[3] + margin)))
        for d in result.defects
    ]


def _scores(cands: list[Detection], truths: list[Truth], n: int, n_classes: int, area: int,
            conf: float) -> dict[str, Any]:
    readme = readme_protocol(cands, truths, n, n_classes, conf, area)
    official = official_protocol(cands, truths, n, conf, area)
    return {
        "min_area_px": area, "min_confidence": conf,
        "f_score": readme["f_score"], "precision": readme["precision"],
        "recall": readme["recall"], "map": readme["map"],
        "true_positives": readme["true_positives"], "detections": readme["detections"],
        "truths": readme["truths"],
        "official": official,
    }


def _f(tp: int, n_det: int, n_truth: int) -> tuple[float, float, float]:
    p = tp / n_det if n_det else 0.0
    r = tp / n_truth if n_truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def leave_one_group_out(
    cands: list[Detection], truths: list[Truth], groups: list[str], n_classes: int
) -> dict[str, Any]:
    """For each group: the operating point chosen on the others, scored on it; then pooled.

    Args:
        cands: Every candidate of every board (``image`` indexes ``groups``).
        truths: Every annotated defect.
        groups: The board group of each board.
        n_classes: Defect classes.
    """
    n = len(groups)
    per_group: dict[str, Any] = {}
    for held in sorted(set(groups)):
        inside = {i for i, g in enumerate(groups) if g == held}
        fit_c = [d for d in cands if d.image not in inside]
        fit_t = [t for t in truths if t.image not in inside]
        area, conf, f_fit = choose_operating_point(fit_c, fit_t, n, n_classes)
        test_c = [d for d in cands if d.image in inside]
        test_t = [t for t in truths if t.image in inside]
        scores = _scores(test_c, test_t, n, n_classes, area, conf)
        scores["boards"] = len(inside)
        scores["f_score_where_chosen"] = f_fit
        per_group[held] = scores
    tp = sum(s["true_positives"] for s in per_group.values())
    n_det = sum(s["detections"] for s in per_group.values())
    n_truth = sum(s["truths"] for s in per_group.values())
    precision, recall, f = _f(tp, n_det, n_truth)
    o_tp = sum(s["official"]["matched"] for s in per_group.values())
    o_det = sum(s["official"]["detections"] for s in per_group.values())
    o_p, o_r, o_h = _f(o_tp, o_det, n_truth)
    return {
        "f_score": f, "precision": precision, "recall": recall,
        "true_positives": tp, "detections": n_det, "truths": n_truth,
        "official": {"hmean": o_h, "precision": o_p, "recall": o_r, "matched": o_tp,
                     "detections": o_det},
        "per_group": per_group,
    }


def nested_leave_one_group_out(
    cands: dict[str, list[Detection]], truths: list[Truth], groups: list[str], n_classes: int
) -> dict[str, Any]:
    """:func:`leave_one_group_out` where the variant, too, is chosen on the other groups.

    Picking the variant whose cross-validated F is best looks at every group once more; here
    each held-out group is scored with the variant and operating point that were best on the
    others (of tied variants, the first listed), so no choice has seen the boards it is scored
    on.
    """
    n = len(groups)
    per_group: dict[str, Any] = {}
    for held in sorted(set(groups)):
        inside = {i for i, g in enumerate(groups) if g == held}
        fit_t = [t for t in truths if t.image not in inside]
        best: tuple[float, str, int, float] = (-1.0, "", 0, 0.0)
        for name, c in cands.items():
            area, conf, f = choose_operating_point([d for d in c if d.image not in inside],
                                                   fit_t, n, n_classes)
            if f > best[0] + 1e-9:
                best = (f, name, area, conf)
        f_fit, name, area, conf = best
        scores = _scores([d for d in cands[name] if d.image in inside],
                         [t for t in truths if t.image in inside], n, n_classes, area, conf)
        scores.update(variant=name, boards=len(inside), f_score_where_chosen=f_fit)
        per_group[held] = scores
    tp = sum(s["true_positives"] for s in per_group.values())
    n_det = sum(s["detections"] for s in per_group.values())
    n_truth = sum(s["truths"] for s in per_group.values())
    precision, recall, f = _f(tp, n_det, n_truth)
    return {"f_score": f, "precision": precision, "recall": recall, "true_positives": tp,
            "detections": n_det, "truths": n_truth, "per_group": per_group}


def crossvalidate(args: argparse.Namespace) -> dict[str, Any]:
    """Scores every variant on the cached maps of the validation boards; returns the report."""
    from app.inference.inferencer import Inferencer
    from training.data import (
        VAL_GROUPS,
        group_of,
        parse_annotations,
        read_split,
        split_by_groups,
    )
    from training.maps import cached_board_maps

    inferencer = Inferencer.load(args.weights, args.card)
    card = inferencer.card
    classes = list(card.classes)
    n_classes = len(classes)
    margin = int(getattr(card, "annotation_box_margin_px", 0) or 0)
    val_groups = [g for g in args.val_groups.split(",") if g] or list(VAL_GROUPS)
    _, samples = split_by_groups(read_split(args.data), val_groups)
    if args.limit:
        samples = samples[: args.limit]
    variants: list[Variant] = args.variants or [
        Variant(card.thresholds.confidence, card.thresholds.merge_distance_px)
    ]
    cands: dict[Variant, list[Detection]] = {v: [] for v in variants}
    truths: list[Truth] = []
    groups: list[str] = []
    started = time.perf_counter()
    for i, sample in enumerate(samples):
        groups.append(group_of(sample.key))
        truths.extend(Truth(i, b.label, (b.x1, b.y1, b.x2, b.y2))
                      for b in parse_annotations(sample.annotation_path))
        maps = cached_board_maps(inferencer, sample, args.cache)
        board = None
        if any(v.link for v in variants):
            board = cv2.imread(str(sample.test_path), cv2.IMREAD_GRAYSCALE)
        for v in variants:
            cands[v].extend(board_candidates(maps, board, v, classes, card.pixels_per_mm,
                                             margin, i))
    report: dict[str, Any] = {
        "data": str(args.data), "weights": str(args.weights),
        "weights_sha256": inferencer.weights_sha256, "mode": inferencer.mode,
        "val_groups": val_groups, "boards": len(samples), "box_margin_px": margin,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report.update(score_variants(cands, truths, groups, n_classes))
    return report


def score_variants(
    cands: dict[Variant, list[Detection]], truths: list[Truth], groups: list[str],
    n_classes: int,
) -> dict[str, Any]:
    """The report's ``variants`` (and, for several, ``variant_chosen_per_group``) from every
    candidate of every board (``image`` indexes ``groups``) under each variant."""
    n = len(groups)
    variants = list(cands)
    report: dict[str, Any] = {"variants": {}}
    for v in variants:
        c = cands[v]
        everything = _scores(c, truths, n, n_classes, 0, 0.0)
        area, conf, _ = choose_operating_point(c, truths, n, n_classes)
        chosen_here = _scores(c, truths, n, n_classes, area, conf)
        report["variants"][v.name] = {
            "threshold": v.threshold, "merge_distance_px": v.merge_distance_px,
            "merge_on_registered_difference": v.link,
            "candidates": len(c),
            # Ranking metrics: every candidate, no operating point.
            "map": everything["map"], "official_ap": everything["official"]["ap"],
            "crossvalidated": leave_one_group_out(c, truths, groups, n_classes),
            "chosen_on_all_val": chosen_here,
        }
    if len(variants) > 1:
        report["variant_chosen_per_group"] = nested_leave_one_group_out(
            {v.name: cands[v] for v in variants}, truths, groups, n_classes)
    return report


def from_evaluation(candidates: Path, threshold: float, merge_distance_px: int,
                    box_margin_px: int) -> dict[str, Any]:
    """The cross-validated report of one evaluation's candidates (``training.evaluate
    --candidates``), so a run that has just evaluated its model need not run it again."""
    from training.data import group_of

    data = json.loads(Path(candidates).read_text())
    keys = data["keys"]
    dets = [Detection(d["image"], d["label"], d["confidence"], d["area_px"], tuple(d["box"]))
            for d in data["detections"]]
    truths = [Truth(t["image"], t["label"], tuple(t["box"])) for t in data["truths"]]
    groups = [group_of(k) for k in keys]
    report: dict[str, Any] = {"val_groups": sorted(set(groups)), "boards": len(keys),
                              "box_margin_px": box_margin_px}
    report.update(score_variants({Variant(threshold, merge_distance_px): dets}, truths, groups,
                                 len(data["classes"])))
    return report


def card_validation(report: dict[str, Any], variant: str, command: str) -> dict[str, Any]:
    """The model card's ``validation`` section from one variant of a report: cross-validated
    figures first, per group, and the flattering figure chosen on every group, named so."""
    v = report["variants"][variant]
    cv = v["crossvalidated"]
    r4 = lambda x: round(float(x), 4)  # noqa: E731
    return {
        "val_groups": report["val_groups"], "boards": report["boards"],
        "truths": cv["truths"],
        "protocol": (
            "operating point (min_area_px, min_confidence) chosen on two held-out groups (best "
            "README-protocol F), scored on the third, in turn; counts pooled over the three. "
            "README mAP and official AP rank every candidate above the pixel threshold, before "
            f"min_area_px and min_confidence. Threshold {v['threshold']}, merge distance "
            f"{v['merge_distance_px']} px, boxes grown by {report['box_margin_px']} px. "
            f"Command: {command}"),
        "readme_protocol": {"map": r4(v["map"]), "f_score": r4(cv["f_score"]),
                            "precision": r4(cv["precision"]), "recall": r4(cv["recall"])},
        "official_protocol": {"ap": r4(v["official_ap"]),
                              "hmean": r4(cv["official"]["hmean"]),
                              "precision": r4(cv["official"]["precision"]),
                              "recall": r4(cv["official"]["recall"]),
                              "matched": cv["official"]["matched"],
                              "detections": cv["official"]["detections"],
                              "truths": cv["truths"]},
        "per_group": {
            g: {"boards": s["boards"], "min_area_px": s["min_area_px"],
                "min_confidence": s["min_confidence"], "f_score": r4(s["f_score"]),
                "precision": r4(s["precision"]), "recall": r4(s["recall"]),
                "map": r4(s["map"]), "official_ap": r4(s["official"]["ap"]),
                "official_hmean": r4(s["official"]["hmean"])}
            for g, s in cv["per_group"].items()},
        "chosen_and_scored_on_all_groups": {
            "min_area_px": v["chosen_on_all_val"]["min_area_px"],
            "min_confidence": v["chosen_on_all_val"]["min_confidence"],
            "f_score": r4(v["chosen_on_all_val"]["f_score"]),
            "note": "the card's operating point; its F is chosen and scored on the same boards, "
                    "so it flatters: the cross-validated F above is the one to expect"},
    }


def print_report(report: dict[str, Any]) -> None:
    """One line a variant, then the per-group table of each."""
    print(f"{report['mode']} model, {report['boards']} boards of groups "
          f"{', '.join(report['val_groups'])} (box margin {report['box_margin_px']} px)")
    print(f"{'variant':<18} {'mAP':>6} {'offAP':>6} {'F(cv)':>6} {'P(cv)':>6} {'R(cv)':>6} "
          f"{'hmean(cv)':>9} {'F(all)':>7}")
    for name, v in report["variants"].items():
        cv = v["crossvalidated"]
        print(f"{name:<18} {v['map']:6.4f} {v['official_ap']:6.4f} {cv['f_score']:6.4f} "
              f"{cv['precision']:6.4f} {cv['recall']:6.4f} {cv['official']['hmean']:9.4f} "
              f"{v['chosen_on_all_val']['f_score']:7.4f}")
    nested = report.get("variant_chosen_per_group")
    if nested:
        print(f"\nvariant and operating point chosen on the other groups: F {nested['f_score']:.4f}"
              f"  P {nested['precision']:.4f}  R {nested['recall']:.4f}")
        for g, s in nested["per_group"].items():
            print(f"  {g}: {s['variant']} area>={s['min_area_px']} conf>={s['min_confidence']:g}"
                  f"  F {s['f_score']:.4f}")
    for name, v in report["variants"].items():
        print(f"\n{name}: held-out group, operating point chosen on the others")
        for g, s in v["crossvalidated"]["per_group"].items():
            print(f"  {g}: boards {s['boards']:3d}  area>={s['min_area_px']:<3d} "
                  f"conf>={s['min_confidence']:<5g}  F {s['f_score']:.4f}  P {s['precision']:.4f}"
                  f"  R {s['recall']:.4f}  mAP {s['map']:.4f}  official AP "
                  f"{s['official']['ap']:.4f} hmean {s['official']['hmean']:.4f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.crossval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="DeepPCB-format folder")
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--card", type=Path, default=None, help="model card (default: beside)")
    p.add_argument("--val-groups", default="", help="comma-separated (default: VAL_GROUPS)")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder for the per-board maps (runs/ or /tmp: never committed)")
    p.add_argument("--variants", type=Variant.parse, nargs="*", default=None,
                   help="THRESHOLD:MERGE[:diff] each (default: the card's rules)")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--write-card", action="store_true",
                   help="write the first variant's figures into the card's 'validation'")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = crossvalidate(args)
    print_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.write_card:
        from app.inference.card import default_card_path

        card_path = args.card or default_card_path(args.weights)
        card = json.loads(card_path.read_text())
        command = "python -m training.crossval " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write-card")
        card["validation"] = card_validation(report, next(iter(report["variants"])), command)
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"wrote {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
