"""Post-processing: from per-pixel model output to defects, a summary and a verdict.

The model's softmax over ``1 + len(class_names)`` classes (0 = background) is reduced inside the
TensorFlow graph to two maps per image, and everything here works only on those two maps:

* ``fg``: ``1 - p_background`` (float32, H x W), the confidence that a pixel is any defect;
* ``cls``: ``1 + argmax`` over the foreground classes (uint8, H x W, values ``1..K``), the most
  likely defect class should the pixel be a defect.

A defect is one 8-connected component of defect pixels of one class. This module is pure numpy
and OpenCV: it must not import TensorFlow or ``model_defs`` (which imports TensorFlow), so the
class names are passed in by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

__all__ = [
    "Defect",
    "PostprocessConfig",
    "PostprocessResult",
    "Summary",
    "decode_rle",
    "encode_mask_png",
    "encode_rle",
    "postprocess",
    "split_probs",
]

# The class map is stored as uint8 (and written as an 8-bit PNG), so class ids must fit in it.
_MAX_CLASSES = 255


@dataclass(frozen=True)
class PostprocessConfig:
    """Rules that turn the two output maps into defects and a verdict.

    Attributes:
        threshold: Confidence cut on ``fg`` in ``[0, 1]``. A pixel is a defect pixel where
            ``fg >= threshold`` (compared in float32, so a value equal to the threshold counts)
            and ``fg > 0``: a pixel with no foreground probability at all is never a defect,
            so ``threshold=0`` does not turn the whole board into one defect.
        min_area_px: Components with fewer pixels than this are dropped (a process rule: the
            smallest defect worth reporting). ``0`` and ``1`` keep everything.
        pixels_per_mm: Image resolution, used to report areas in mm²; must be > 0.
        fail_rule: ``"count"`` fails a board on the number of defects, ``"area"`` on their
            total area in mm².
        fail_min_count: Count rule: the board fails when ``defect_count >= fail_min_count``.
        fail_min_area_mm2: Area rule: the board fails when ``defect_area_mm2 >
            fail_min_area_mm2`` (strictly greater, so ``0.0`` fails on any defect).
    """

    threshold: float
    min_area_px: int
    pixels_per_mm: float
    fail_rule: Literal["count", "area"] = "count"
    fail_min_count: int = 1
    fail_min_area_mm2: float = 0.0

    def __post_init__(self) -> None:
        # `not (a <= x <= b)` rather than `x < a or x > b` so that NaN is rejected too.
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]. Received: threshold={self.threshold!r}")
        if not _is_int(self.min_area_px) or self.min_area_px < 0:
            raise ValueError(
                f"min_area_px must be an integer >= 0. Received: min_area_px={self.min_area_px!r}"
            )
        if not (self.pixels_per_mm > 0 and math.isfinite(self.pixels_per_mm)):
            raise ValueError(
                "pixels_per_mm must be a finite number > 0. "
                f"Received: pixels_per_mm={self.pixels_per_mm!r}"
            )
        if self.fail_rule not in ("count", "area"):
            raise ValueError(
                f"fail_rule must be 'count' or 'area'. Received: fail_rule={self.fail_rule!r}"
            )
        # A minimum of 0 would fail every board, clean ones included: surely a mistake.
        if not _is_int(self.fail_min_count) or self.fail_min_count < 1:
            raise ValueError(
                "fail_min_count must be an integer >= 1. "
                f"Received: fail_min_count={self.fail_min_count!r}"
            )
        if not (self.fail_min_area_mm2 >= 0 and math.isfinite(self.fail_min_area_mm2)):
            raise ValueError(
                "fail_min_area_mm2 must be a finite number >= 0. "
                f"Received: fail_min_area_mm2={self.fail_min_area_mm2!r}"
            )


@dataclass(frozen=True)
class Defect:
    """One defect: one 8-connected component of one class.

    Attributes:
        id: 1-based, in order of the bbox's ``(y_min, x_min)`` (then class id).
        class_name: The defect class.
        confidence: Mean ``fg`` over the component's pixels, rounded to 4 decimals.
        bbox: ``(x_min, y_min, x_max, y_max)`` in input-image pixels; the max is EXCLUSIVE, so
            the width is ``x_max - x_min``.
        area_px: Number of pixels in the component.
        area_mm2: ``area_px / pixels_per_mm**2``, rounded to 6 decimals.
        centroid: ``(x, y)`` mean of the pixel coordinates, rounded to 2 decimals.
    """

    id: int
    class_name: str
    confidence: float
    bbox: tuple[int, int, int, int]
    area_px: int
    area_mm2: float
    centroid: tuple[float, float]


@dataclass(frozen=True)
class Summary:
    """Board-level totals and the verdict.

    Attributes:
        defect_count: Number of defects kept.
        defect_area_px: Total pixels of the defects kept.
        defect_area_mm2: ``defect_area_px / pixels_per_mm**2``, rounded to 6 decimals.
        defect_area_ratio: ``defect_area_px / (H * W)``, rounded to 6 decimals.
        by_class: Defect count per class, with EVERY class name present in ``class_names``
            order, 0 for classes with no defect, so clients see a fixed set of keys.
        verdict: ``"pass"`` or ``"fail"`` under the configured rule.
    """

    defect_count: int
    defect_area_px: int
    defect_area_mm2: float
    defect_area_ratio: float
    by_class: dict[str, int]
    verdict: Literal["pass", "fail"]


# eq=False: the generated __eq__ would compare numpy arrays, whose truth value is ambiguous.
@dataclass(frozen=True, eq=False)
class PostprocessResult:
    """Everything post-processing produces for one image.

    Attributes:
        class_map: ``(H, W)`` uint8; 0 = background, ``k`` = ``class_names[k - 1]``. Pixels of
            dropped components (below ``min_area_px``) are 0.
        defects: The defects kept, ordered by id.
        summary: Totals and verdict.
    """

    class_map: np.ndarray
    defects: list[Defect]
    summary: Summary


def split_probs(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduces a softmax to the two maps post-processing uses, exactly as the graph does.

    Args:
        probs: ``(H, W, K)`` or ``(N, H, W, K)`` class probabilities, channel 0 = background,
            ``K >= 2``.

    Returns:
        ``(fg, cls)``: ``fg = 1 - probs[..., 0]`` as float32 and ``cls = 1 + argmax(probs[...,
        1:])`` as uint8, both of shape ``probs.shape[:-1]``. Ties go to the lower class id, as
        with ``tf.argmax``.

    Raises:
        ValueError: If ``probs`` has the wrong rank or number of classes.
    """
    probs = np.asarray(probs)
    if probs.ndim not in (3, 4):
        raise ValueError(
            f"probs must be (H, W, K) or (N, H, W, K). Received: probs with shape {probs.shape}"
        )
    k = probs.shape[-1]
    if not 2 <= k <= _MAX_CLASSES + 1:
        raise ValueError(
            f"probs must have 2 to {_MAX_CLASSES + 1} classes (background first). "
            f"Received: probs with shape {probs.shape}"
        )
    # The graph works in float32; doing the subtraction in float32 too gives bit-equal maps.
    p = probs.astype(np.float32, copy=False)
    fg = np.float32(1.0) - p[..., 0]
    cls = (np.argmax(p[..., 1:], axis=-1) + 1).astype(np.uint8)
    return fg, cls


