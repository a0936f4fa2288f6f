"""Evaluation on a DeepPCB-format folder (``pcb-inspect evaluate``).

It inspects every board through the service's own ``Inferencer`` (registration for the pair
model, tiling, forward, post-processing), so the numbers describe what the API returns.

Validation is held out by **board group** (the first five digits of DeepPCB's keys,
``training.data.VAL_GROUPS``): the official test split is mostly made of designs that the
training split lacks, so a random split of pairs overstates.

Two protocols, both on boxes grown by ``box_margin`` pixels a side (DeepPCB's boxes are drawn
about 10 px around the defect; the API's boxes are tight):

* **README protocol** (the benchmark as DeepPCB's README words it): a detection matches a
  ground-truth box of the same class when their IoU exceeds 0.33; greedy by confidence; per
  class AP (all-point interpolated), mAP over the six classes; precision, recall and F at the
  operating point.
* **Official protocol**: a port of DeepPCB's ``evaluation/script.py`` (ICDAR 2015's end-to-end
  script, modified) and its ``rrc_evaluation_funcs``: per board, detections are read sorted by
  confidence, ground truths in file order, and each ground truth takes the first still-free
  detection with IoU > 0.33 *whatever the class*; the pair is correct only when the classes
  agree. AP is one pooled, non-interpolated AP over every board's detections ranked by
  confidence (the precision at each correct one, summed, over the number of ground truths);
  precision, recall and their harmonic mean (hmean) count correct pairs. See
  :func:`official_match` for where the script or the shipped ``gt.zip`` is ambiguous.

Both ranking metrics (mAP, official AP) come from the ranked list of every candidate above the
pixel threshold, before ``min_area_px`` and ``min_confidence``; the operating point decides
only what precision, recall, F and hmean count.

The **operating point** is ``(min_area_px, min_confidence)``: a defect is reported when it is
at least that large and that confident. ``--choose-operating-point`` picks it on the
boards scored (best README-protocol F; of tied points, the smallest area and lowest
confidence, searched in that order) and the report says so: a figure chosen and reported on
the same boards flatters. :mod:`training.crossval` chooses it on other board groups instead,
which is what the model cards report.

A per-detection dump (``--dump FILE``, JSON lines) gives each detection's outcome under the
README protocol: ``matched``, ``wrong_class`` (it overlaps a box of another class),
``duplicate`` (its box was already taken by a more confident detection) or ``background``,
and each ground truth that nothing matched (``missed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IOU_MATCH = 0.33
#: Grids searched for the operating point.
_AREA_GRID = (0, 4, 8, 12, 20, 30, 45)
_CONFIDENCE_GRID = tuple(round(float(x), 2) for x in np.arange(0.0, 0.96, 0.05)) + (
    0.97, 0.98, 0.99, 0.995)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Adds the evaluation arguments to ``parser`` (or a new one) and returns it."""
    p = parser or argparse.ArgumentParser(prog="pcb-inspect evaluate", description=__doc__)
    p.add_argument("--data", required=True, type=Path, help="DeepPCB-format folder")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights file (default: the shipped one); its card must sit beside it")
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="'val': the validation board groups (--val-groups); "
                        "'all': every pair in the folder (use for an independent test folder)")
    p.add_argument("--val-groups", type=str, default="",
                   help="comma-separated board groups held out (default: training.data."
                        "VAL_GROUPS)")
    p.add_argument("--card", type=Path, default=None, help="model card (default: beside)")
    p.add_argument("--limit", type=int, default=0, help="score only the first N boards")
    p.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--threshold", type=float, default=None,
                   help="per-pixel P(defect) cut; default: the card's")
    p.add_argument("--min-area-px", type=int, default=None,
                   help="operating point: smallest defect; default: the card's")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="operating point: least confident defect; default: the card's")
    p.add_argument("--merge-distance-px", type=int, default=None,
                   help="fragments at most this far apart are one defect; default: the card's")
    p.add_argument("--choose-operating-point", action="store_true",
                   help="pick (min_area_px, min_confidence) with the best F on these boards")
    p.add_argument("--candidates", type=Path, default=None,
                   help="write every candidate detection and truth here (JSON), to study "
                        "operating points and rankings without running the model again")
    p.add_argument("--dump", type=Path, default=None,
                   help="write the per-detection outcomes here (JSON lines)")
    p.add_argument("--box-margin", type=int, default=None,
                   help="pixels added a side to predicted boxes for the protocol")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--gating", choices=("on", "off"), default="off",
                   help="on: only the tiles app.inference.gating finds work in, as the service "
                   "does by default (PCB_PAIR_GATING); off: every tile (the full path)")
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
    return [j >= 0 for j in _match(preds, truths, iou_threshold)]


