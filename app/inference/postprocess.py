"""Post-processing: from per-pixel model output to defects, a summary and a verdict.

The model's softmax over ``1 + len(class_names)`` classes (0 = background) is reduced inside the
TensorFlow graph to three maps per image, and everything here works only on those maps:

* ``fg``: ``1 - p_background`` (float32, H x W), P(defect): the confidence that a pixel is any
  defect;
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

# The types live in their own module; imported from here too, beside the function that makes
# them, as every caller always has.
from app.inference.defects import Defect, PostprocessConfig, PostprocessResult, Summary

__all__ = [
    "Defect",
    "DefectPixels",
    "PostprocessConfig",
    "PostprocessResult",
    "Summary",
    "describe_defects",
    "gather_defect_pixels",
    "postprocess",
    "registered_difference",
    "summarize",
]

#: ``|board - reference|`` above this is a change of the copper (see registered_difference).
DIFF_THRESHOLD = 100
_SLIVER_KERNEL = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))

# The class map is stored as uint8 (and written as an 8-bit PNG), so class ids must fit in it.
_MAX_CLASSES = 255


def postprocess(
    fg: np.ndarray,
    cls: np.ndarray,
    class_names: Sequence[str],
    config: PostprocessConfig,
    cls_p: np.ndarray | None = None,
) -> PostprocessResult:
    """Turns the output maps of one image into defects, a summary and a verdict.

    Steps, all vectorised (an 8000 x 8000 board is one pass of each):

    1. Defect pixels: ``fg >= threshold`` (and ``fg > 0``, ``cls > 0``), whatever their class.
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
        fg: ``(H, W)`` float foreground confidence, ``1 - p_background`` = P(defect).
        cls: ``(H, W)`` integer class ids in ``0..len(class_names)``; 1-based, so
            ``cls == k`` means ``class_names[k - 1]``. Pixels with 0 are never defects.
        class_names: Names of the foreground classes, in model output order.
        config: The post-processing rules.
        cls_p: ``(H, W)`` float P(``cls`` | defect), in ``(0, 1]`` on defect pixels (float16
            from the graph). ``None``: 1 everywhere, i.e. each pixel votes its ``fg`` for its
            ``cls``.

    Returns:
        The class map, the defects (ordered by the top-left of their bbox) and the summary.

    Raises:
        ValueError: If the maps' shapes or dtypes are wrong, ``cls`` holds an id with no class
            name, ``cls_p`` is outside ``(0, 1]`` on a defect pixel, or ``class_names`` is
            empty or too long.
    """
    fg, cls, cls_p, names = _check_inputs(fg, cls, cls_p, class_names)
    return describe_defects(gather_defect_pixels(fg, cls, cls_p, config.threshold), names, config)


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
    #: ``cls_p`` (``None``: 1 everywhere).
    fg: np.ndarray
    cls: np.ndarray
    cls_p: np.ndarray | None


def gather_defect_pixels(
    fg: np.ndarray,
    cls: np.ndarray,
    cls_p: np.ndarray | None,
    threshold: float,
    fg_scale: int | None = None,
) -> DefectPixels:
    """Step 1 of :func:`postprocess`: the defect pixels and the maps' values there.

    The maps must have passed :func:`_check_inputs` (as in :func:`postprocess`) or come from
    the inferencer's stitcher. ``fg_scale``: ``fg`` is integer, P(defect) x ``fg_scale`` (the
    stitcher's :attr:`~app.inference.tiling.Stitcher.fg_quantized`); its values at the defect
    pixels come back as float32 probabilities.

    Raises:
        ValueError: ``cls_p`` is outside ``(0, 1]`` on a defect pixel.
    """
    # Compare in float32: a float64 threshold such as 0.7 is slightly above float32(0.7), which
    # would make a pixel whose confidence "equals" the threshold miss it. ``fg > 0`` is folded
    # into the threshold (the smallest positive float32 at the least), and ``cls > 0`` is
    # and-ed in place: a large board holds one boolean map here, not two (64 MB at 8000 px).
    if fg_scale is None:
        cut = max(np.float32(threshold), np.nextafter(np.float32(0), np.float32(1)))
        mask = np.greater_equal(fg, cut)
    else:
        # The threshold quantized as the values were: rounding keeps order, so every pixel at
        # or above the threshold is kept (one whose P(defect) "equals" it included); a pixel
        # within half a step (7.6e-6) below it may join them. q >= 1 stands for fg > 0.
        mask = np.greater_equal(fg, max(1, round(float(np.float32(threshold)) * fg_scale)))
    np.logical_and(mask, cls, out=mask)
    pix_p = None
    if cls_p is not None:
        pix_p = cls_p[mask]
        if pix_p.size:
            lo, hi = float(pix_p.min()), float(pix_p.max())
            if not (lo > 0 and hi <= 1):  # written so that NaN fails too
                raise ValueError(
                    "cls_p must be in (0, 1] on defect pixels (it is P(cls | defect) >= 1/K). "
                    f"Received: cls_p values in [{lo}, {hi}] on defect pixels"
                )
    pix_fg = fg[mask]
    if fg_scale is not None:
        pix_fg = pix_fg.astype(np.float32) / np.float32(fg_scale)
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
    defect_px = pixels.mask
    height, width = defect_px.shape
    if not pixels.fg.size:
        summary = summarize([], names, height * width, config)
        return PostprocessResult(
            class_map=np.zeros((height, width), dtype=np.uint8), defects=[], summary=summary
        )

    # Defects: the components of the dilated mask, each keeping only its ORIGINAL defect pixels
    # (the dilation decides which fragments belong together and adds no pixel to any defect).
    # One full-size label map at a time: the labels are gathered at the defect pixels (few)
    # and everything per defect below is computed from those, so no fragment labelling pass
    # is needed (area, bbox and centroid of a defect are those of its pixels).
    mask: np.ndarray = defect_px.view(np.uint8)
    if link is not None and link.shape != mask.shape:
        raise ValueError(
            f"link must have the shape of the maps {mask.shape}. Received: {link.shape}"
        )
    if config.merge_distance_px or link is not None:
        grown = mask
        if config.merge_distance_px:
            # An (m+1) x (m+1) square anchored at its top-left corner grows every pixel by m up
            # and left: two pixels' squares touch (8-connected) exactly when their Chebyshev
            # distance is <= m + 1, i.e. when at most m background pixels lie between them.
            side = config.merge_distance_px + 1
            grown = cv2.dilate(mask, np.ones((side, side), dtype=np.uint8), anchor=(0, 0))
        if link is not None:
            # Components of the difference that touch no fragment label no defect pixel: they
            # only add labels that nothing reads.
            grown = np.bitwise_or(grown, link.astype(bool, copy=False).view(np.uint8))
        n_labels, labels = cv2.connectedComponents(grown, connectivity=8, ltype=cv2.CV_32S)
        del grown
    else:
        n_labels, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    lab = labels[defect_px]
    del labels
    ys, xs = np.nonzero(defect_px)  # row-major, like every boolean gather here

    # Area, bbox and centroid of each defect from its pixels' coordinates.
    area = np.bincount(lab, minlength=n_labels).astype(np.int64)
    x_min = np.full(n_labels, width, dtype=np.int64)
    y_min = np.full(n_labels, height, dtype=np.int64)
    x_max = np.zeros(n_labels, dtype=np.int64)
    y_max = np.zeros(n_labels, dtype=np.int64)
    np.minimum.at(x_min, lab, xs)
    np.minimum.at(y_min, lab, ys)
    np.maximum.at(x_max, lab, xs + 1)
    np.maximum.at(y_max, lab, ys + 1)
    x_sum = np.bincount(lab, weights=xs, minlength=n_labels)
    y_sum = np.bincount(lab, weights=ys, minlength=n_labels)
    del xs, ys

    # Mean fg and the class vote of each defect, from its pixels.
    pix_fg = pixels.fg
    pix_vote = pix_fg if pixels.cls_p is None else pix_fg.astype(np.float64) * pixels.cls_p
    fg_sum = np.bincount(lab, weights=pix_fg, minlength=n_labels)
    # One bincount over (defect, class) pairs.
    n_ids = len(names) + 1
    pair = lab.astype(np.int64)
    pair *= n_ids
    pair += pixels.cls
    votes = np.bincount(pair, weights=pix_vote, minlength=n_labels * n_ids)
    del pair, pix_vote
    votes = votes.reshape(n_labels, n_ids)
    winner = np.argmax(votes[:, 1:], axis=1) + 1  # ties: the lower class id
    total_vote = votes.sum(axis=1)
    purity = np.zeros(n_labels, dtype=np.float64)
    np.divide(votes[np.arange(n_labels), winner], total_vote, out=purity, where=total_vote > 0)

    confidence = fg_sum / np.maximum(area, 1) * purity
    # Compared on the rounded value that is reported, so a defect shown with confidence c
    # survives min_confidence=c. A label with no defect pixel (a component of ``link`` that
    # touches no fragment) is no defect, whatever min_area_px says.
    keep = (area > 0) & (area >= config.min_area_px)
    keep &= np.round(confidence, 4) >= config.min_confidence
    keep[0] = False
    lut = np.where(keep, winner, 0).astype(np.uint8)
    class_map = np.zeros((height, width), dtype=np.uint8)
    class_map[defect_px] = lut[lab]

    pixels_per_mm2 = config.pixels_per_mm**2
    # (y_min, x_min, label) sort key, then the Defect fields without the id.
    found: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
    for label in (int(v) for v in np.flatnonzero(keep)):
        n = int(area[label])
        x0, y0 = int(x_min[label]), int(y_min[label])
        found.append(
            (
                (y0, x0, label),
                {
                    "class_name": names[int(winner[label]) - 1],
                    "confidence": round(float(confidence[label]), 4),
                    "bbox": (x0, y0, int(x_max[label]), int(y_max[label])),
                    "area_px": n,
                    "area_mm2": round(n / pixels_per_mm2, 6),
                    "centroid": (
                        round(float(x_sum[label] / n), 2),
                        round(float(y_sum[label] / n), 2),
                    ),
                },
            )
        )

    found.sort(key=lambda item: item[0])
    defects = [Defect(id=i, **fields) for i, (_, fields) in enumerate(found, start=1)]
    summary = summarize(defects, names, height * width, config)
    return PostprocessResult(class_map=class_map, defects=defects, summary=summary)


def registered_difference(
    board: np.ndarray, reference: np.ndarray, threshold: int = DIFF_THRESHOLD
) -> np.ndarray:
    """Where a board differs from its golden board registered onto it: ``(H, W)`` bool.

    ``|board - reference| > threshold`` (binarised scans: a real change is a jump of about 255,
    JPEG ringing stays under 100), opened with a 3 x 3 cross to drop the one-pixel slivers
    that sub-pixel misalignment leaves along copper edges, which would otherwise chain
    neighbouring defects along a trace into one.
    """
    if board.shape != reference.shape:
        raise ValueError(
            f"board and reference must have the same shape. Received: {board.shape} and "
            f"{reference.shape}"
        )
    changed = (cv2.absdiff(board, reference) > threshold).view(np.uint8)
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
        by_class[d.class_name] += 1
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


def _check_inputs(
    fg: np.ndarray, cls: np.ndarray, cls_p: np.ndarray | None, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Validates postprocess' inputs; returns them as arrays and a tuple of names.

    ``cls_p``'s values are checked later, on the defect pixels only (elsewhere they are unused).
    """
    names = tuple(class_names)
    if not 1 <= len(names) <= _MAX_CLASSES or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"class_names must be 1 to {_MAX_CLASSES} strings. Received: class_names={names!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique. Received: class_names={names!r}")
    fg = np.asarray(fg)
    cls = np.asarray(cls)
    if fg.ndim != 2 or fg.size == 0:
        raise ValueError(f"fg must be a non-empty (H, W) array. Received: shape {fg.shape}")
    if cls.shape != fg.shape:
        raise ValueError(
            f"cls must have the shape of fg {fg.shape}. Received: cls with shape {cls.shape}"
        )
    if not np.issubdtype(fg.dtype, np.floating):
        raise ValueError(f"fg must be a float array. Received: dtype {fg.dtype}")
    if not np.issubdtype(cls.dtype, np.integer):
        raise ValueError(f"cls must be an integer array. Received: dtype {cls.dtype}")
    if cls_p is not None:
        cls_p = np.asarray(cls_p)
        if cls_p.shape != fg.shape:
            raise ValueError(
                f"cls_p must have the shape of fg {fg.shape}. "
                f"Received: cls_p with shape {cls_p.shape}"
            )
        if not np.issubdtype(cls_p.dtype, np.floating):
            raise ValueError(f"cls_p must be a float array. Received: dtype {cls_p.dtype}")
    lo, hi = int(cls.min()), int(cls.max())
    if lo < 0 or hi > len(names):
        raise ValueError(
            f"cls values must be in [0, {len(names)}] (one id per class name). "
            f"Received: cls values in [{lo}, {hi}]"
        )
    # uint8 for cv2's mask and cheap bincounts; fg is kept as given (float32 from the graph).
    return fg, cls.astype(np.uint8, copy=False), cls_p, names
