"""Encodings of a class map for the API: an 8-bit PNG, and COCO-style run-length (RLE).

Pure numpy and OpenCV, like :mod:`app.inference.postprocess`, whose class maps these encode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from app.inference.defects import is_int

__all__ = ["decode_rle", "encode_mask_png", "encode_rle"]


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
        or not all(is_int(v) and v >= 0 for v in size)
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


def _check_class_map(class_map: np.ndarray) -> np.ndarray:
    """Validates a class map: non-empty, 2-D, uint8."""
    class_map = np.asarray(class_map)
    if class_map.ndim != 2 or class_map.size == 0 or class_map.dtype != np.uint8:
        raise ValueError(
            "class_map must be a non-empty (H, W) uint8 array. "
            f"Received: shape {class_map.shape}, dtype {class_map.dtype}"
        )
    return class_map