def _match(
    preds: Sequence[tuple[int, float, Sequence[float]]],
    truths: Sequence[tuple[int, Sequence[float]]],
    iou_threshold: float,
) -> list[int]:
    """:func:`match_image`'s matching: for each prediction, its truth's index or -1."""
    used = [False] * len(truths)
    matched = [-1] * len(preds)
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
            matched[i] = best_j
    return matched


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


@dataclasses.dataclass(frozen=True)
class Detection:
    """One reported defect of one board, with its box grown by the annotation margin."""

    image: int
    label: int  # 1-based class
    confidence: float
    area_px: int
    box: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Truth:
    """One annotated defect."""

    image: int
    label: int
    box: tuple[float, float, float, float]


def _by_image(items: Sequence[Any], n_images: int) -> list[list[Any]]:
    out: list[list[Any]] = [[] for _ in range(n_images)]
    for item in items:
        out[item.image].append(item)
    return out


def _readme_hits(
    dets: Sequence[Detection], truths: Sequence[Truth], n_images: int, n_classes: int
) -> dict[int, list[tuple[float, bool]]]:
    """``(confidence, hit)`` of every detection, per class, matched board by board."""
    det_img = _by_image(dets, n_images)
    truth_img = _by_image(truths, n_images)
    hits_by_class: dict[int, list[tuple[float, bool]]] = {c: [] for c in range(1, n_classes + 1)}
    for i in range(n_images):
        preds = [(d.label, d.confidence, d.box) for d in det_img[i]]
        gts = [(t.label, t.box) for t in truth_img[i]]
        for d, hit in zip(det_img[i], match_image(preds, gts), strict=True):
            hits_by_class[d.label].append((d.confidence, hit))
    return hits_by_class


def readme_protocol(
    dets: Sequence[Detection], truths: Sequence[Truth], n_images: int, n_classes: int,
    min_confidence: float, min_area_px: int = 0,
) -> dict[str, Any]:
    """Per-class AP from the ranked list of ``dets`` (every candidate), and P/R/F of the
    operating point's detections: those at least ``min_area_px`` large and ``min_confidence``
    confident, matched on their own (a candidate the area rule drops frees its truth for a
    less confident one)."""
    ranked = _readme_hits(dets, truths, n_images, n_classes)
    kept_dets = [d for d in dets if d.confidence >= min_confidence and d.area_px >= min_area_px]
    if len(kept_dets) == len(dets):
        at_point = ranked
    else:
        at_point = _readme_hits(kept_dets, truths, n_images, n_classes)
    n_truth = {c: sum(1 for t in truths if t.label == c) for c in range(1, n_classes + 1)}
    per_class = {}
    tp_all = pred_all = 0
    for c in range(1, n_classes + 1):
        confs = [x[0] for x in ranked[c]]
        hits = [x[1] for x in ranked[c]]
        kept = [h for _, h in at_point[c]]
        tp_all += sum(kept)
        pred_all += len(kept)
        per_class[c] = {
            "ap": average_precision(confs, hits, n_truth[c]),
            "precision": sum(kept) / len(kept) if kept else 0.0,
            "recall": sum(kept) / n_truth[c] if n_truth[c] else 0.0,
            "truths": n_truth[c],
            "predictions": len(kept),
        }
    total = len(truths)
    precision = tp_all / pred_all if pred_all else 0.0
    recall = tp_all / total if total else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "map": float(np.mean([v["ap"] for v in per_class.values()])),
        "precision": precision, "recall": recall, "f_score": f,
        "true_positives": tp_all, "detections": pred_all, "truths": total,
        "per_class": per_class,
    }


