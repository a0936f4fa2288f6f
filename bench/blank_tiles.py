"""Single-image gating on synthetic panels: how many tiles are blank, what finding them costs,
and what the shipped single model says on them.

    python -m bench.blank_tiles [--sizes 640 2000 8000] [--check 8]

For each size, a synthetic panel (``training.synth``, 10 defects where they fit) is planned
into the service's 640 px tiles; :func:`app.inference.gating.blank_tiles` marks those with no
copper edge. Up to ``--check`` blank tiles then go through the shipped single model (the full
path's tile, float32): the pixels at or above its card's threshold there are what skipping them
could lose.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Prints one JSON line per size."""
    from app.core.config import DEFAULT_WEIGHTS
    from app.inference.gating import blank_tiles
    from app.inference.inferencer import Inferencer
    from app.inference.tiling import extract_tiles, plan_tiles
    from training.synth import make_board

    p = argparse.ArgumentParser(prog="python -m bench.blank_tiles", description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[640, 2000, 8000])
    p.add_argument("--check", type=int, default=8, help="blank tiles run through the model")
    args = p.parse_args(argv)
    inf = Inferencer.load(DEFAULT_WEIGHTS, device="cpu", precision="float32", max_batch_size=1)
    cut = inf.card.thresholds.confidence
    for size in args.sizes:
        board = make_board(seed=40 + size, size=size, n_defects=10 if size >= 1000 else 3).image
        tiles = plan_tiles(size, size, inf.tile, inf.tile_overlap)
        started = time.perf_counter()
        gate = blank_tiles(board, tiles, inf.tile)
        search_ms = (time.perf_counter() - started) * 1e3
        flagged = 0
        for tile in gate.skipped[: args.check]:
            fg = inf.forward(extract_tiles(board, [tile], inf.tile))[0][0]
            y0, y1, x0, x1 = tile.core_in_tile
            flagged += int(np.count_nonzero(fg[y0:y1, x0:x1] >= cut))
        print(json.dumps({
            "size": size, "tiles": len(tiles), "blank": len(gate.skipped),
            "blank_share": round(len(gate.skipped) / len(tiles), 3),
            "search_ms": round(search_ms, 1),
            "blank_tiles_checked": min(args.check, len(gate.skipped)),
            "pixels_flagged_in_them": flagged,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
