"""The benchmark: raw model throughput, the real server under load, a naive baseline, a big board.

Everything runs in one invocation on one machine, so the ratios compare like with like:

    python -m bench.run_bench --out bench/results/latest.json

It takes about 10-15 minutes on 2 CPU cores (``--quick`` for a smoke run) and writes a JSON
result plus a Markdown table (``.md`` beside the JSON) for README.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import bench_server, board_png, machine, median, memory_mb, run_load


def matmul_peak_gflops(dtype: str, n: int = 2048, reps: int = 7) -> float:
    """Measured matmul throughput (median over ``reps``), the machine's practical peak."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    fn = tf.function(lambda x: tf.matmul(x, x))
    fn(a).numpy()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn(a).numpy()
        times.append(time.perf_counter() - started)
    return 2 * n**3 / median(times) / 1e9


def model_gflops(model: Any, size: int) -> float:
    """FLOPs of one forward pass at ``size`` x ``size``, from TF's graph profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, 1], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts)
    return float(info.total_float_ops) / 1e9


def raw_throughput(weights: Path, precision: str, batches: list[int], reps: int,
                   gflops: float, peak: float) -> list[dict[str, Any]]:
    """Images per second of the bare model function at 640 x 640, per batch size."""
    from app.inference.forward import timed_calls
    from app.inference.inferencer import Inferencer

    # Everything passed in: no PCB_* variable of the shell reaches the measurement.
    inf = Inferencer.load(weights, device="auto", precision=precision)
    tile = inf.tile
    rows = []
    for b in batches:
        x = np.full((b, tile, tile, 1), 255, dtype=np.uint8)
        t = median(timed_calls(functools.partial(inf.forward, x), reps))
        rows.append({
            "precision": precision, "batch": b, "median_s": round(t, 4),
            "images_per_s": round(b / t, 3),
            "gflops_per_s": round(gflops * b / t, 1),
            "fraction_of_matmul_peak": round(gflops * b / t / peak, 3),
        })
        print(f"  raw {precision} batch {b}: {b / t:.2f} img/s", flush=True)
    assert inf.tracing_count == 1, f"the model function retraced: {inf.tracing_count}"
    return rows


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MB."""
    return memory_mb(pid, "VmHWM")