def official_order(dets: Sequence[Detection]) -> list[Detection]:
    """One board's detections in the order the official script reads them: by confidence.

    ``rrc_evaluation_funcs.get_tl_line_values_from_file_contents`` (``sort_by_confidences=True``)
    reorders a result file with ``np.argsort(-confidences)``, numpy's default sort, which is
    not stable: how it orders equal confidences depends on the numpy version and the CPU (and
    matters, since the first detection in order takes a ground truth). The port keeps ties in
    the order given (stable), i.e. the order the file would be written in.
    """
    return sorted(dets, key=lambda d: -d.confidence)


def official_match(
    dets: Sequence[Detection], truths: Sequence[Truth]
) -> list[tuple[int, int, bool]]:
    """The official script's matching on one board; ``(truth, detection, correct)`` per pair.

    Ground truths in file order; each takes the first still-free detection, in the order given
    (call it with :func:`official_order`), whose IoU with it exceeds 0.33, *whatever their
    classes*: the pair is consumed either way, and it is correct only when the classes agree
    (``script.py``, ``transcription_match`` on the type field). A ground truth of one class
    can so take the detection that a later ground truth of the right class needed.

    ``transcription_match`` compares the two type strings as written (after ``.upper()``).
    The README asks for type *names* (``open, short, mousebite, spur, copper, pin-hole``) in
    results while the annotation files carry type *numbers* (1-6), and the GT's type field is
    everything after its fourth comma, spaces included: compared as strings, a file that wrote
    its types differently from ``gt.zip`` would never be correct. The port compares class ids,
    i.e. it scores a result file that writes its types exactly as ``gt.zip`` does.

    Sources: DeepPCB's README (IoU "larger than 0.33", scripts "borrowed from Icdar2015 ...
    with small modification") and the ICDAR 2015 end-to-end script and ``rrc_evaluation_funcs``
    it names; DeepPCB's own modified copy could not be read when this was ported, so where it
    departs from ICDAR's in more than the IoU constraint, this port does not know.

    Not ported, because DeepPCB never triggers it: "don't care" ground truths (type ``###``)
    and the ``AREA_PRECISION_CONSTRAINT`` rule that drops detections lying over one. Boxes:
    the script truncates coordinates to integers (``rectangle_to_polygon``) and takes the area
    of the polygon, i.e. ``(x2 - x1) * (y2 - y1)`` with no ``+ 1``, as :func:`box_iou` does;
    the service's boxes are integers already.
    """
    det_used = [False] * len(dets)
    pairs: list[tuple[int, int, bool]] = []
    for g, t in enumerate(truths):
        for k, d in enumerate(dets):
            if not det_used[k] and box_iou(d.box, t.box) > IOU_MATCH:
                det_used[k] = True
                pairs.append((g, k, d.label == t.label))
                break
    return pairs


def official_ap(ranked: Sequence[tuple[float, bool]], n_truth: int) -> float:
    """``compute_ap``: pooled and non-interpolated, the precision at each correct detection
    down the list ranked by confidence, summed and divided by the number of ground truths.

    Ties: the script sorts the pooled list with ``np.argsort(-confidences)`` (introsort: tie
    order unspecified); the port sorts stably, so tied detections keep board order.
    """
    order = sorted(range(len(ranked)), key=lambda k: -ranked[k][0])
    correct = 0
    ap = 0.0
    for n, k in enumerate(order):
        if ranked[k][1]:
            correct += 1
            ap += correct / (n + 1)
    return ap / n_truth if n_truth else 0.0


