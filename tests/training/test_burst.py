"""The GPU burst, checked here: the device's limits for every plan, the initial weights as
shards, leaving the shipped ``.keras`` out of git's index and back, and the dry run (the
launcher the machine runs, two CPU steps of each run under ``KERAS_BACKEND=jax``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from training import burst

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A burst folder holding the shipped weights as shards (no packs, no wheels: CI has
    neither the dataset nor the network)."""
    folder = tmp_path_factory.mktemp("burst")
    burst.prepare_init(ROOT / "weights", folder)
    return folder


def test_burst_folder_is_ignored_so_that_carry_takes_it():
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "burst/init/x"],
                             cwd=ROOT, check=False)
    assert ignored.returncode == 0


def test_initial_weights_are_small_float16_shards_with_their_state(prepared: Path):
    for mode, name in burst.SHIPPED.items():
        folder = prepared / "init" / mode
        shards = sorted(folder.glob("weights-*.npz"))
        assert len(shards) == 2
        assert all(s.stat().st_size < burst.FILE_BACK_LIMIT_MIB * 2**20 for s in shards)
        with np.load(shards[0]) as data:
            kernels = [data[k] for k in data.files if data[k].ndim >= 2]
        assert kernels and all(k.dtype == np.float16 for k in kernels)
        state = json.loads((folder / "state.json").read_text())
        shipped = json.loads((ROOT / "weights" / f"{name}.state.json").read_text())
        assert state == shipped


@pytest.mark.parametrize("plan", sorted(burst.PLANS))
def test_every_plan_fits_the_device(plan: str, prepared: Path):
    report = burst.check(plan, minutes=burst.DEFAULT_MINUTES, burst=prepared)
    assert report.ok, report.failures
    numbers = report.numbers
    assert numbers["tree_mib"] <= burst.TREE_LIMIT_MIB
    assert numbers["files_back"] <= burst.FILES_BACK
    assert numbers["largest_file_back_mib"] <= burst.FILE_BACK_LIMIT_MIB
    assert numbers["back_mib"] <= burst.BACK_LIMIT_MIB
    call = numbers["call"]
    assert len(call["carry"]) <= burst.CARRY_PATHS
    assert all(path.startswith("burst/") for path in call["carry"])
    assert call["timeout_s"] <= burst.COMMAND_SECONDS
    # The initial weights that travel are the real shards, not an estimate.
    inits = {k: v for k, v in numbers["carried_mib"].items() if "/init/" in k}
    for key, mib in inits.items():
        folder = prepared / Path(key).relative_to("burst")
        real = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        assert mib == pytest.approx(real, abs=0.01)


def test_the_shipped_weights_would_not_fit_and_are_left_out(prepared: Path):
    shipped = sum((ROOT / h).stat().st_size for h in burst.HIDDEN) / 2**20
    report = burst.check("pair", minutes=burst.DEFAULT_MINUTES, burst=prepared)
    assert report.numbers["tree_mib"] + shipped > burst.TREE_LIMIT_MIB
    assert "weights/pcb_pair_unet.keras" not in burst.travelling_files(ROOT)


def test_check_fails_past_the_device_limits(prepared: Path, monkeypatch: pytest.MonkeyPatch):
    # Four models at once: what one call cannot bring back, hence two calls of two.
    four = (*burst.PLANS["pair"], *burst.PLANS["single"])
    monkeypatch.setitem(burst.PLANS, "four", four)
    report = burst.check("four", minutes=burst.DEFAULT_MINUTES, burst=prepared)
    assert not report.ok
    assert any("16 files would come back > 8" in f for f in report.failures)
    assert any("would come back > 64.0 MiB" in f for f in report.failures)
    report = burst.check("pair", minutes=9, burst=prepared)
    assert any("need a 660 s call > 600 s" in f for f in report.failures)


def test_strict_check_wants_every_input_and_the_weights_hidden(prepared: Path):
    report = burst.check("pair", minutes=burst.DEFAULT_MINUTES, burst=prepared, strict=True)
    assert any("burst/pack/all.npz is missing" in f for f in report.failures)
    assert any("still in git's index" in f for f in report.failures)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def test_hide_and_restore_move_only_the_index(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "weights").mkdir(parents=True)
    _git(repo, "init", "-q")
    for name in burst.HIDDEN:
        (repo / name).write_bytes(b"weights")
    (repo / "README.md").write_text("x\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert set(burst.HIDDEN) <= set(burst.travelling_files(repo)) | set(burst.HIDDEN)
    assert burst.hide(repo) == list(burst.HIDDEN)
    listed = _git(repo, "ls-files", "--cached", "--others", "--exclude-standard").split()
    assert listed == ["README.md"]  # neither tracked nor untracked-not-ignored: left behind
    assert all((repo / h).is_file() for h in burst.HIDDEN)  # the files never move
    assert burst.hide(repo) == []  # twice is harmless
    assert burst.restore(repo) == list(burst.HIDDEN)
    assert _git(repo, "status", "--porcelain") == ""
    exclude = repo / ".git" / "info" / "exclude"
    assert "training.burst" not in exclude.read_text()


@pytest.mark.slow  # two JAX processes a plan, each compiling a tiny model on the CPU
@pytest.mark.timeout(900)
@pytest.mark.parametrize("plan", ["pair", "light"])
def test_dry_run_starts_every_run_of_the_plan(plan: str, prepared: Path, tmp_path: Path):
    report = burst.dry_run(plan, minutes=burst.DEFAULT_MINUTES, burst=prepared,
                           out=tmp_path / "out")
    runs = burst.PLANS[plan]
    assert set(report["states"]) == {r.name for r in runs}
    for run in runs:
        state = report["states"][run.name]
        assert state["stint_steps"] == 2
        assert state["config"]["mode"] == run.mode
        assert state["config"]["bn_batches"] == 1  # the tiny runs' override
        # Each process trained on its own pack: P2 never saw group 44000.
        excluded = set(burst.PACKS[run.pack])
        assert state["groups"] and not excluded & set(state["groups"])
    if plan == "light":
        assert {s["config"]["encoder_depth"] for s in report["states"].values()} == {3}
    files = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*")
                   if p.is_file())
    assert len(files) <= burst.FILES_BACK
