"""Pair mode under load, gated against ungated: 640 px boards with their golden boards.

    python -m bench.gating_load --data ../shared/datasets/deeppcb [--clients 16] [--rounds 2]

Starts the real server with its defaults, stores the golden board (template) of each of the
first ``--boards`` held-out DeepPCB pairs (``training.data.VAL_GROUPS``; without ``--data``,
synthetic pairs from :mod:`training.synth`) as its own product, then sends every board
``--rounds`` times from ``--clients`` concurrent clients, once with ``?gating=off`` and once
gated, alternating the order each round so neither mode always runs on a warmer server.
Reports boards/s, latency percentiles and whether both modes found the same defects (class
and box) on every board. The DeepPCB images are read at run time and never written anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import bench_server, machine


def pairs(data: Path | None, n: int) -> list[tuple[bytes, bytes]]:
    """``(board, golden board)`` PNG/JPEG bytes of ``n`` pairs."""
    if data is None:
        from training.synth import encode, make_board

        boards = [make_board(seed=100 + i, size=640, n_defects=6, jpeg_quality=90)
                  for i in range(n)]
        return [(encode(b.image), encode(b.template)) for b in boards]
    from training.data import VAL_GROUPS, read_split, split_by_groups

    _, samples = split_by_groups(read_split(data), list(VAL_GROUPS))
    return [(s.test_path.read_bytes(), s.template_path.read_bytes()) for s in samples[:n]]


def content_type(body: bytes) -> str:
    """DeepPCB's files are JPEG, the synthetic ones PNG."""
    return "image/jpeg" if body[:2] == b"\xff\xd8" else "image/png"


async def run_mode(url: str, bodies: list[bytes], clients: int, gating: str,
                   answers: dict[int, Any]) -> dict[str, Any]:
    """Sends every board once from ``clients`` clients; returns throughput and latencies."""
    todo = list(range(len(bodies)))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one() -> None:
            while todo:
                i = todo.pop()
                started = time.perf_counter()
                r = await client.post(f"/predict?mask=none&product=b{i}&gating={gating}",
                                      files={"file": ("b", bodies[i], content_type(bodies[i]))})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                    body = r.json()
                    answers[i] = [(d["class"], d["bbox"]) for d in body["defects"]]
                    skipped.append(body["tiles"]["skipped"])

        skipped: list[int] = []
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        seconds = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(bodies), "statuses": statuses, "seconds": seconds,
            "boards_per_s": len(latencies) / seconds,
            "p50_s": statistics.median(latencies),
            "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
            "tiles_skipped": sum(skipped)}


def main(argv: list[str] | None = None) -> int:
    """Prints one JSON line with both modes' rounds and their ratio."""
    from app.core.config import DEFAULT_WEIGHTS

    p = argparse.ArgumentParser(prog="python -m bench.gating_load", description=__doc__)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--data", type=Path, default=None, help="DeepPCB folder (else synthetic)")
    p.add_argument("--boards", type=int, default=32)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    board_pairs = pairs(args.data, args.boards)
    bodies = [b for b, _ in board_pairs]
    result: dict[str, Any] = {"machine": machine(), "clients": args.clients,
                              "boards": len(bodies),
                              "source": "deeppcb-val" if args.data else "synthetic"}
    with bench_server(args.weights) as server:
        for i, (_, golden) in enumerate(board_pairs):
            httpx.put(f"{server.url}/v1/golden-boards/b{i}", content=golden, timeout=60,
                      headers={"Content-Type": content_type(golden)}).raise_for_status()
        # Warm both paths (and the golden-board cache) before anything is timed.
        warm: dict[int, Any] = {}
        for gating in ("off", "on"):
            asyncio.run(run_mode(server.url, bodies[:4], 4, gating, warm))
        rounds: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        answers: dict[str, dict[int, Any]] = {"on": {}, "off": {}}
        for r in range(args.rounds):
            for gating in (("off", "on") if r % 2 == 0 else ("on", "off")):
                rounds[gating].append(asyncio.run(
                    run_mode(server.url, bodies, args.clients, gating, answers[gating])))
    for gating, runs in rounds.items():
        result[gating] = {
            "boards_per_s_median": round(statistics.median(x["boards_per_s"] for x in runs), 3),
            "p50_s_median": round(statistics.median(x["p50_s"] for x in runs), 2),
            "p95_s_median": round(statistics.median(x["p95_s"] for x in runs), 2),
            "statuses": [x["statuses"] for x in runs],
            "tiles_skipped": sum(x["tiles_skipped"] for x in runs),
        }
    result["gated_over_ungated_throughput"] = round(
        result["on"]["boards_per_s_median"] / result["off"]["boards_per_s_median"], 3)
    result["same_defects_on_every_board"] = answers["on"] == answers["off"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
