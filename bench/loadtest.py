"""Load test against loopback: at capacity no errors; past capacity only 503 + Retry-After.

    python -m bench.loadtest [--weights W] [--seconds 60]

Phase 1 runs at capacity (as many clients as one model batch holds); phase 2 pushes past
capacity with a small queue bound, so the service must shed load. Checks, for every request:
an answer arrives (no hang, no connection error), and it is 200 or (phase 2 only) 503 with
Retry-After. Bounded in count and time; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bench.common import bench_server, board_png, run_load


def main(argv: list[str] | None = None) -> int:
    """Runs both phases and prints a JSON verdict."""
    from app.core.config import DEFAULT_WEIGHTS

    p = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--seconds", type=float, default=60.0, help="time bound of each phase")
    p.add_argument("--size", type=int, default=640, help="board side")
    p.add_argument("--capacity-clients", type=int, default=4)
    p.add_argument("--overload-clients", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    body = board_png(args.size, seed=3)
    batch = 4
    report: dict[str, Any] = {}
    # A request queues at most one batch of its tiles at a time, so max_queue_tiles is room
    # for the capacity clients, and not for the overload phase's.
    with bench_server(args.weights, batching_max_size=batch,
                      batching_max_queue_tiles=args.capacity_clients * batch,
                      limits_request_timeout_s=300) as server:
        at = asyncio.run(run_load(server.url, body, args.capacity_clients, 10**6, args.seconds,
                                  timeout_s=300))
        past = asyncio.run(run_load(server.url, body, args.overload_clients, 10**6,
                                    args.seconds, timeout_s=300))
    report["at_capacity"] = at.as_dict()
    report["past_capacity"] = past.as_dict()
    checks = {
        "at_capacity_all_200": set(at.statuses) == {200} and at.errors == 0,
        "past_capacity_only_200_or_503": set(past.statuses) <= {200, 503} and past.errors == 0,
        "past_capacity_sheds_load": past.statuses.get(503, 0) > 0,
        "every_503_has_retry_after": past.retry_after_missing == 0,
        "accepted_requests_answered": past.statuses.get(200, 0) > 0,
    }
    report["checks"] = checks
    report["passed"] = all(checks.values())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
