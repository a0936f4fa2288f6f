"""The GPU-burst path on CPU: JAX training from a pack, checkpoints, resume, and the round trip
of its checkpoint into a ``.keras`` file that TensorFlow loads with ``custom_objects``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="the JAX path needs jax (the test extra installs it)")

# Slow: each test trains or converts in a fresh JAX interpreter (over a minute in all here).
pytestmark = pytest.mark.slow

from training.pack import build_pack  # noqa: E402
from training.synth import write_deeppcb_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def jax_env() -> dict[str, str]:
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_jax(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=jax_env(), text=True,
                          capture_output=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("jax_pack")
    data = write_deeppcb_folder(base / "data", n_pairs=3, seed=0, size=160)
    path = base / "train.npz"
    np.savez_compressed(path, **build_pack(data, "all", workers=1))
    return path


@pytest.fixture(scope="module")
def trained(pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jax_run") / "pair"
    proc = run_jax([
        "-m", "training.jax_train", "--pack", str(pack), "--out", str(out), "--mode", "pair",
        "--steps", "3", "--batch-size", "2", "--crop", "64", "--encoder-depth", "2",
        "--decoder-filters", "8,4", "--warmup-steps", "1", "--log-every", "1",
        "--shard-mb", "0.05", "--workers", "1",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_stint_writes_small_shards_and_its_state(trained: Path):
    state = json.loads((trained / "state.json").read_text())
    assert state["step"] == 3 and state["final"] is True
    assert state["config"]["mode"] == "pair"
    assert state["config"]["decoder_reduction"] is True
    assert state["train_seconds_total"] > 0
    shards = sorted(trained.glob("weights-*.npz"))
    assert len(shards) == len(state["shards"]) > 1  # 0.05 MB shards: the model is split
    assert all(s.stat().st_size < 0.05 * 2**20 + 200_000 for s in shards)
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) for row in log)


def test_resume_continues_steps_and_time(trained: Path, pack: Path, tmp_path: Path):
    out = tmp_path / "resumed"
    proc = run_jax([
        "-m", "training.jax_train", "--pack", str(pack), "--out", str(out), "--mode", "pair",
        "--steps", "2", "--batch-size", "2", "--crop", "64", "--encoder-depth", "2",
        "--decoder-filters", "8,4", "--warmup-steps", "1", "--log-every", "1", "--workers", "1",
        "--init", str(trained), "--state", str(trained / "state.json"),
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = json.loads((trained / "state.json").read_text())
    after = json.loads((out / "state.json").read_text())
    assert after["step"] == before["step"] + 2
    assert after["stints"] == before["stints"] + 1
    assert after["train_seconds_total"] > before["train_seconds_total"]
    assert after["seed"] == before["seed"]


def test_round_trip_to_tensorflow_gives_equal_outputs(trained: Path, tmp_path: Path):
    x = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        import numpy as np
        from model_defs import build_model
        from training.jax_train import load_shards, model_kwargs
        ckpt = Path({str(trained)!r})
        model = build_model(**model_kwargs(json.loads((ckpt / "state.json").read_text())["config"]))
        load_shards(model, ckpt)
        x = np.load({str(tmp_path / "x.npy")!r})
        y = model.predict([x, x[::-1]], verbose=0)
        np.save({str(tmp_path / "jax.npy")!r}, np.asarray(y))
    """)
    proc = run_jax(["-c", script])
    assert proc.returncode == 0, proc.stderr[-3000:]

    from app.inference.loading import load_keras_model
    from training.convert import convert

    weights = tmp_path / "pair.keras"
    convert(trained, weights)
    assert (tmp_path / "pair.state.json").is_file()
    model = load_keras_model(weights)  # the service's loader: custom_objects, compile=False
    assert [t.name for t in model.inputs] == ["image", "reference"]
    y_tf = np.asarray(model.predict([x, x[::-1]], verbose=0))
    y_jax = np.load(tmp_path / "jax.npy")
    assert y_tf.shape == (2, 64, 64, 7)
    np.testing.assert_allclose(y_tf, y_jax, atol=1e-4)


def test_a_tensorflow_backend_refuses_to_run_the_jax_loop(pack: Path, tmp_path: Path):
    env = dict(jax_env(), KERAS_BACKEND="tensorflow")
    proc = subprocess.run(
        [sys.executable, "-m", "training.jax_train", "--pack", str(pack), "--out",
         str(tmp_path / "x"), "--steps", "1"],
        cwd=ROOT, env=env, text=True, capture_output=True, timeout=600, check=False,
    )
    assert proc.returncode != 0
    assert "KERAS_BACKEND=jax" in proc.stderr