def official_protocol(
    dets: Sequence[Detection], truths: Sequence[Truth], n_images: int, min_confidence: float,
    min_area_px: int = 0,
) -> dict[str, Any]:
    """A port of DeepPCB's ``evaluation/script.py`` (ICDAR 2015's end-to-end script, modified).

    Two submissions of the same boards: the AP is scored on ``dets``, every candidate (the
    ranked list), and precision, recall and hmean on the operating point's detections (those
    at least ``min_area_px`` large and ``min_confidence`` confident), as a result file written
    at that operating point would be. Per board, detections are read by confidence
    (:func:`official_order`) and matched by :func:`official_match`; precision is correct pairs
    over all detections, recall correct pairs over all ground truths, both pooled over boards.
    """
    det_img = _by_image(dets, n_images)
    truth_img = _by_image(truths, n_images)
    ranked: list[tuple[float, bool]] = []
    correct_sum = n_det = 0
    for i in range(n_images):
        ordered = official_order(det_img[i])
        correct = {k for _, k, ok in official_match(ordered, truth_img[i]) if ok}
        ranked.extend((d.confidence, k in correct) for k, d in enumerate(ordered))
        kept = [d for d in ordered if d.confidence >= min_confidence and d.area_px >= min_area_px]
        correct_sum += sum(ok for _, _, ok in official_match(kept, truth_img[i]))
        n_det += len(kept)
    n_gt = len(truths)
    precision = correct_sum / n_det if n_det else 0.0
    recall = correct_sum / n_gt if n_gt else 0.0
    hmean = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"ap": official_ap(ranked, n_gt), "precision": precision, "recall": recall,
            "hmean": hmean, "matched": correct_sum, "detections": n_det, "truths": n_gt}


def detection_outcomes(
    dets: Sequence[Detection], truths: Sequence[Truth], n_images: int
) -> list[dict[str, Any]]:
    """The per-detection dump under the README protocol (and the missed truths)."""
    rows: list[dict[str, Any]] = []
    det_img = _by_image(dets, n_images)
    truth_img = _by_image(truths, n_images)
    for i in range(n_images):
        ds = sorted(det_img[i], key=lambda d: -d.confidence)
        gts = truth_img[i]
        # The README protocol's own matching; what a miss overlapped then names its kind.
        matched = _match([(d.label, d.confidence, d.box) for d in ds],
                         [(t.label, t.box) for t in gts], IOU_MATCH)
        for d, j in zip(ds, matched, strict=True):
            overlapped = [t for t in gts if box_iou(d.box, t.box) > IOU_MATCH]
            if j >= 0:
                outcome = "matched"
            elif any(t.label != d.label for t in overlapped):
                outcome = "wrong_class"
            elif overlapped:
                # A free truth of its class above the IoU would have matched: all were taken.
                outcome = "duplicate"
            else:
                outcome = "background"
            rows.append({"image": i, "kind": "detection", "outcome": outcome,
                         "class": d.label, "confidence": round(d.confidence, 4),
                         "area_px": d.area_px, "box": [round(v, 1) for v in d.box]})
        used = set(matched)
        for j, t in enumerate(gts):
            if j not in used:
                rows.append({"image": i, "kind": "truth", "outcome": "missed", "class": t.label,
                             "box": list(t.box)})
    return rows


def choose_operating_point(
    dets: Sequence[Detection], truths: Sequence[Truth], n_images: int, n_classes: int
) -> tuple[int, float, float]:
    """``(min_area_px, min_confidence, F)`` with the best README-protocol F on these boards.

    Matching is greedy by confidence, so cutting at a confidence only drops the tail of each
    board's matching order and leaves the matches above it as they were: one matching per
    area, then every confidence is a count.
    """
    best = (0, 0.0, -1.0)
    n_truth = len(truths)
    for area in _AREA_GRID:
        kept = [d for d in dets if d.area_px >= area]
        hits = _readme_hits(kept, truths, n_images, n_classes)
        scored = np.array([(conf, hit) for c in hits for conf, hit in hits[c]],
                          dtype=np.float64).reshape(-1, 2)
        for conf in _CONFIDENCE_GRID:
            at = scored[scored[:, 0] >= conf]
            tp, n = float(at[:, 1].sum()), len(at)
            precision = tp / n if n else 0.0
            recall = tp / n_truth if n_truth else 0.0
            f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            if f > best[2] + 1e-9:
                best = (area, conf, f)
    return best


