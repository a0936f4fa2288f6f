"""A very large board at the default settings: its peak memory, its time, and a flood of them.

    python -m bench.big_board --size 8000

Starts the real server with its defaults (both models, ``PCB_PRECISION=auto``,
``PCB_BATCHING_MAX_SIZE=auto``) and sends:

1. ten 640 x 640 boards one at a time: the time of one tile through the server, warm;
2. one ``size`` x ``size`` board, with the process's peak resident memory reset just before
   (``/proc/<pid>/clear_refs``), so the peak is this board's and not warm-up's; its time is
   compared with ``tiles x`` the per-tile time of step 1 (goal: at most 1.1x);
3. ``--flood`` such boards at once (default 4): the memory budget admits what fits and
   refuses the rest with 503 + Retry-After, so the peak stays bounded instead of growing with
   the flood. The admitted ones are dropped (the client leaves) once the refusals are in.

The bytes a board pixel costs in flight (``BYTES_PER_PIXEL`` in ``app/services/admission.py``)
are the growth of step 2 over the pixels.

``--mode pair`` does the same through the golden-board model: each board is first stored as
its own product's golden board, so every request registers a full-size golden board (the budget
counts a pair board twice). Steps 2 and 3 run ungated (``?gating=off``): the board is its own
golden board, so gating would leave nothing to compute.

``--mode pair --defects K [K ...]`` measures gating instead (``app.inference.gating``): for
each K a synthetic panel with K defects, its defect-free template stored as the golden board
and the panel sent as a scanner places it (moved by a fraction of a pixel), once gated and
once with ``?gating=off``, each with the peak memory reset before it; ratios within one run::

    python -m bench.big_board --mode pair --defects 0 10 100 --flood 0
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import bench_server, board_png, memory_mb


def reset_peak(pid: int) -> None:
    """Resets the process's peak resident memory (VmHWM) to its current resident memory."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def main(argv: list[str] | None = None) -> int:
    """Prints one JSON line with the measurements."""
    from app.core.config import DEFAULT_WEIGHTS

    p = argparse.ArgumentParser(prog="python -m bench.big_board", description=__doc__)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--size", type=int, default=8000)
    p.add_argument("--flood", type=int, default=4, help="large boards sent at once (0: none)")
    p.add_argument("--mode", choices=("single", "pair"), default="single",
                   help="the model: the board alone, or against its golden board")
    p.add_argument("--defects", type=int, nargs="+", default=None, metavar="K",
                   help="pair mode: gated against ungated on panels with K defects each")
    args = p.parse_args(argv)
    if args.defects is not None:
        if args.mode != "pair":
            p.error("--defects needs --mode pair (only the pair model is gated by differences)")
        print(json.dumps(gating_run(args.weights, args.size, args.defects)))
        return 0
    big = board_png(args.size, seed=9)
    small = board_png(640, seed=1)
    result: dict[str, Any] = {"size": args.size, "mode": args.mode,
                              "upload_mb": round(len(big) / 1e6, 2)}
    with bench_server(args.weights) as server:
        url = server.url + "/predict?mask=none"
        small_url = big_url = url
        if args.mode == "pair":
            for product, body in (("small", small), ("big", big)):
                httpx.put(f"{server.url}/v1/golden-boards/{product}", content=body, timeout=300,
                          headers={"Content-Type": "image/png"}).raise_for_status()
            small_url = url + "&product=small&gating=off"
            big_url = url + "&product=big&gating=off"
        model = httpx.get(server.url + "/v1/model").json()
        result["precision"] = model["precision"]
        result["max_batch_size"] = model["batching"]["max_batch_size"]
        result["model_concurrency"] = model["batching"]["model_concurrency"]
        times = []
        for _ in range(10):
            started = time.perf_counter()
            httpx.post(small_url, timeout=300,
                       files={"file": ("s.png", small, "image/png")}).raise_for_status()
            times.append(time.perf_counter() - started)
        per_tile = statistics.median(times[2:])
        rss_before = memory_mb(server.pid)
        reset_peak(server.pid)
        started = time.perf_counter()
        r = httpx.post(big_url, timeout=3600, files={"file": ("big.png", big, "image/png")})
        seconds = time.perf_counter() - started
        r.raise_for_status()
        tiles = int(r.json()["params"]["tiles"])
        peak = memory_mb(server.pid, "VmHWM")
        result.update({
            "tiles": tiles, "seconds": round(seconds, 1),
            "per_tile_s_640": round(per_tile, 3),
            "time_over_tiles_x_per_tile": round(seconds / (tiles * per_tile), 3),
            "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(peak, 1),
            "bytes_per_pixel": round((peak - rss_before) * 2**20 / args.size**2, 1),
        })
        if args.flood:
            result["flood"] = flood(big_url, server.pid, big, args.flood)
    print(json.dumps(result))
    return 0