def serve_load(url: str, body: bytes, plan: list[tuple[int, int]],
               path: str = "/predict?mask=none") -> list[dict[str, Any]]:
    """Runs the load plan ``[(clients, requests per client), ...]`` against ``url``."""
    rows = []
    for clients, per_client in plan:
        res = asyncio.run(run_load(url, body, clients, per_client, max_seconds=240, path=path))
        rows.append(res.as_dict())
        print(f"  {clients:>2} clients: {res.throughput:.2f} req/s, p50 "
              f"{res.percentile(50):.0f} ms, statuses {res.statuses}", flush=True)
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The README table."""
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB "
        f"({m['cpu_flags']}); {report['date']}. Command: `{report['command']}`.",
        "",
        f"Model: {report['model_gflops_640']:.1f} GFLOP per {report['tile_size']}px tile; "
        f"measured matmul peak {report['matmul_peak_gflops']['float32']:.0f} GFLOP/s (float32), "
        f"{report['matmul_peak_gflops']['bfloat16']:.0f} GFLOP/s (bfloat16).",
        "",
        "| raw model (in-process) | batch | images/s | GFLOP/s | of matmul peak |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["raw"]:
        lines.append(f"| {r['precision']} | {r['batch']} | {r['images_per_s']:.2f} | "
                     f"{r['gflops_per_s']:.0f} | {r['fraction_of_matmul_peak']:.0%} |")
    lines += ["", "| server (precision) | mode | clients | req/s | p50 ms | p95 ms | p99 ms "
              "| statuses |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, rows in report["load"].items():
        for r in rows:
            lines.append(f"| {name} | {r['mode']} | {r['clients']} | {r['throughput_rps']:.2f} | "
                         f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
                         f"{r['statuses']} |")
    lines += ["", "| server (precision) | ready after s (both models) | RSS after warm-up MB "
              "| peak RSS MB | batch (auto) | model calls at once (auto) |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, s in report["startup"].items():
        lines.append(f"| {name} | {s['ready_s']:.1f} | {s['rss_mb']:.0f} | "
                     f"{s['peak_rss_mb']:.0f} | {s['max_batch_size']} | "
                     f"{s['model_concurrency']} |")
    t = report["targets"]
    lines += [
        "",
        "| target | measured | goal |",
        "|---|---:|---:|",
        "| server (float32) at 16 clients / best raw float32 throughput | "
        f"{t['server16_over_raw_best']:.2f} | >= 0.95 |",
        "| server (float32) / naive (float32) throughput at 16 clients | "
        f"{t['server16_over_naive16']:.2f} | >= 1.5 |",
        "| idle p50 latency (float32) / raw single-image time | "
        f"{t['idle_p50_over_raw_b1']:.2f} | <= 1.10 |",
        f"| server (auto: {t['auto_precision']}) at 16 clients / best raw "
        f"{t['auto_precision']} | {t['auto_server16_over_raw_best']:.2f} | (reported) |",
        "| server (auto) / naive (float32) throughput at 16 clients | "
        f"{t['auto_server16_over_naive16']:.2f} | (reported) |",
        f"| best raw float32 throughput / matmul peak | {t['raw_best_f32_of_peak']:.0%} "
        "| (reported) |",
    ]
    return "\n".join(lines) + "\n"


def server_run(weights: Path, body: bytes, plan: list[tuple[int, int]],
               pair_plan: list[tuple[int, int]], **settings: Any) -> dict[str, Any]:
    """One server configuration: its start-up, then the load plan on each model's mode."""
    started = time.perf_counter()
    with bench_server(weights, **settings) as server:
        ready = time.perf_counter() - started
        info = httpx.get(server.url + "/v1/model").json()
        startup = {"ready_s": round(ready, 1), "rss_mb": round(memory_mb(server.pid), 1),
                   "max_batch_size": info["batching"]["max_batch_size"],
                   "model_concurrency": info["batching"]["model_concurrency"],
                   "precision": info["precision"]}
        rows = [{**r, "mode": "single"} for r in serve_load(server.url, body, plan)]
        if any(m["mode"] == "pair" for m in info["models"]) and pair_plan:
            # The same board as its own golden board: the pair model's full path (gating off,
            # or nothing would differ and no tile would run), registration included, on a
            # product stored once.
            httpx.put(server.url + "/v1/golden-boards/bench", content=body,
                      headers={"Content-Type": "image/png"}, timeout=60).raise_for_status()
            rows += [{**r, "mode": "pair"} for r in serve_load(
                server.url, body, pair_plan,
                path="/predict?mask=none&product=bench&gating=off")]
        startup["peak_rss_mb"] = round(peak_rss_mb(server.pid), 1)
    return {"startup": startup, "load": rows}


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and writes the JSON report and the Markdown table."""
    from app.core.config import DEFAULT_WEIGHTS

    p = argparse.ArgumentParser(prog="python -m bench.run_bench", description=__doc__)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    p.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from app.inference.loading import load_keras_model

    reps = 3 if args.quick else 5
    plan = [(1, 4), (4, 2), (16, 1)] if args.quick else [(1, 12), (4, 6), (16, 4)]
    pair_plan = [(16, 1)] if args.quick else [(1, 6), (16, 2)]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.run_bench" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "weights": str(args.weights),
    }
    print("matmul peak ...", flush=True)
    report["matmul_peak_gflops"] = {d: round(matmul_peak_gflops(d), 1)
                                    for d in ("float32", "bfloat16")}
    from app.inference.card import load_card

    tile = load_card(args.weights.with_name("model_card.json")).input.tile_size
    model = load_keras_model(args.weights)
    report["tile_size"] = tile
    report["model_gflops_640"] = round(model_gflops(model, tile), 2)
    report["model_parameters"] = int(model.count_params())
    del model
    keras.backend.clear_session()
    report["raw"] = []
    for precision in ("float32", "bfloat16"):
        report["raw"] += raw_throughput(
            args.weights, precision, [1, 2, 4, 8], reps, report["model_gflops_640"],
            report["matmul_peak_gflops"][precision],
        )
    body = board_png(640, seed=1)
    report["load"], report["startup"] = {}, {}
    for name, settings in (("float32", {"precision": "float32"}), ("auto", {})):
        print(f"server ({name}) ...", flush=True)
        run = server_run(args.weights, body, plan, pair_plan, **settings)
        report["load"][name], report["startup"][name] = run["load"], run["startup"]
    print("naive baseline (float32) ...", flush=True)
    naive_cmd = [sys.executable, "-m", "uvicorn", "bench.naive_server:app", "--host",
                 "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
    with bench_server(args.weights, argv=naive_cmd) as server:
        report["load"]["naive"] = [{**r, "mode": "single"}
                                   for r in serve_load(server.url, body, plan)]

    def best(precision: str) -> float:
        return max(r["images_per_s"] for r in report["raw"] if r["precision"] == precision)

    def at16(name: str) -> float:
        return next(r["throughput_rps"] for r in report["load"][name]
                    if r["mode"] == "single" and r["clients"] == 16)

    b1 = next(r for r in report["raw"] if r["precision"] == "float32" and r["batch"] == 1)
    f32_idle = next(r for r in report["load"]["float32"] if r["clients"] == 1)
    auto_precision = report["startup"]["auto"]["precision"]
    best_f32 = max((r for r in report["raw"] if r["precision"] == "float32"),
                   key=lambda r: r["images_per_s"])
    report["targets"] = {
        "server16_over_raw_best": round(at16("float32") / best("float32"), 3),
        "server16_over_naive16": round(at16("float32") / max(at16("naive"), 1e-9), 3),
        "idle_p50_over_raw_b1": round(f32_idle["p50_ms"] / 1e3 / b1["median_s"], 3),
        "auto_precision": auto_precision,
        "auto_server16_over_raw_best": round(at16("auto") / best(auto_precision), 3),
        "auto_server16_over_naive16": round(at16("auto") / max(at16("naive"), 1e-9), 3),
        "raw_best_f32_of_peak": best_f32["fraction_of_matmul_peak"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
