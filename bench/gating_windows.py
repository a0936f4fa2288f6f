"""Which window gating should compute: the full path's 640 px tiles, or smaller windows.

    python -m bench.gating_windows

With the shipped pair model, in float32, in one process:

1. its reach: how far from a changed input pixel the output changes (a 6 x 6 px copper blob
   dropped on the board of a defect-free 640 px pair; the largest distance from the blob at
   which P(defect) moves by more than 1e-6, 1e-4 and 0.01);
2. for windows of ``W`` px (multiples of the model's stride, cut from the middle of a tile so
   that they sit on its stride grid): the time of one forward pass, and how far their P(defect)
   is from the full tile's over the window's inner part, with ``m`` px of context kept on each
   side, on a synthetic board with defects;
3. what each choice would compute on an 8000 px panel with 10 defects: the tiles of the full
   path that gating keeps against the ``W`` windows (on a grid of ``W - 2m`` px cores) that
   cover the same candidates.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
from pathlib import Path

import numpy as np


def main() -> int:
    """Prints one JSON line with the three measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import cv2

    from app.inference.forward import timed_calls
    from app.inference.gating import CELL_PX, MARGIN_PX, candidate_cells, gate_tiles
    from app.inference.inferencer import Inferencer
    from app.inference.tiling import plan_tiles
    from training.synth import make_board

    weights = Path(__file__).resolve().parents[1] / "weights" / "pcb_pair_unet.keras"
    inf = Inferencer.load(weights, device="cpu", precision="float32", max_batch_size=1)
    tile = inf.tile
    stride = inf.card.input.multiple_of

    def fg(board: np.ndarray, golden: np.ndarray) -> np.ndarray:
        x = np.stack([board, golden], axis=-1)[None].astype(np.float32)
        probs = np.asarray(inf.model([x[..., :1], x[..., 1:]], training=False))
        return 1.0 - probs[0, ..., 0]

    # 1. reach
    clean = make_board(seed=31, size=tile, n_defects=0).template
    base = fg(clean, clean)
    blob = clean.copy()
    c = tile // 2
    blob[c - 3 : c + 3, c - 3 : c + 3] = 10 if clean[c, c] > 128 else 245
    delta = np.abs(fg(blob, clean) - base)
    yy, xx = np.mgrid[:tile, :tile]
    dist = np.maximum(np.abs(yy - c + 0.5), np.abs(xx - c + 0.5)) - 3
    reach = {f"{t:g}": int(dist[delta > t].max(initial=0)) for t in (1e-6, 1e-4, 1e-2)}

    # 2. windows
    synth = make_board(seed=32, size=tile, n_defects=6)
    full = fg(synth.image, synth.template)
    windows = []
    for w in (256, 320, 384, 448, tile):
        o = (tile - w) // 2 // stride * stride
        part = fg(synth.image[o : o + w, o : o + w], synth.template[o : o + w, o : o + w])
        # Every size through the same call (eager Keras), so the times compare.
        x = np.zeros((1, w, w, 1), np.float32)
        seconds = statistics.median(timed_calls(functools.partial(inf.model, [x, x]), 3))
        diffs = {}
        for m in (32, 64, 96, 128):
            if w - 2 * m < stride:
                continue
            inner = np.s_[o + m : o + w - m, o + m : o + w - m]
            d = np.abs(part[m : w - m, m : w - m] - full[inner])
            diffs[m] = {"max": float(d.max()),
                        "flips_at_0.5": int(np.count_nonzero(
                            (part[m : w - m, m : w - m] >= 0.5) != (full[inner] >= 0.5)))}
        windows.append({"window": w, "forward_s": round(seconds, 3),
                        "vs_full_tile_by_context_px": diffs})

    # 3. what each would compute on an 8000 px panel with 10 defects
    panel = make_board(seed=30, size=8000, n_defects=10)
    cells = candidate_cells(panel.image, panel.template)
    tiles = gate_tiles(plan_tiles(8000, 8000, tile, tile // 10), cells)
    per_tile = next(r["forward_s"] for r in windows if r["window"] == tile)
    reach_cells = -(-MARGIN_PX // CELL_PX)
    grown = cv2.dilate(cells.astype(np.uint8), np.ones((2 * reach_cells + 1,) * 2, np.uint8))
    cost = {"tiles_640": {"count": len(tiles.computed),
                          "forward_s": round(len(tiles.computed) * per_tile, 2)}}
    for r in windows:
        w = r["window"]
        for m in (64, 128):
            core = w - 2 * m
            if core < stride or w == tile:
                continue
            step = core // CELL_PX
            rows, cols = -(-grown.shape[0] // step), -(-grown.shape[1] // step)
            padded = np.zeros((rows * step, cols * step), np.uint8)
            padded[: grown.shape[0], : grown.shape[1]] = grown
            count = int((padded.reshape(rows, step, cols, step).max(axis=(1, 3)) > 0).sum())
            cost[f"window_{w}_context_{m}"] = {"count": count,
                                               "forward_s": round(count * r["forward_s"], 2)}
    print(json.dumps({"stride": stride, "reach_px": reach, "windows": windows,
                      "panel_8000_10_defects": cost}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
