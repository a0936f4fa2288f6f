"""Peak memory of the server on a very large board.

    python -m bench.big_board --size 8000

Starts the real server, sends one 640 x 640 board (warm), reads the peak resident memory,
sends one ``size`` x ``size`` board, and reads it again. Tiles are extracted one batch at a
time and stitched into 5 bytes a pixel, so the growth is about the decoded image plus those
maps, not the model's activations for every tile at once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx

from bench.common import bench_server, board_png
from bench.run_bench import peak_rss_mb


def main(argv: list[str] | None = None) -> int:
    """Prints a JSON line with the peak RSS before and after the big board."""
    from app.core.config import DEFAULT_WEIGHTS

    p = argparse.ArgumentParser(prog="python -m bench.big_board", description=__doc__)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--size", type=int, default=8000)
    args = p.parse_args(argv)
    big = board_png(args.size, seed=9)
    with bench_server(args.weights, request_timeout_s=3600) as server:
        httpx.post(server.url + "/predict?mask=none", timeout=300,
                   files={"file": ("warm.png", board_png(640), "image/png")}).raise_for_status()
        before = peak_rss_mb(server.pid)
        started = time.perf_counter()
        r = httpx.post(server.url + "/predict?mask=none", timeout=3600,
                       files={"file": ("big.png", big, "image/png")})
        seconds = time.perf_counter() - started
        r.raise_for_status()
        after = peak_rss_mb(server.pid)
    result = {
        "size": args.size, "upload_mb": round(len(big) / 1e6, 1),
        "tiles": r.json()["params"]["tiles"],
        "seconds": round(seconds, 1), "peak_rss_after_640_mb": round(before, 1),
        "peak_rss_after_big_mb": round(after, 1), "growth_mb": round(after - before, 1),
        "stitch_buffers_mb": round(args.size**2 * 5 / 1e6, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
