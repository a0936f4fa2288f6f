"""Registration of a golden board on large boards: accuracy, time and memory.

    python -m bench.registration --sizes 2000 4000 8000

For each size, a synthetic board (``training.synth``) and its golden board (the generator's
``template``) moved by known translations and rotations; ``register`` must recover them.
Prints one JSON line per size: the largest translation and rotation error over the motions,
the median seconds a board, the peak resident memory above the two images
(``/proc/self/clear_refs`` resets the peak after the boards are drawn), and the median seconds
to refuse a wrong golden board (another design, and the right one turned by 90 degrees).
Boards over ``REFINE_MAX_PIXELS`` are refined at full resolution on a few patches
(``refined_on``: ``patches``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from app.inference.registration import REFINE_MAX_PIXELS, AlignmentError, register
from bench.common import memory_mb
from training.synth import make_board, moved

#: ``(dx, dy, degrees)``: the motions the template is moved by.
MOTIONS = [(3.3, -2.7, 0.0), (-12.5, 8.25, 0.6), (10.0, -7.0, -1.0), (0.4, 0.2, 0.1)]


def measure(size: int) -> dict[str, float | int]:
    """Registers the ``size`` px board against its golden board under every motion."""
    board = make_board(seed=3, size=size, jpeg_quality=90)
    goldens = [moved(board.template, *motion) for motion in MOTIONS]
    before = memory_mb(os.getpid())
    Path("/proc/self/clear_refs").write_text("5")
    shift_err, angle_err, times = 0.0, 0.0, []
    for (dx, dy, degrees), golden in zip(MOTIONS, goldens, strict=True):
        started = time.perf_counter()
        _, alignment = register(board.image, golden)
        times.append(time.perf_counter() - started)
        shift_err = max(shift_err, abs(alignment.dx - dx), abs(alignment.dy - dy))
        angle_err = max(angle_err, abs(alignment.rotation_deg - degrees))
    peak = round(memory_mb(os.getpid(), "VmHWM") - before, 1)
    # What an operator who picked the wrong golden board waits for: another design, and the
    # right one turned by 90 degrees, both refused.
    refused = []
    for wrong in (make_board(seed=4, size=size, jpeg_quality=90).template,
                  np.ascontiguousarray(np.rot90(board.template))):
        started = time.perf_counter()
        try:
            register(board.image, wrong)
        except AlignmentError:
            refused.append(time.perf_counter() - started)
    return {
        "size": size,
        # Over the limit: full-resolution patches (or that many Mpx where they lack copper).
        "refined_on": "patches" if size * size > REFINE_MAX_PIXELS
        else f"{size * size / 2**20:.2f} Mpx",
        "max_shift_error_px": round(shift_err, 4), "max_rotation_error_deg": round(angle_err, 5),
        "median_s": round(statistics.median(times), 2),
        "peak_mb_above_images": peak,
        "refused": len(refused),
        "refused_median_s": round(statistics.median(refused), 2) if refused else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Prints one JSON line per size."""
    p = argparse.ArgumentParser(prog="python -m bench.registration", description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    args = p.parse_args(argv)
    for size in args.sizes:
        print(json.dumps(measure(size)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
