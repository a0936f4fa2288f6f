"""A compact, TensorFlow-free pack of registered DeepPCB pairs for training anywhere.

``python -m training.pack --data DIR --out runs/pack/train.npz --part train`` reads the pairs,
registers each template to its board, derives the masks, and writes one ``.npz``. ``--groups``
and ``--exclude-groups`` choose board groups (designs) by name instead of by part, so that each
process of a GPU burst trains on its own set (all seven groups; all but one held out):

* ``keys`` (N,) the DeepPCB keys, ``groups`` (N,) their board groups;
* ``boards``, ``references``: the images, **binarised and bit-packed** (DeepPCB's scans are
  binarised before JPEG compression, so one bit per pixel keeps what matters, and 800 pairs
  fit in a few MB, small enough to carry to a GPU machine beside the code). Training puts
  JPEG noise back as an augmentation (:mod:`training.sampler`);
* ``masks`` (N, H, W) uint8 class masks; ``boxes`` (N, B, 5) int32 ``x1 y1 x2 y2 type``
  padded with zeros, ``counts`` (N,).

The pack is a training artefact made from the dataset: it lives under ``runs/`` (ignored by
git) and is never committed.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

#: Gray level that splits copper from substrate when binarising.
BINARY_THRESHOLD = 128


@dataclasses.dataclass(frozen=True)
class PairPack:
    """Registered pairs in memory: unpacked images (0 or 255), masks and boxes."""

    keys: list[str]
    groups: list[str]
    boards: np.ndarray  # (N, H, W) uint8
    references: np.ndarray  # (N, H, W) uint8, registered to the boards
    masks: np.ndarray  # (N, H, W) uint8
    boxes: np.ndarray  # (N, B, 5) int32
    counts: np.ndarray  # (N,) int32

    def select(self, indices: list[int] | np.ndarray) -> PairPack:
        """The pack restricted to ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        return PairPack(
            [self.keys[i] for i in idx], [self.groups[i] for i in idx], self.boards[idx],
            self.references[idx], self.masks[idx], self.boxes[idx], self.counts[idx],
        )


def _load_one(sample: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from training.data import derive_mask, parse_annotations, read_pair

    test, ref = read_pair(sample)  # type: ignore[arg-type]
    boxes = parse_annotations(sample.annotation_path)  # type: ignore[attr-defined]
    mask = derive_mask(test, ref, boxes)
    arr = np.array([[b.x1, b.y1, b.x2, b.y2, b.label] for b in boxes], dtype=np.int32)
    return test, ref, mask, arr.reshape(-1, 5)


def _bits(images: np.ndarray) -> np.ndarray:
    return np.packbits(images >= BINARY_THRESHOLD, axis=-1)


def select_groups(keys: Sequence[str], groups: Sequence[str] = (),
                  exclude_groups: Sequence[str] = ()) -> list[int]:
    """Indices of the ``keys`` whose board group is in ``groups`` (all when empty) and not in
    ``exclude_groups``.

    Raises:
        ValueError: A named group that no key belongs to (a typo would silently train on
            another set than meant).
    """
    from training.data import group_of

    present = {group_of(k) for k in keys}
    unknown = sorted((set(groups) | set(exclude_groups)) - present)
    if unknown:
        raise ValueError(
            f"board groups {unknown} are not in the data; expected some of {sorted(present)}"
        )
    keep = set(groups) or present
    return [i for i, k in enumerate(keys)
            if group_of(k) in keep and group_of(k) not in set(exclude_groups)]


def build_pack(data: Path, part: str, workers: int = 2, groups: Sequence[str] = (),
               exclude_groups: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Reads, registers and packs the pairs of ``part`` (``train``, ``val`` or ``all``),
    restricted to ``groups`` (when given) minus ``exclude_groups``."""
    from training.data import group_of, read_split, split_by_groups

    samples = read_split(data)
    if part != "all":
        train, val = split_by_groups(samples)
        samples = train if part == "train" else val
    if groups or exclude_groups:
        samples = [samples[i] for i in
                   select_groups([s.key for s in samples], groups, exclude_groups)]
    if not samples:
        raise ValueError(
            f"no pairs in part {part!r} of {data} (groups {list(groups) or 'any'}, "
            f"excluding {list(exclude_groups)})"
        )
    with ProcessPoolExecutor(workers) as pool:
        loaded = list(pool.map(_load_one, samples, chunksize=8))
    max_boxes = max(1, max(len(x[3]) for x in loaded))
    boxes = np.zeros((len(loaded), max_boxes, 5), dtype=np.int32)
    for i, x in enumerate(loaded):
        boxes[i, : len(x[3])] = x[3]
    return {
        "keys": np.array([s.key for s in samples]),
        "groups": np.array([group_of(s.key) for s in samples]),
        "boards": _bits(np.stack([x[0] for x in loaded])),
        "references": _bits(np.stack([x[1] for x in loaded])),
        "masks": np.stack([x[2] for x in loaded]),
        "boxes": boxes,
        "counts": np.array([len(x[3]) for x in loaded], dtype=np.int32),
        "width": np.array(loaded[0][0].shape[1]),
    }


def load_pack(path: Path | str) -> PairPack:
    """Loads a pack written by :func:`build_pack` (images unpacked to 0/255 uint8)."""
    with np.load(path, allow_pickle=False) as data:
        width = int(data["width"])

        def unpack(bits: np.ndarray) -> np.ndarray:
            return (np.unpackbits(bits, axis=-1, count=width) * 255).astype(np.uint8)

        return PairPack(
            [str(k) for k in data["keys"]], [str(g) for g in data["groups"]],
            unpack(data["boards"]), unpack(data["references"]), data["masks"],
            data["boxes"], data["counts"],
        )


def _group_list(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    bad = [g for g in groups if not (len(g) == 5 and g.isascii() and g.isdigit())]
    if bad:
        raise argparse.ArgumentTypeError(
            f"board groups are five digits, comma-separated; received {text!r}"
        )
    return groups


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m training.pack --data DIR --out FILE [--part train]``."""
    p = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__)
    p.add_argument("--data", required=True, type=Path, help="DeepPCB-format folder")
    p.add_argument("--out", required=True, type=Path, help="the .npz to write")
    p.add_argument("--part", choices=("train", "val", "all"), default="train",
                   help="which board groups (validation groups: training.data.VAL_GROUPS)")
    p.add_argument("--groups", type=_group_list, default=(),
                   help="comma-separated board groups to keep, e.g. 00041,13000 (default: all "
                        "of --part)")
    p.add_argument("--exclude-groups", type=_group_list, default=(),
                   help="comma-separated board groups to leave out, e.g. 44000")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    try:
        arrays = build_pack(args.data, args.part, args.workers, args.groups,
                            args.exclude_groups)
    except ValueError as exc:
        p.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)  # type: ignore[arg-type]
    groups = sorted(set(arrays["groups"].tolist()))
    print(f"{args.out}: {len(arrays['keys'])} pairs of groups {groups}, "
          f"{args.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