def postprocess(
    fg: np.ndarray,
    cls: np.ndarray,
    class_names: Sequence[str],
    config: PostprocessConfig,
) -> PostprocessResult:
    """Turns the two output maps of one image into defects, a summary and a verdict.

    Steps: threshold ``fg`` -> label each class's defect pixels into 8-connected components
    (``cv2.connectedComponentsWithStats``) -> drop components smaller than ``min_area_px`` ->
    describe each kept component -> totals and verdict.

    Args:
        fg: ``(H, W)`` float foreground confidence, ``1 - p_background``.
        cls: ``(H, W)`` integer class ids in ``0..len(class_names)``; 1-based, so
            ``cls == k`` means ``class_names[k - 1]``. Pixels with 0 are never defects.
        class_names: Names of the foreground classes, in model output order.
        config: The post-processing rules.

    Returns:
        The class map, the defects (ordered by the top-left of their bbox) and the summary.

    Raises:
        ValueError: If the maps' shapes or dtypes are wrong, ``cls`` holds an id with no class
            name, or ``class_names`` is empty or too long.
    """
    fg, cls, names = _check_inputs(fg, cls, class_names)
    height, width = fg.shape
    threshold = np.float32(config.threshold)
    # Compare in float32: a float64 threshold such as 0.7 is slightly above float32(0.7), which
    # would make a pixel whose confidence "equals" the threshold miss it.
    defect_px = (fg >= threshold) & (fg > 0)

    class_map = np.zeros((height, width), dtype=np.uint8)
    # (y_min, x_min, class_id, label) sort key, then the Defect fields without the id.
    found: list[tuple[tuple[int, int, int, int], dict[str, Any]]] = []
    pixels_per_mm2 = config.pixels_per_mm**2

    # Only label the classes that have defect pixels: each labelling is a full-image pass.
    class_px = np.bincount(cls[defect_px], minlength=len(names) + 1)
    for class_id in (int(k) + 1 for k in np.flatnonzero(class_px[1:])):
        mask = defect_px & (cls == class_id)
        n_labels, labels, stats, centroids = cv2.connectedComponentsWithStats(
            mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        # Per-label sum of fg in one pass over the class's pixels, for the mean confidence.
        labels_in_mask = labels[mask]
        fg_sums = np.bincount(
            labels_in_mask, weights=fg[mask].astype(np.float64), minlength=n_labels
        )
        keep = np.zeros(n_labels, dtype=bool)
        for label in range(1, n_labels):  # label 0 is the background of this class's mask
            x, y, w, h, area = (int(v) for v in stats[label])
            if area < config.min_area_px:
                continue
            keep[label] = True
            cx, cy = centroids[label]
            found.append(
                (
                    (y, x, class_id, label),
                    {
                        "class_name": names[class_id - 1],
                        "confidence": round(float(fg_sums[label] / area), 4),
                        "bbox": (x, y, x + w, y + h),
                        "area_px": area,
                        "area_mm2": round(area / pixels_per_mm2, 6),
                        "centroid": (round(float(cx), 2), round(float(cy), 2)),
                    },
                )
            )
        # Classes' masks are disjoint, so writing each class's kept pixels cannot clash.
        lut = np.where(keep, np.uint8(class_id), np.uint8(0)).astype(np.uint8)
        class_map[mask] = lut[labels_in_mask]

    found.sort(key=lambda item: item[0])
    defects = [Defect(id=i, **fields) for i, (_, fields) in enumerate(found, start=1)]
    summary = _summarize(defects, names, height * width, config)
    return PostprocessResult(class_map=class_map, defects=defects, summary=summary)


def _summarize(
    defects: list[Defect], names: tuple[str, ...], n_pixels: int, config: PostprocessConfig
) -> Summary:
    """Totals, per-class counts and the verdict for a list of defects."""
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


def encode_mask_png(class_map: np.ndarray) -> bytes:
    """Encodes a class map as an 8-bit single-channel PNG (Pillow mode ``"L"``).

    Args:
        class_map: ``(H, W)`` uint8 class ids, as in ``PostprocessResult.class_map``.

    Returns:
        The PNG file's bytes; pixel values are the class ids (not scaled for viewing).

    Raises:
        ValueError: If ``class_map`` is not a non-empty 2-D uint8 array, or encoding fails.
    """
    class_map = _check_class_map(class_map)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(class_map))
    if not ok:
        raise ValueError(f"could not encode a class map of shape {class_map.shape} as PNG")
    return buf.tobytes()


