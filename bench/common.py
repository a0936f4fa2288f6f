"""Shared pieces of the benchmarks: boards, load generation, memory, statistics.

Server processes come from :mod:`tests.helpers.server`, the harness the tests use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.server import SERVE_ARGV, ServerProcess, running_server

ROOT = Path(__file__).resolve().parents[1]


def bench_server(
    weights: Path, argv: Sequence[str] = SERVE_ARGV, **settings: Any
) -> AbstractContextManager[ServerProcess]:
    """A ready server for a benchmark, stopped when the ``with`` block ends.

    The machine as configured (``base={}``: every core, the device it finds), with only the
    ``PCB_*`` settings given here: none from the shell. Up to 5 minutes to load the model.
    """
    return running_server(weights, None, 300.0, argv=argv, base={}, **settings)


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of a process from ``/proc/<pid>/status`` in MB.

    Args:
        pid: The process.
        field: ``"VmRSS"`` (resident now) or ``"VmHWM"`` (peak resident).

    Raises:
        RuntimeError: The field is not there.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def board_png(size: int | tuple[int, int] = 640, seed: int = 0) -> bytes:
    """A synthetic DeepPCB-style board, PNG-encoded."""
    from training.synth import encode, make_board

    return encode(make_board(seed=seed, size=size).image, "PNG")


@dataclass
class LoadResult:
    """Outcome of one load run."""

    clients: int
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    retry_after_missing: int = 0

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.statuses.get(200, 0) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile of the successful requests, in ms."""
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        k = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
        return data[k] * 1e3

    def as_dict(self) -> dict[str, Any]:
        """Summary for the JSON report."""
        return {
            "clients": self.clients,
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "throughput_rps": round(self.throughput, 3),
            "p50_ms": round(self.percentile(50), 1),
            "p95_ms": round(self.percentile(95), 1),
            "p99_ms": round(self.percentile(99), 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "retry_after_missing": self.retry_after_missing,
        }


async def run_load(
    url: str, body: bytes, clients: int, requests_per_client: int,
    max_seconds: float = 120.0, path: str = "/predict?mask=none",
    timeout_s: float = 120.0, warmup: int = 1,
) -> LoadResult:
    """Closed-loop load: ``clients`` concurrent clients, each sending requests back to back.

    Bounded in count (``requests_per_client``) and in time (``max_seconds``).
    """
    files_field = "file"
    result = LoadResult(clients=clients, requests=0, seconds=0.0)
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        for _ in range(warmup):
            await client.post(path, files={files_field: ("w.png", body, "image/png")})
        deadline = time.perf_counter() + max_seconds

        async def one_client() -> None:
            for _ in range(requests_per_client):
                if time.perf_counter() > deadline:
                    return
                started = time.perf_counter()
                try:
                    r = await client.post(path, files={files_field: ("b.png", body, "image/png")})
                except httpx.HTTPError:
                    result.errors += 1
                    continue
                result.requests += 1
                result.statuses[r.status_code] = result.statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    result.latencies.append(time.perf_counter() - started)
                elif r.status_code == 503 and "retry-after" not in r.headers:
                    result.retry_after_missing += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        result.seconds = time.perf_counter() - started
    return result


def machine() -> dict[str, Any]:
    """A description of the machine the benchmark ran on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in text)
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gib = round(kb / 2**20, 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "memory_gib": mem_gib, "cpu_flags": flags,
            "python": sys.version.split()[0], "platform": platform.platform()}


def median(values: list[float]) -> float:
    """Median (nan for an empty list)."""
    return statistics.median(values) if values else float("nan")