@dataclasses.dataclass
class _Scored:
    """What inspecting the boards gathers: pixel counts per class, the candidates and truths
    (boxes), and the cost."""

    n_classes: int
    keys: list[str] = dataclasses.field(default_factory=list)
    dets: list[Detection] = dataclasses.field(default_factory=list)
    truths: list[Truth] = dataclasses.field(default_factory=list)
    alignment_failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    tiles_total: int = 0
    tiles_skipped: int = 0

    def __post_init__(self) -> None:
        k = self.n_classes + 1
        self.inter = np.zeros(k, dtype=np.int64)
        self.pred_sum = np.zeros(k, dtype=np.int64)
        self.true_sum = np.zeros(k, dtype=np.int64)

    def add_pixels(self, pred: np.ndarray | None, mask: np.ndarray) -> None:
        """Counts a board's class map against its mask; ``None``: nothing was predicted."""
        k = self.n_classes + 1
        for c in range(1, k):
            t = mask == c
            self.true_sum[c] += int(np.count_nonzero(t))
            if pred is not None:
                p = pred == c
                self.inter[c] += int(np.count_nonzero(p & t))
                self.pred_sum[c] += int(np.count_nonzero(p))

    def per_class(self, classes: Sequence[str], readme: dict[str, Any]) -> dict[str, Any]:
        """Dice and IoU of each class's pixels, beside its README-protocol figures."""
        out: dict[str, dict[str, float]] = {}
        for c in range(1, self.n_classes + 1):
            inter, denom = self.inter[c], self.pred_sum[c] + self.true_sum[c]
            out[classes[c - 1]] = {
                "dice": float(2 * inter / denom) if denom else 1.0,
                "iou": float(inter / (denom - inter)) if denom else 1.0,
                **readme["per_class"][c],
            }
        return out


def _inspect_boards(
    inferencer: Any, samples: Sequence[Any], config: Any, margin: int, gating: bool
) -> _Scored:
    """Inspects every board as the service would and gathers what is scored."""
    import cv2
    from rich.progress import track

    from app.inference.registration import AlignmentError
    from training.data import load_sample

    classes = list(inferencer.card.classes)
    scored = _Scored(len(classes))
    # Asked for only when on: the full path is predict's own default.
    gated = {"gating": True} if gating else {}
    for i, sample in enumerate(track(samples, description="evaluating", transient=True)):
        image, mask, boxes = load_sample(sample)
        golden = None
        if inferencer.pair:
            golden = cv2.imread(str(sample.template_path), cv2.IMREAD_GRAYSCALE)
            if golden is None:
                raise OSError(f"the pair model needs templates: cannot read "
                              f"{sample.template_path}")
        started = time.perf_counter()
        scored.keys.append(sample.key)
        scored.truths.extend(Truth(i, b.label, (b.x1, b.y1, b.x2, b.y2)) for b in boxes)
        try:
            result = inferencer.predict(image, config, golden=golden, **gated)
        except AlignmentError as exc:
            # What the service answers with a 422: no defects reported for this board, so
            # every one of its truths counts as missed. Its time counts: it is in `boards`.
            scored.seconds += time.perf_counter() - started
            scored.alignment_failures.append({"key": sample.key, "score": round(exc.score, 4)})
            scored.add_pixels(None, mask)
            continue
        scored.seconds += time.perf_counter() - started
        scored.tiles_total += result.tiles
        scored.tiles_skipped += result.skipped_tiles
        scored.add_pixels(result.class_map, mask)
        h, w = image.shape
        for d in result.defects:
            x1, y1, x2, y2 = d.bbox
            grown = (max(0, x1 - margin), max(0, y1 - margin), min(w, x2 + margin),
                     min(h, y2 + margin))
            scored.dets.append(Detection(i, classes.index(d.class_) + 1,
                                         float(d.confidence), int(d.area_px), grown))
    return scored


def _write_candidates(path: Path, scored: _Scored, classes: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "keys": scored.keys, "classes": list(classes),
        "detections": [dataclasses.asdict(d) for d in scored.dets],
        "truths": [dataclasses.asdict(t) for t in scored.truths],
    }))