def encode_rle(class_map: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Encodes a class map as COCO-style uncompressed run-length encodings.

    The format is that of ``pycocotools`` uncompressed RLE: the mask is read in column-major
    (Fortran) order, and ``counts`` alternates runs of 0s and 1s, starting with 0s (so it starts
    with 0 when the first pixel is set).

    Args:
        class_map: ``(H, W)`` uint8 class ids (0 = background).
        class_names: Foreground class names, to key ``per_class`` by name. Without them the keys
            are the class ids as strings (``"1"``, ``"2"``...).

    Returns:
        ``{"size": [H, W], "counts": [...], "order": "F", "per_class": {key: {"size": [H, W],
        "counts": [...]}}}``: the top level encodes the any-defect mask ``class_map > 0``;
        ``per_class`` holds the mask ``class_map == k`` of each class present (absent classes
        are left out). Every entry decodes with ``decode_rle``.

    Raises:
        ValueError: If ``class_map`` is not a non-empty 2-D uint8 array, or holds an id with no
            name in ``class_names``.
    """
    class_map = _check_class_map(class_map)
    present = [int(k) for k in np.flatnonzero(np.bincount(class_map.ravel(), minlength=1)) if k]
    if class_names is not None:
        names = tuple(class_names)
        if present and present[-1] > len(names):
            raise ValueError(
                f"class_map holds class id {present[-1]} but only {len(names)} class names "
                f"were given. Received: class_names={names!r}"
            )
        keys = {k: names[k - 1] for k in present}
    else:
        keys = {k: str(k) for k in present}
    size = [int(class_map.shape[0]), int(class_map.shape[1])]
    return {
        "size": size,
        "counts": _rle_counts(class_map > 0),
        "order": "F",
        "per_class": {
            keys[k]: {"size": list(size), "counts": _rle_counts(class_map == k)} for k in present
        },
    }


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decodes one uncompressed RLE (the top level or a ``per_class`` entry of ``encode_rle``).

    Args:
        rle: A mapping with ``"size": [H, W]`` and ``"counts"``; ``"order"``, if present, must
            be ``"F"``. Other keys are ignored.

    Returns:
        The ``(H, W)`` uint8 binary mask, 1 where set.

    Raises:
        ValueError: If the size or counts are malformed or the counts do not sum to ``H * W``.
    """
    order = rle.get("order", "F")
    if order != "F":
        raise ValueError(f"RLE order must be 'F' (column-major). Received: order={order!r}")
    size = rle.get("size")
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(_is_int(v) and v >= 0 for v in size)
    ):
        raise ValueError(f"RLE size must be [H, W] with integers >= 0. Received: size={size!r}")
    counts = np.asarray(rle.get("counts", []), dtype=np.int64)
    height, width = int(size[0]), int(size[1])
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != height * width:
        raise ValueError(
            f"RLE counts must be integers >= 0 summing to H * W = {height * width}. "
            f"Received: counts summing to {int(counts.sum()) if counts.ndim == 1 else '?'}"
        )
    # Runs alternate 0, 1, 0, 1... by definition of the format.
    values = (np.arange(counts.size) % 2).astype(np.uint8)
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape((height, width), order="F"))


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a boolean mask, column-major, starting with 0s."""
    flat = mask.ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(edges).tolist()
    # The format's first run is always of 0s; an empty run says the mask starts set.
    if flat[0]:
        counts.insert(0, 0)
    return [int(c) for c in counts]


def _check_inputs(
    fg: np.ndarray, cls: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Validates postprocess' inputs; returns them as arrays and a tuple of names."""
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
    lo, hi = int(cls.min()), int(cls.max())
    if lo < 0 or hi > len(names):
        raise ValueError(
            f"cls values must be in [0, {len(names)}] (one id per class name). "
            f"Received: cls values in [{lo}, {hi}]"
        )
    # uint8 for cv2's mask and cheap bincounts; fg is kept as given (float32 from the graph).
    return fg, cls.astype(np.uint8, copy=False), names


def _check_class_map(class_map: np.ndarray) -> np.ndarray:
    """Validates a class map: non-empty, 2-D, uint8."""
    class_map = np.asarray(class_map)
    if class_map.ndim != 2 or class_map.size == 0 or class_map.dtype != np.uint8:
        raise ValueError(
            "class_map must be a non-empty (H, W) uint8 array. "
            f"Received: shape {class_map.shape}, dtype {class_map.dtype}"
        )
    return class_map


def _is_int(value: object) -> bool:
    """True for Python and numpy integers, but not bools (which are ints in Python)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
