"""Evaluation on a DeepPCB-format folder (``pcb-inspect evaluate``).

It inspects every board through the service's own ``Inferencer`` (tiling, forward,
post-processing), so the numbers describe what the API returns, and reports:

* pixel metrics: Dice and IoU per class, pooled over all boards;
* the DeepPCB protocol on components: a predicted defect matches a ground-truth box of the
  same class when their IoU exceeds 0.33; precision, recall, F-score, and mAP (each class's
  average precision from its precision-recall curve, averaged over the six classes).

DeepPCB's boxes are drawn with a margin of about 10 px around the defect, while the service
returns the defect's tight box. For the protocol, each predicted box is grown by
``box_margin`` pixels a side (default: the model card's ``annotation_box_margin_px``, learned
on the training split) before matching. The API's boxes stay tight.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IOU_MATCH = 0.33


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Adds the evaluation arguments to ``parser`` (or a new one) and returns it."""
    p = parser or argparse.ArgumentParser(prog="pcb-inspect evaluate", description=__doc__)
    p.add_argument("--data", required=True, type=Path, help="DeepPCB-format folder")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights file (default: the shipped one); its card must sit beside it")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="'val': the validation part kept apart by training's seeded split; "
                        "'all': every pair in the folder (use for an independent test folder)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--limit", type=int, default=0, help="score only the first N boards")
    p.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--threshold", type=float, default=None, help="default: the card's")
    p.add_argument("--min-area-px", type=int, default=None, help="default: the card's")
    p.add_argument("--box-margin", type=int, default=None,
                   help="pixels added a side to predicted boxes for the protocol")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    return p


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes (max exclusive)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_image(
    preds: list[tuple[int, float, Sequence[float]]],
    truths: list[tuple[int, Sequence[float]]],
    iou_threshold: float = IOU_MATCH,
) -> list[bool]:
    """Greedy matching, most confident prediction first, each truth used once.

    Args:
        preds: ``(class, confidence, box)`` per predicted defect.
        truths: ``(class, box)`` per ground-truth defect.
        iou_threshold: A match needs an IoU strictly above this.

    Returns:
        For each prediction (input order), whether it is a true positive.
    """
    used = [False] * len(truths)
    tp = [False] * len(preds)
    for i in sorted(range(len(preds)), key=lambda k: -preds[k][1]):
        cls, _, box = preds[i]
        best, best_j = iou_threshold, -1
        for j, (tcls, tbox) in enumerate(truths):
            if used[j] or tcls != cls:
                continue
            iou = box_iou(box, tbox)
            if iou > best:
                best, best_j = iou, j
        if best_j >= 0:
            used[best_j] = True
            tp[i] = True
    return tp


