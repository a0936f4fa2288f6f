"""Per-board model outputs, computed once and cached, so post-processing can be swept cheaply.

Evaluation's cost is the forward pass (seconds a board on a CPU); post-processing is
milliseconds. :func:`board_maps` runs one board through the service's own ``Inferencer`` up to
the stitched maps (registration, tiling, forward, stitching) and stops there;
:func:`cached_board_maps` keeps them as one compressed ``.npz`` a board under a cache folder
(keyed by the weights' sha256 and the board's key), so every operating point, merge rule and
protocol afterwards reads the same maps. The cache belongs in ``runs/`` or ``/tmp``: it is
derived from dataset images and must not be committed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from app.inference.inferencer import Inferencer
    from training.data import Sample


@dataclasses.dataclass(frozen=True, eq=False)
class BoardMaps:
    """What the model made of one board, before post-processing.

    ``fg_q`` is P(defect) x ``FG_SCALE`` as the stitcher keeps it (uint16), ``cls`` the most
    likely defect class (uint8, 1-based), ``cls_p`` P(``cls`` | defect) (float16). ``warped``:
    the golden board registered onto the board (pair model), else ``None``. ``alignment_score``
    is set (and the maps are ``None``) when registration refused the pair, which the service
    answers with a 422: nothing is reported for that board.
    """

    fg_q: np.ndarray | None
    cls: np.ndarray | None
    cls_p: np.ndarray | None
    warped: np.ndarray | None = None
    alignment_score: float | None = None


def board_maps(inferencer: Inferencer, sample: Sample) -> BoardMaps:
    """Runs one board through the inferencer up to its stitched maps.

    Raises:
        OSError: An image cannot be read (or the pair model's template is missing).
    """
    from app.inference.registration import AlignmentError

    image = cv2.imread(str(sample.test_path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise OSError(f"cannot read image {sample.test_path}")
    reference = None
    if inferencer.pair:
        reference = cv2.imread(str(sample.template_path), cv2.IMREAD_GRAYSCALE)
        if reference is None:
            raise OSError(f"the pair model needs templates: cannot read {sample.template_path}")
    try:
        board = inferencer._begin(image, reference)
    except AlignmentError as exc:
        return BoardMaps(None, None, None, None, float(exc.score))
    for chunk, arrays in inferencer.tile_chunks(image, board.tiles, board.warped):
        board.stitch(chunk, inferencer.forward(arrays))
    stitcher = board.stitcher
    return BoardMaps(stitcher.fg_quantized.copy(), stitcher.cls.copy(), stitcher.cls_p.copy(),
                     board.warped)


def cache_path(cache_dir: Path, weights_sha256: str, key: str) -> Path:
    """Where one board's maps are cached: one folder per weights file."""
    return Path(cache_dir) / weights_sha256[:16] / f"{key}.npz"


def load_board_maps(path: Path) -> BoardMaps:
    """Reads maps written by :func:`save_board_maps`."""
    with np.load(path, allow_pickle=False) as data:
        if "alignment_score" in data:
            return BoardMaps(None, None, None, None, float(data["alignment_score"]))
        warped = data["warped"] if "warped" in data else None
        return BoardMaps(data["fg_q"], data["cls"], data["cls_p"], warped)


def save_board_maps(path: Path, maps: BoardMaps) -> None:
    """Writes one board's maps (compressed: most of a board is background)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    if maps.alignment_score is not None:
        arrays["alignment_score"] = np.float64(maps.alignment_score)
    else:
        assert maps.fg_q is not None and maps.cls is not None and maps.cls_p is not None
        arrays.update(fg_q=maps.fg_q, cls=maps.cls, cls_p=maps.cls_p)
        if maps.warped is not None:
            arrays["warped"] = maps.warped
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)  # whole or absent: an interrupted run leaves no half-written board


def cached_board_maps(
    inferencer: Inferencer, sample: Sample, cache_dir: Path | None
) -> BoardMaps:
    """:func:`board_maps`, read from ``cache_dir`` when there, written there otherwise."""
    if cache_dir is None:
        return board_maps(inferencer, sample)
    path = cache_path(cache_dir, inferencer.weights_sha256, sample.key)
    if path.is_file():
        return load_board_maps(path)
    maps = board_maps(inferencer, sample)
    save_board_maps(path, maps)
    return maps


def main(argv: list[str] | None = None) -> int:
    """``python -m training.maps``: fills the cache for the validation boards of a model."""
    import argparse

    from app.inference.inferencer import Inferencer
    from training.data import VAL_GROUPS, read_split, split_by_groups

    p = argparse.ArgumentParser(prog="python -m training.maps", description=__doc__)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--cache", required=True, type=Path)
    p.add_argument("--val-groups", default=",".join(VAL_GROUPS))
    args = p.parse_args(argv)
    inferencer = Inferencer.load(args.weights)
    _, samples = split_by_groups(read_split(args.data), args.val_groups.split(","))
    for i, sample in enumerate(samples):
        cached_board_maps(inferencer, sample, args.cache)
        print(f"{i + 1}/{len(samples)} {sample.key}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
