"""Soak test: steady load for a long time while the server's resident memory is sampled.

    python -m bench.soak --minutes 30 --rate 1 --out bench/results/soak.json

Passes when memory is flat: after the warm-up share of the run, the resident set grows by
less than 5% (last-minute median against the first post-warm-up minute's median). The test
suite runs a one-minute version of the same code.
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

from bench.common import bench_server, board_png, memory_mb


async def soak(url: str, pid: int, minutes: float, rate: float, body: bytes,
               sample_s: float) -> dict[str, Any]:
    """Sends ``rate`` requests/s (open loop, bounded in flight) for ``minutes``."""
    samples: list[tuple[float, float]] = []
    statuses: dict[int, int] = {}
    errors = 0
    started = time.monotonic()
    end = started + minutes * 60
    in_flight = asyncio.Semaphore(8)

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int) -> None:
            nonlocal errors
            async with in_flight:
                try:
                    r = await client.post("/predict?mask=png",
                                          files={"file": (f"b{i}.png", body, "image/png")})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                except httpx.HTTPError:
                    errors += 1

        async def sampler() -> None:
            while time.monotonic() < end:
                samples.append((time.monotonic() - started, memory_mb(pid)))
                await asyncio.sleep(sample_s)

        sampler_task = asyncio.create_task(sampler())
        tasks = []
        i = 0
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
        await sampler_task
    total = minutes * 60
    warm = [m for t, m in samples if total * 0.2 <= t < total * 0.2 + max(60, total * 0.1)]
    last = [m for t, m in samples if t >= total - max(60, total * 0.1)]
    base, final = statistics.median(warm or [samples[0][1]]), statistics.median(last)
    growth = (final - base) / base
    return {
        "minutes": minutes, "rate_rps": rate, "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in statuses.items()}, "errors": errors,
        "rss_after_warmup_mb": round(base, 1), "rss_end_mb": round(final, 1),
        "rss_max_mb": round(max(m for _, m in samples), 1),
        "growth_after_warmup": round(growth, 4), "passed": growth < 0.05 and errors == 0
        and set(statuses) == {200},
        "samples": [(round(t, 1), round(m, 1)) for t, m in samples],
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the soak and prints the verdict (samples go to ``--out``)."""
    from app.core.config import DEFAULT_WEIGHTS

    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=1.0, help="requests per second")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    body = board_png(args.size, seed=5)
    with bench_server(args.weights) as server:
        result = asyncio.run(soak(server.url, server.pid, args.minutes, args.rate, body,
                                  args.sample_s))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