def average_precision(confidences: Sequence[float], is_tp: Sequence[bool], n_truth: int) -> float:
    """All-point interpolated AP (area under the monotone precision-recall curve).

    Args:
        confidences: Confidence of each prediction of one class.
        is_tp: Whether each prediction matched.
        n_truth: Ground-truth defects of that class.

    Returns:
        AP in [0, 1]; 0 when there is no ground truth.
    """
    if n_truth == 0:
        return 0.0
    order = np.argsort(-np.asarray(confidences, dtype=np.float64), kind="stable")
    hits = np.asarray(is_tp, dtype=np.float64)[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(1.0 - hits)
    recall = np.concatenate([[0.0], tp / n_truth, [tp[-1] / n_truth if len(tp) else 0.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1e-12), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Scores a model on a DeepPCB-format folder; returns the report."""
    from app.core.config import DEFAULT_WEIGHTS, Settings
    from app.inference.inferencer import Inferencer
    from app.inference.postprocess import PostprocessConfig
    from training.data import load_sample, read_split, split_train_val

    weights = args.weights or DEFAULT_WEIGHTS
    settings = Settings(weights_path=weights, precision=args.precision,
                        max_batch_size=args.batch_size)
    inferencer = Inferencer.from_settings(settings)
    card = inferencer.card
    classes = list(card.classes)
    samples = read_split(args.data)
    if args.split == "val":
        _, samples = split_train_val(samples, args.val_fraction, args.seed)
    if args.limit:
        samples = samples[: args.limit]
    margin = args.box_margin
    if margin is None:
        margin = int(getattr(card, "annotation_box_margin_px", 0) or 0)
    config = PostprocessConfig(
        threshold=args.threshold if args.threshold is not None else card.thresholds.confidence,
        min_area_px=(args.min_area_px if args.min_area_px is not None
                     else card.thresholds.min_area_px),
        pixels_per_mm=card.pixels_per_mm,
    )
    k = len(classes) + 1
    inter = np.zeros(k, dtype=np.int64)
    pred_sum = np.zeros(k, dtype=np.int64)
    true_sum = np.zeros(k, dtype=np.int64)
    per_class_preds: dict[int, list[tuple[float, bool]]] = {c: [] for c in range(1, k)}
    n_truth = dict.fromkeys(range(1, k), 0)
    inferencer.warm_up()
    seconds = 0.0
    from rich.progress import track

    for sample in track(samples, description="evaluating", transient=True):
        image, mask, boxes = load_sample(sample)
        started = time.perf_counter()
        result = inferencer.predict(image, config)
        seconds += time.perf_counter() - started
        pred = result.class_map
        for c in range(1, k):
            p, t = pred == c, mask == c
            inter[c] += int(np.count_nonzero(p & t))
            pred_sum[c] += int(np.count_nonzero(p))
            true_sum[c] += int(np.count_nonzero(t))
        h, w = image.shape
        preds = []
        for d in result.defects:
            x1, y1, x2, y2 = d.bbox
            grown = (max(0, x1 - margin), max(0, y1 - margin), min(w, x2 + margin),
                     min(h, y2 + margin))
            preds.append((classes.index(d.class_name) + 1, d.confidence, grown))
        truths = [(b.label, (b.x1, b.y1, b.x2, b.y2)) for b in boxes]
        for b in boxes:
            n_truth[b.label] += 1
        for (cls, conf, _), hit in zip(preds, match_image(preds, truths), strict=True):
            per_class_preds[cls].append((conf, hit))

    per_class: dict[str, dict[str, float]] = {}
    total_tp = total_pred = 0
    for c in range(1, k):
        confs = [x[0] for x in per_class_preds[c]]
        hits = [x[1] for x in per_class_preds[c]]
        tp = sum(hits)
        total_tp += tp
        total_pred += len(hits)
        denom = pred_sum[c] + true_sum[c]
        per_class[classes[c - 1]] = {
            "dice": float(2 * inter[c] / denom) if denom else 1.0,
            "iou": float(inter[c] / (denom - inter[c])) if denom else 1.0,
            "precision": tp / len(hits) if hits else 0.0,
            "recall": tp / n_truth[c] if n_truth[c] else 0.0,
            "ap": average_precision(confs, hits, n_truth[c]),
            "truths": n_truth[c],
            "predictions": len(hits),
        }
    all_truth = sum(n_truth.values())
    precision = total_tp / total_pred if total_pred else 0.0
    recall = total_tp / all_truth if all_truth else 0.0
    f_score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    report = {
        "data": str(args.data),
        "split": args.split,
        "boards": len(samples),
        "weights": str(weights),
        "weights_sha256": inferencer.weights_sha256,
        "precision_mode": args.precision,
        "threshold": config.threshold,
        "min_area_px": config.min_area_px,
        "box_margin_px": margin,
        "iou_match": IOU_MATCH,
        "precision": precision,
        "recall": recall,
        "f_score": f_score,
        "map": float(np.mean([v["ap"] for v in per_class.values()])),
        "mean_dice": float(np.mean([v["dice"] for v in per_class.values()])),
        "mean_iou": float(np.mean([v["iou"] for v in per_class.values()])),
        "boards_per_second": len(samples) / seconds if seconds else 0.0,
        "per_class": per_class,
    }
    return report


def print_report(report: dict[str, Any]) -> None:
    """Prints the report as a plain table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['boards']} boards ({report['split']}), "
                        f"{report['precision_mode']}, threshold {report['threshold']}")
    for col in ("class", "dice", "iou", "precision", "recall", "AP", "truths", "preds"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, m in report["per_class"].items():
        table.add_row(name, f"{m['dice']:.3f}", f"{m['iou']:.3f}", f"{m['precision']:.3f}",
                      f"{m['recall']:.3f}", f"{m['ap']:.3f}", str(m["truths"]),
                      str(m["predictions"]))
    table.add_row("all", f"{report['mean_dice']:.3f}", f"{report['mean_iou']:.3f}",
                  f"{report['precision']:.3f}", f"{report['recall']:.3f}", f"{report['map']:.3f}",
                  "", "", style="bold")
    console = Console()
    console.print(table)
    console.print(f"F-score {report['f_score']:.4f}  mAP {report['map']:.4f}  "
                  f"{report['boards_per_second']:.2f} boards/s")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``pcb-inspect evaluate``."""
    report = evaluate(args)
    print_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m training.evaluate``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