def gating_run(weights: Path, size: int, defects: list[int]) -> dict[str, Any]:
    """For each K, one panel of ``size`` px with K defects, gated then ungated on one server."""
    import numpy as np

    from training.synth import encode, make_board, moved

    result: dict[str, Any] = {"size": size, "mode": "pair", "runs": []}
    with bench_server(weights) as server:
        model = httpx.get(server.url + "/v1/model").json()
        result.update(precision=model["precision"],
                      max_batch_size=model["batching"]["max_batch_size"],
                      model_concurrency=model["batching"]["model_concurrency"])
        for k in defects:
            started = time.perf_counter()
            synth = make_board(seed=20 + k, size=size, n_defects=k)
            # As a scanner places the panel: a fraction of a pixel off its golden board.
            board = encode(np.ascontiguousarray(moved(synth.image, 0.37, -0.21, 0.0)))
            golden = encode(synth.template)
            del synth
            made = time.perf_counter() - started
            product = f"panel{k}"
            httpx.put(f"{server.url}/v1/golden-boards/{product}", content=golden, timeout=600,
                      headers={"Content-Type": "image/png"}).raise_for_status()
            run: dict[str, Any] = {"defects": k, "synth_s": round(made, 1)}
            for gating in ("on", "off"):
                rss_before = memory_mb(server.pid)
                reset_peak(server.pid)
                started = time.perf_counter()
                r = httpx.post(f"{server.url}/predict?mask=none&product={product}&gating={gating}",
                               timeout=3600, files={"file": ("panel.png", board, "image/png")})
                seconds = time.perf_counter() - started
                r.raise_for_status()
                body = r.json()
                run[gating] = {
                    "seconds": round(seconds, 2), "tiles": body["tiles"],
                    "defects_found": len(body["defects"]),
                    "timings_ms": body["timings_ms"],
                    "rss_before_mb": round(rss_before, 1),
                    "peak_rss_mb": round(memory_mb(server.pid, "VmHWM"), 1),
                    "answer": [(d["class"], d["bbox"]) for d in body["defects"]],
                }
            on, off = run["on"], run["off"]
            run["speedup"] = round(off["seconds"] / on["seconds"], 1)
            run["same_defects"] = on.pop("answer") == off.pop("answer")
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
    return result


def flood(url: str, pid: int, body: bytes, n: int) -> dict[str, Any]:
    """Sends ``n`` large boards at once; returns the statuses and the peak memory."""
    reset_peak(pid)
    statuses: list[int] = []
    retry_after: list[str | None] = []

    def send(client: httpx.Client) -> None:
        try:
            r = client.post(url, files={"file": ("big.png", body, "image/png")})
        except httpx.ReadTimeout:  # admitted and still running: dropped below
            return
        statuses.append(r.status_code)
        retry_after.append(r.headers.get("Retry-After"))

    # A short read timeout: the refusals come back within seconds, the admitted boards would
    # take minutes; leaving drops their work (the server watches for the client going away).
    with httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0)) as client, \
            concurrent.futures.ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda _: send(client), range(n)))
    time.sleep(3)
    return {
        "sent": n, "statuses": sorted(statuses), "retry_after": retry_after,
        "running_past_30s": n - len(statuses),
        "peak_rss_mb": round(memory_mb(pid, "VmHWM"), 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