def _write_dump(
    path: Path, scored: _Scored, classes: Sequence[str], area: int, min_conf: float
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        kept = [d for d in scored.dets if d.area_px >= area and d.confidence >= min_conf]
        for row in detection_outcomes(kept, scored.truths, len(scored.keys)):
            row["key"] = scored.keys[row.pop("image")]
            row["class"] = classes[row["class"] - 1]
            fh.write(json.dumps(row) + "\n")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Scores a model on a DeepPCB-format folder; returns the report."""
    from app.core.config import DEFAULT_WEIGHTS
    from app.inference.defects import PostprocessConfig
    from app.inference.inferencer import Inferencer
    from training.data import VAL_GROUPS, read_split, split_by_groups

    weights = Path(args.weights or DEFAULT_WEIGHTS)
    inferencer = Inferencer.load(weights, args.card, precision=args.precision,
                                 max_batch_size=args.batch_size)
    card = inferencer.card
    classes = list(card.classes)
    samples = read_split(args.data)
    groups = [g for g in args.val_groups.split(",") if g] or list(VAL_GROUPS)
    if args.split == "val":
        _, samples = split_by_groups(samples, groups)
    if args.limit:
        samples = samples[: args.limit]
    margin = args.box_margin
    if margin is None:
        margin = int(getattr(card, "annotation_box_margin_px", 0) or 0)
    threshold = args.threshold if args.threshold is not None else card.thresholds.confidence
    # Candidates: everything above the pixel threshold; the operating point filters after.
    merge = (args.merge_distance_px if args.merge_distance_px is not None
             else card.thresholds.merge_distance_px)
    config = PostprocessConfig(threshold=threshold, min_area_px=0,
                               pixels_per_mm=card.pixels_per_mm, merge_distance_px=merge)
    inferencer.warm_up()
    scored = _inspect_boards(inferencer, samples, config, margin, args.gating == "on")

    n = len(samples)
    if args.candidates:
        _write_candidates(args.candidates, scored, classes)
    chosen = None
    if args.choose_operating_point:
        area, min_conf, _ = choose_operating_point(scored.dets, scored.truths, n, len(classes))
        chosen = {"min_area_px": area, "min_confidence": min_conf}
    else:
        card_min_conf = float(getattr(card.thresholds, "min_confidence", 0.0) or 0.0)
        area = args.min_area_px if args.min_area_px is not None else card.thresholds.min_area_px
        min_conf = args.min_confidence if args.min_confidence is not None else card_min_conf
    # The ranking metrics (mAP, official AP) rank every candidate; the operating point
    # decides what P, R, F and hmean count.
    readme = readme_protocol(scored.dets, scored.truths, n, len(classes), min_conf, area)
    official = official_protocol(scored.dets, scored.truths, n, min_conf, area)
    if args.dump:
        _write_dump(args.dump, scored, classes, area, min_conf)
    per_class = scored.per_class(classes, readme)
    return {
        "data": str(args.data),
        "split": args.split,
        "val_groups": groups if args.split == "val" else None,
        "boards": n,
        "weights": str(weights),
        "weights_sha256": inferencer.weights_sha256,
        "mode": inferencer.mode,
        "precision_mode": args.precision,
        "gating": args.gating,
        "tiles": {"computed": scored.tiles_total - scored.tiles_skipped,
                  "skipped": scored.tiles_skipped},
        "threshold": threshold,
        "min_area_px": area,
        "min_confidence": min_conf,
        "merge_distance_px": merge,
        "operating_point_chosen_here": chosen,
        "box_margin_px": margin,
        "iou_match": IOU_MATCH,
        "precision": readme["precision"],
        "recall": readme["recall"],
        "f_score": readme["f_score"],
        "map": readme["map"],
        "official": official,
        "alignment_failures": scored.alignment_failures,
        "mean_dice": float(np.mean([v["dice"] for v in per_class.values()])),
        "mean_iou": float(np.mean([v["iou"] for v in per_class.values()])),
        "boards_per_second": n / scored.seconds if scored.seconds else 0.0,
        "per_class": per_class,
    }


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
    official = report["official"]
    console.print(f"README protocol: F-score {report['f_score']:.4f}  mAP {report['map']:.4f}  "
                  f"(min_area_px {report['min_area_px']}, min_confidence "
                  f"{report['min_confidence']})")
    console.print(f"official protocol: hmean {official['hmean']:.4f}  AP {official['ap']:.4f}  "
                  f"P {official['precision']:.4f}  R {official['recall']:.4f}")
    console.print(f"{report['boards_per_second']:.2f} boards/s")


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
