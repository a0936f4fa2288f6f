"""Post-processing: from per-pixel model output to defects, a summary and a verdict.

The model's softmax over ``1 + len(class_names)`` classes (0 = background) is reduced inside the
TensorFlow graph to three maps per image, and everything here works only on those maps:

* ``fg``: ``1 - p_background`` (float32, H x W; the stitcher keeps it as uint16 x
  ``FG_SCALE``), P(defect): the confidence that a pixel is any defect;
* ``cls``: ``1 + argmax`` over the foreground classes (uint8, H x W, values ``1..K``), the most
  likely defect class should the pixel be a defect;
* ``cls_p``: P(``cls`` | defect) = ``p[cls] / sum(p[1:])`` (float16, H x W, in ``[1/K, 1]``),
  how sure the model is of that class among the defect classes.

A defect is a defect, not a class: one 8-connected component of pixels with ``fg >= threshold``,
whatever their classes, where fragments at most ``merge_distance_px`` apart count as one. It gets
one class, by a probability-weighted vote of its pixels. This module is pure numpy and OpenCV: it
must not import TensorFlow or ``model_defs`` (which imports TensorFlow), so the class names are
passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from app.inference.defects import Defect, PostprocessConfig, PostprocessResult, Summary
from app.inference.tiling import FG_SCALE, Stitcher

#: ``|board - golden|`` above this is a change of the copper (see registered_difference).
DIFF_THRESHOLD = 100
_SLIVER_KERNEL = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))



def postprocess(
    stitcher: Stitcher,
    class_names: Sequence[str],
    config: PostprocessConfig,
    link: np.ndarray | None = None,
) -> PostprocessResult:
    """Turns the stitched output maps of one board into defects, a summary and a verdict.

    Steps, all vectorised (an 8000 x 8000 board is one pass of each):

    1. Defect pixels: ``fg >= threshold`` (and ``fg > 0``, ``cls > 0``), whatever their class
       (:func:`gather_defect_pixels`). The stitcher's maps are released right after, before the
       labelling allocates its own.
    2. Merge: the defect mask is dilated by ``merge_distance_px`` (``cv2.dilate``) and its
       8-connected components labelled (``cv2.connectedComponents``). A defect is the set of
       ORIGINAL defect pixels of one such component, i.e. a group of fragments: the dilation
       only decides which fragments belong together, it adds no pixel to any defect.
    3. Gather: the labels at the defect pixels (few), then the full-size label map is freed.
    4. Describe each defect from its pixels (``np.bincount`` over the labels): area, bbox,
       centroid, mean ``fg`` and the class vote, where each pixel gives ``fg * cls_p`` to its
       ``cls``. The class is the vote's winner; ``confidence = mean(fg) * purity``, purity
       being the winning vote over the total vote.
    5. Drop defects with fewer than ``min_area_px`` pixels (after merging), paint the kept
       ones into the class map with their one class, total and judge.

    Args:
        stitcher: The board's stitched maps; ``cls == k`` means ``class_names[k - 1]``.
        class_names: Names of the foreground classes, in model output order.
        config: The post-processing rules.
        link: See :func:`describe_defects`.

    Returns:
        The class map, the defects (ordered by the top-left of their bbox) and the summary.

    Raises:
        ValueError: ``cls_p`` is outside ``(0, 1]`` on a defect pixel, or ``link`` has another
            shape than the maps.
    """
    pixels = gather_defect_pixels(
        stitcher.fg_quantized, stitcher.cls, stitcher.cls_p, config.threshold
    )
    stitcher.release()
    return describe_defects(pixels, class_names, config, link)


@dataclass(frozen=True, eq=False)
class DefectPixels:
    """The defect pixels of one image: where they are, and the maps' values there.

    The full-size maps are not needed past this point, so a caller holding a large board's
    maps (the stitcher: 5 bytes a pixel) can free them before the labelling, which needs
    another 6 bytes a pixel for its own maps.
    """

    #: ``(H, W)`` bool: ``fg >= threshold`` and ``fg > 0`` and ``cls > 0``.
    mask: np.ndarray
    #: The maps at the defect pixels, in row-major order: float32 ``fg``, uint8 ``cls`` and
    #: float16 ``cls_p``.
    fg: np.ndarray
    cls: np.ndarray
    cls_p: np.ndarray


def gather_defect_pixels(
    fg_q: np.ndarray, cls: np.ndarray, cls_p: np.ndarray, threshold: float
) -> DefectPixels:
    """Step 1 of :func:`postprocess`: the defect pixels and the maps' values there.

    ``fg_q`` is P(defect) x :data:`~app.inference.tiling.FG_SCALE` as the stitcher keeps it
    (:attr:`~app.inference.tiling.Stitcher.fg_quantized`); its values at the defect pixels come
    back as float32 probabilities.

    Raises:
        ValueError: ``cls_p`` is outside ``(0, 1]`` on a defect pixel.
    """
    # The threshold quantized as the values were: rounding keeps order, so every pixel at or
    # above the threshold is kept (one whose P(defect) "equals" it included); a pixel within
    # half a step below it may join them. q >= 1 stands for fg > 0. ``cls > 0`` is and-ed in
    # place: a large board holds one boolean map here, not two.
    mask = np.greater_equal(fg_q, max(1, round(float(np.float32(threshold)) * FG_SCALE)))
    np.logical_and(mask, cls, out=mask)
    pix_p = cls_p[mask]
    if pix_p.size:
        lo, hi = float(pix_p.min()), float(pix_p.max())
        if not (lo > 0 and hi <= 1):  # written so that NaN fails too
            raise ValueError(
                "cls_p must be in (0, 1] on defect pixels (it is P(cls | defect) >= 1/K). "
                f"Received: cls_p values in [{lo}, {hi}] on defect pixels"
            )
    pix_fg = fg_q[mask].astype(np.float32) / np.float32(FG_SCALE)
    return DefectPixels(mask, pix_fg, cls[mask].astype(np.uint8, copy=False), pix_p)


def describe_defects(
    pixels: DefectPixels,
    class_names: Sequence[str],
    config: PostprocessConfig,
    link: np.ndarray | None = None,
) -> PostprocessResult:
    """Steps 2-5 of :func:`postprocess`, from the gathered defect pixels.

    ``link``: ``(H, W)`` bool, where the board differs from its registered golden board
    (:func:`registered_difference`; pair model). Fragments that touch one connected component
    of it are one defect: a defect's pixels are one change of the copper, which the model may
    find in pieces (a long open, a spur's root and tip). Like the dilation, it only decides
    which fragments belong together and adds no pixel to any defect.
    """
    names = tuple(class_names)
    height, width = pixels.mask.shape
    if not pixels.fg.size:
        summary = summarize([], names, height * width, config)
        return PostprocessResult(
            class_map=np.zeros((height, width), dtype=np.uint8), defects=[], summary=summary
        )
    n_labels, lab = _label_defect_pixels(pixels.mask, config.merge_distance_px, link)
    stats = _DefectStats.measure(pixels, lab, n_labels, len(names))
    # Compared on the rounded value that is reported, so a defect shown with confidence c
    # survives min_confidence=c. A label with no defect pixel (a component of ``link`` that
    # touches no fragment) is no defect, whatever min_area_px says.
    keep = (stats.area > 0) & (stats.area >= config.min_area_px)
    keep &= np.round(stats.confidence, 4) >= config.min_confidence
    keep[0] = False
    lut = np.where(keep, stats.winner, 0).astype(np.uint8)
    class_map = np.zeros((height, width), dtype=np.uint8)
    class_map[pixels.mask] = lut[lab]
    defects = stats.defects(np.flatnonzero(keep), names, config.pixels_per_mm)
    summary = summarize(defects, names, height * width, config)
    return PostprocessResult(class_map=class_map, defects=defects, summary=summary)


def _label_defect_pixels(
    defect_px: np.ndarray, merge_distance_px: int, link: np.ndarray | None
) -> tuple[int, np.ndarray]:
    """The number of labels, and the defect label of each defect pixel (row-major order).

    Defects are the components of the dilated mask, each keeping only its ORIGINAL defect
    pixels (the dilation decides which fragments belong together and adds no pixel to any
    defect). One full-size label map at a time: the labels are gathered at the defect pixels
    (few) and everything per defect is computed from those, so no fragment labelling pass is
    needed (area, bbox and centroid of a defect are those of its pixels).
    """
    mask: np.ndarray = defect_px.view(np.uint8)
    if link is not None and link.shape != mask.shape:
        raise ValueError(
            f"link must have the shape of the maps {mask.shape}. Received: {link.shape}"
        )
    grown = mask
    if merge_distance_px:
        # An (m+1) x (m+1) square anchored at its top-left corner grows every pixel by m up
        # and left: two pixels' squares touch (8-connected) exactly when their Chebyshev
        # distance is <= m + 1, i.e. when at most m background pixels lie between them.
        side = merge_distance_px + 1
        grown = cv2.dilate(mask, np.ones((side, side), dtype=np.uint8), anchor=(0, 0))
    if link is not None:
        # Components of the difference that touch no fragment label no defect pixel: they
        # only add labels that nothing reads.
        grown = np.bitwise_or(grown, link.astype(bool, copy=False).view(np.uint8))
    n_labels, labels = cv2.connectedComponents(grown, connectivity=8, ltype=cv2.CV_32S)
    del grown
    return n_labels, labels[defect_px]


@dataclass(frozen=True, eq=False)
class _DefectStats:
    """Per-label arrays (index = label; label 0 is the background) of one board's defects."""

    area: np.ndarray
    #: Bbox bounds; the max are exclusive.
    x_min: np.ndarray
    y_min: np.ndarray
    x_max: np.ndarray
    y_max: np.ndarray
    x_sum: np.ndarray
    y_sum: np.ndarray
    #: The 1-based class id that wins each defect's vote, and ``mean(fg) * purity``.
    winner: np.ndarray
    confidence: np.ndarray

    @classmethod
    def measure(
        cls, pixels: DefectPixels, lab: np.ndarray, n_labels: int, n_classes: int
    ) -> _DefectStats:
        """Area, bbox, centroid sums and class vote of each label, from its pixels."""
        height, width = pixels.mask.shape
        ys, xs = np.nonzero(pixels.mask)  # row-major, like every boolean gather here
        x_min = np.full(n_labels, width, dtype=np.int64)
        y_min = np.full(n_labels, height, dtype=np.int64)
        x_max = np.zeros(n_labels, dtype=np.int64)
        y_max = np.zeros(n_labels, dtype=np.int64)
        np.minimum.at(x_min, lab, xs)
        np.minimum.at(y_min, lab, ys)
        np.maximum.at(x_max, lab, xs + 1)
        np.maximum.at(y_max, lab, ys + 1)
        area = np.bincount(lab, minlength=n_labels).astype(np.int64)
        # One bincount over (defect, class) pairs; each pixel votes fg * cls_p for its class.
        n_ids = n_classes + 1
        pair = lab.astype(np.int64)
        pair *= n_ids
        pair += pixels.cls
        pix_vote = pixels.fg.astype(np.float64) * pixels.cls_p
        votes = np.bincount(pair, weights=pix_vote, minlength=n_labels * n_ids)
        votes = votes.reshape(n_labels, n_ids)
        winner = np.argmax(votes[:, 1:], axis=1) + 1  # ties: the lower class id
        total_vote = votes.sum(axis=1)
        purity = np.zeros(n_labels, dtype=np.float64)
        np.divide(
            votes[np.arange(n_labels), winner], total_vote, out=purity, where=total_vote > 0
        )
        fg_sum = np.bincount(lab, weights=pixels.fg, minlength=n_labels)
        return cls(
            area=area,
            x_min=x_min,
            y_min=y_min,
            x_max=x_max,
            y_max=y_max,
            x_sum=np.bincount(lab, weights=xs, minlength=n_labels),
            y_sum=np.bincount(lab, weights=ys, minlength=n_labels),
            winner=winner,
            confidence=fg_sum / np.maximum(area, 1) * purity,
        )

    def defects(
        self, labels: np.ndarray, names: tuple[str, ...], pixels_per_mm: float
    ) -> list[Defect]:
        """The defects of ``labels``, as plain Python values, numbered in order of their
        bbox's top-left corner (then label)."""
        pixels_per_mm2 = pixels_per_mm**2
        found: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
        for label in (int(v) for v in labels):
            n = int(self.area[label])
            x0, y0 = int(self.x_min[label]), int(self.y_min[label])
            fields = {
                "class_": names[int(self.winner[label]) - 1],
                "confidence": round(float(self.confidence[label]), 4),
                "bbox": (x0, y0, int(self.x_max[label]), int(self.y_max[label])),
                "area_px": n,
                "area_mm2": round(n / pixels_per_mm2, 6),
                "centroid": (
                    round(float(self.x_sum[label] / n), 2),
                    round(float(self.y_sum[label] / n), 2),
                ),
            }
            found.append(((y0, x0, label), fields))
        found.sort(key=lambda item: item[0])
        return [Defect(id=i, **fields) for i, (_, fields) in enumerate(found, start=1)]


def registered_difference(
    board: np.ndarray, golden: np.ndarray, threshold: int = DIFF_THRESHOLD
) -> np.ndarray:
    """Where a board differs from its golden board registered onto it: ``(H, W)`` bool.

    ``|board - golden| > threshold`` (binarised scans: a real change is a jump of about 255,
    JPEG ringing stays under 100), opened with a 3 x 3 cross to drop the one-pixel slivers
    that sub-pixel misalignment leaves along copper edges, which would otherwise chain
    neighbouring defects along a trace into one.
    """
    if board.shape != golden.shape:
        raise ValueError(
            f"board and golden board must have the same shape. Received: {board.shape} and "
            f"{golden.shape}"
        )
    changed = (cv2.absdiff(board, golden) > threshold).view(np.uint8)
    return cv2.morphologyEx(changed, cv2.MORPH_OPEN, _SLIVER_KERNEL).view(bool)


def summarize(
    defects: list[Defect], names: tuple[str, ...], n_pixels: int, config: PostprocessConfig
) -> Summary:
    """Totals, per-class counts and the verdict for a list of defects (of one board, or of one
    board of a panel: ``n_pixels`` is the area the ratio is taken over)."""
    area_px = sum(d.area_px for d in defects)
    area_mm2 = round(area_px / config.pixels_per_mm**2, 6)
    by_class = dict.fromkeys(names, 0)
    for d in defects:
        by_class[d.class_] += 1
    # The verdict uses the reported (rounded) area so that it always agrees with what a reader
    # of the summary can check by hand.
    if config.fail_rule == "count":
        failed = len(defects) >= config.fail_min_count
    else:
        failed = area_mm2 > config.fail_min_area_mm2
    return Summary(
        defect_count=len(defects),
        defect_area_px=area_px,
        defect_area_mm2=area_mm2,
        defect_area_ratio=round(area_px / n_pixels, 6),
        by_class=by_class,
        verdict="fail" if failed else "pass",
    )

