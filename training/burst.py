"""The GPU burst: prepared and checked here, launched on the lent machine.

A lent GPU machine (JAX, no TensorFlow) takes a copy of the checkout of at most 64 MiB
(tracked and untracked-not-ignored files, plus the ignored paths a call names in ``carry``)
and gives back at most 8 files of at most 16 MiB each, 64 MiB in all. The shipped
``weights/*.keras`` (two float32 models) alone are over the first limit, so a
burst does not need them: what it trains from travels in ``burst/`` (ignored by git).

``python -m training.burst prepare --data DIR``
    writes ``burst/``: the shipped weights as ``weights-NN.npz`` shards (kernels float16,
    vectors float32, each under 16 MiB) with their ``state.json`` (``burst/init/<mode>/``),
    the training packs (``burst/pack/<name>.npz``: every group, every group but 44000, the
    shipped training groups), and the wheels the machine lacks (``burst/whl/``).
``python -m training.burst hide`` / ``restore``
    takes ``weights/*.keras`` out of git's index (and ignores them) for the call, and puts
    them back after; the files themselves never move. Between the two, commit nothing.
``python -m training.burst check PLAN [--strict]``
    the device's limits for PLAN's call: the tree that travels (<= 64 MiB), the carry list
    (<= 8 ignored paths), the command (<= 2000 characters), the files that come back (<= 8,
    each <= 16 MiB, <= 64 MiB in all, counted from the models' real weight sizes), and the
    time (one command <= 10 minutes). Prints the call to make.
``python -m training.burst dry-run PLAN``
    the check, then each run's initial weights loaded into the model its flags describe, then
    the very launcher the machine runs, on the CPU under ``KERAS_BACKEND=jax`` for two steps
    of a tiny model (``scripts/gpu_burst.sh --dry-run PLAN`` runs the same).
``python -m training.burst launch PLAN --minutes M --out DIR``
    on the machine (``scripts/gpu_burst.sh PLAN M``): the plan's runs side by side, each with
    its own pack and initial weights, each checkpointing into ``DIR/<run>``.

The plans are :data:`PLANS`; the recipe that uses them is in the README ("When a GPU is lent").
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from model_defs.model import LIGHT_ENCODER_DEPTH

#: The device's limits (its README): what travels, what comes back, how long one command runs.
TREE_LIMIT_MIB = 64.0
FILES_BACK = 8
FILE_BACK_LIMIT_MIB = 16.0
BACK_LIMIT_MIB = 64.0
CARRY_PATHS = 8
COMMAND_CHARS = 2000
COMMAND_SECONDS = 600
#: Seconds of a call outside the training budget: installing the wheels and starting, and the
#: last checkpoint (BatchNorm re-estimation, eager, then the shards) after the budget ends.
CALL_OVERHEAD_S = 120
#: Training minutes of each run of a call: two calls and a machine's start fit the 15 minutes
#: of device time a session has.
DEFAULT_MINUTES = 3.5

ROOT = Path(__file__).resolve().parents[1]
BURST = Path("burst")
#: Tracked files the burst never needs; they are left out of the call (``hide``).
HIDDEN = ("weights/pcb_pair_unet.keras", "weights/pcb_defect_unet.keras")
SHIPPED = {"pair": "pcb_pair_unet", "single": "pcb_defect_unet"}
#: Packs by name: the board groups left out of each (``training.pack --exclude-groups``).
PACKS: dict[str, tuple[str, ...]] = {
    "all": (),
    "no44000": ("44000",),
    "train": ("44000", "50600", "77000"),
}
#: Checkpoint shards: under the 16 MiB a returned file may have, with room for npz headers.
SHARD_MB = 15.5
#: Crops, batch and precision of the shipped models' burst; every run keeps them.
COMMON = ("--precision", "mixed_bfloat16", "--crop", "384", "--batch-size", "24",
          "--log-every", "100", "--shard-mb", str(SHARD_MB))
#: BatchNorm statistics re-estimated for the EMA weights at each checkpoint: for the pair
#: model only, where re-estimating the shipped weights' statistics raised held-out mAP; for
#: the single-image model it lowered it (MODEL_CARD.md).
RECALIBRATE_BN = ("--bn-batches", "32")
#: Continuing from the shipped weights: a lower peak and a short warmup, since the weights
#: are already good (a choice, not a measurement).
FINE_TUNE = ("--lr", "1e-3", "--warmup-steps", "100")
FROM_SCRATCH = ("--lr", "2e-3", "--warmup-steps", "200")
_LIGHT = ("--encoder-depth", str(LIGHT_ENCODER_DEPTH))
#: Template negatives for the single-image model: a share taken from the anywhere-crops.
TEMPLATE_NEGATIVES = ("--template-negatives", "0.15")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training process of a burst.

    Attributes:
        name: Its folder under the output (``$OUT/<name>``).
        mode: ``pair`` or ``single``.
        pack: Key of :data:`PACKS`: ``burst/pack/<pack>.npz``.
        init: ``burst/init/<init>`` holds its initial weights and state; ``None``: from
            scratch.
        args: Further ``training.jax_train`` flags.
    """

    name: str
    mode: str
    pack: str
    init: str | None
    args: tuple[str, ...] = ()


#: The bursts, one device call each (two models side by side, half the GPU each: four at
#: once would bring back more than 64 MiB).
PLANS: dict[str, tuple[Run, ...]] = {
    # P1: every group, from the shipped weights; P2: the same without 44000, to score there.
    "pair": (
        Run("P1", "pair", "all", "pair", FINE_TUNE + RECALIBRATE_BN),
        Run("P2", "pair", "no44000", "pair", FINE_TUNE + RECALIBRATE_BN),
    ),
    # The same for the single-image model, with template negatives.
    "single": (
        Run("S1", "single", "all", "single", FINE_TUNE + TEMPLATE_NEGATIVES),
        Run("S2", "single", "no44000", "single", FINE_TUNE + TEMPLATE_NEGATIVES),
    ),
    # The lighter encoder (ResNet50 cut after stage 3) against the shipped models at parity:
    # from scratch on the shipped training groups, the shipped models' budget, scored on the
    # validation groups.
    "light": (
        Run("L3pair", "pair", "train", None, FROM_SCRATCH + _LIGHT + RECALIBRATE_BN),
        Run("L3single", "single", "train", None, FROM_SCRATCH + _LIGHT),
    ),
}
#: Overrides that make any run a two-step run of a tiny model on the CPU (the dry run); the
#: encoder keeps a depth the run asks for (the lighter variant's 3), else 2.
TINY = ("--steps", "2", "--minutes", "0", "--crop", "64", "--batch-size", "2",
        "--log-every", "1", "--bn-batches", "1", "--workers", "1", "--checkpoint-minutes", "100")


def tiny_args(run: Run) -> list[str]:
    """:data:`TINY`, with an encoder depth and decoder widths to match."""
    depth = int(run.args[run.args.index("--encoder-depth") + 1]) \
        if "--encoder-depth" in run.args else 2
    filters = ",".join(["8"] * (depth - 1) + ["4"])
    return [*TINY, "--encoder-depth", str(depth), "--decoder-filters", filters]


def run_argv(run: Run, burst: Path, out: Path, minutes: float, workers: int,
             tiny: bool = False) -> list[str]:
    """The ``training.jax_train`` command line of ``run``."""
    argv = [sys.executable, "-m", "training.jax_train", "--mode", run.mode,
            "--pack", str(burst / "pack" / f"{run.pack}.npz"), "--out", str(out / run.name),
            "--minutes", str(minutes), "--workers", str(workers), *COMMON, *run.args]
    if tiny:
        # The tiny model cannot take the real weights; dry_run loads those separately.
        return argv + tiny_args(run)
    if run.init is not None:
        init = burst / "init" / run.init
        argv += ["--init", str(init), "--state", str(init / "state.json")]
    return argv


def carry_paths(plan: tuple[Run, ...]) -> list[str]:
    """The ignored paths PLAN's call carries (repository-relative)."""
    paths = [str(BURST / "whl")]
    paths += sorted({str(BURST / "pack" / f"{r.pack}.npz") for r in plan})
    paths += sorted({str(BURST / "init" / r.init) for r in plan if r.init is not None})
    return paths


def device_command(plan_name: str, minutes: float) -> str:
    """The shell command of PLAN's call."""
    return f"bash scripts/gpu_burst.sh {plan_name} {minutes:g}"


# --- sizes ----------------------------------------------------------------------------------


def _git(*args: str, root: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


def travelling_files(root: Path = ROOT) -> dict[str, int]:
    """Sizes of the files the device tool copies besides ``carry``: tracked and untracked
    files that git does not ignore (and ``shared/`` where the checkout has one), minus
    :data:`HIDDEN`, which the call leaves out (``hide``)."""
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard",
                 root=root).split("\0")
    sizes: dict[str, int] = {}
    for name in names:
        path = root / name
        if name and name not in HIDDEN and path.is_file() and not path.is_symlink():
            sizes[name] = path.stat().st_size
    shared = root / "shared"
    if shared.is_dir():
        for path in shared.rglob("*"):
            if path.is_file():
                sizes[str(path.relative_to(root))] = path.stat().st_size
    return sizes


def _folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _config(run: Run) -> tuple[str, int, tuple[int, ...], bool]:
    """The model configuration ``run``'s flags describe: mode, encoder depth, decoder
    widths, decoder reduction (what ``training.jax_train`` writes into its state)."""
    from training.jax_train import build_parser

    args = build_parser().parse_args(["--pack", "-", "--out", "-", "--mode", run.mode,
                                      *COMMON, *run.args])
    filters = tuple(int(f) for f in args.decoder_filters.split(",") if f)
    return run.mode, args.encoder_depth, filters, not args.no_reduction


@functools.lru_cache(maxsize=8)
def _built(config: tuple[str, int, tuple[int, ...], bool]) -> Any:
    from model_defs import build_model
    from training.jax_train import model_kwargs

    mode, depth, filters, reduction = config
    return build_model(**model_kwargs({"mode": mode, "encoder_depth": depth,
                                       "decoder_filters": list(filters),
                                       "decoder_reduction": reduction}))


def checkpoint_files(run: Run) -> list[int]:
    """Bytes of the weight shards ``run`` writes (what ``jax_train.save_shards`` would
    write for the model its flags describe), from the model's real variables."""
    import numpy as np

    from training.jax_train import _HALF_MIN_NDIM

    limit = SHARD_MB * 2**20
    shards = [0]
    for v in _built(_config(run)).weights:
        nbytes = int(np.prod(v.shape)) * (2 if len(v.shape) >= _HALF_MIN_NDIM else 4)
        if shards[-1] + nbytes > limit and shards[-1]:
            shards.append(0)
        shards[-1] += nbytes
    return shards


# --- check ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    """The outcome of :func:`check`: the numbers, the failures and the notes."""

    numbers: dict[str, Any]
    failures: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


#: Reserve counted for a pack or the wheels that are not built here yet (CI): above the
#: sizes they have (every group's pack is the largest; keras + namex + optree wheels).
_PACK_RESERVE = 10 * 2**20
_WHEELS_RESERVE = 4 * 2**20
#: What each run returns besides its shards, and the size counted for each.
_SMALL_FILES = ("state.json", "train_log.jsonl")
_SMALL_FILE_RESERVE = 256 * 2**10


def check(plan_name: str, minutes: float, burst: Path = BURST, root: Path = ROOT,
          strict: bool = False) -> Check:
    """Checks PLAN's device call against the device's limits.

    Args:
        plan_name: A key of :data:`PLANS`.
        minutes: Training minutes of each run.
        burst: The burst folder (``burst/`` here; another in tests).
        root: The checkout.
        strict: Also fail on what only the call itself needs: a missing part of ``burst/``
            (else counted at a reserve), the shipped ``.keras`` still in git's index.
    """
    plan = PLANS[plan_name]
    failures: list[str] = []
    notes: list[str] = []
    burst_abs = burst if burst.is_absolute() else root / burst
    tree = travelling_files(root)
    carried, missing = _carried_sizes(plan, burst_abs)
    (failures if strict else notes).extend(missing)
    tracked_hidden = [h for h in HIDDEN if _git("ls-files", "--", h, root=root).strip()]
    if tracked_hidden:
        (failures if strict else notes).append(
            f"{tracked_hidden} are still in git's index and would travel: "
            "python -m training.burst hide (and restore after the call)"
        )
    tree_mib = (sum(tree.values()) + sum(carried.values())) / 2**20
    if tree_mib > TREE_LIMIT_MIB:
        largest = sorted(tree.items(), key=lambda kv: -kv[1])[:5]
        failures.append(f"the tree that travels is {tree_mib:.1f} MiB > {TREE_LIMIT_MIB} MiB "
                        f"(largest tracked: {largest}; carried: {carried})")
    carry = carry_paths(plan)
    if len(carry) > CARRY_PATHS:
        failures.append(f"carry names {len(carry)} paths > {CARRY_PATHS}")
    if burst == BURST:
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(BURST / "x")],
                                 cwd=root, check=False).returncode == 0
        if not ignored:
            failures.append("burst/ is not ignored by git: carry takes ignored paths only")
    command = device_command(plan_name, minutes)
    if len(command) > COMMAND_CHARS:
        failures.append(f"the command has {len(command)} characters > {COMMAND_CHARS}")
    files = _files_back(plan)
    failures += _return_failures(files)
    back_mib = sum(b for _, b in files) / 2**20
    timeout_s = int(minutes * 60 + CALL_OVERHEAD_S)
    if timeout_s > COMMAND_SECONDS:
        failures.append(f"{minutes} minutes of training need a {timeout_s} s call > "
                        f"{COMMAND_SECONDS} s")
    numbers = {
        "plan": plan_name,
        "runs": [dataclasses.asdict(r) for r in plan],
        "tree_mib": round(tree_mib, 2),
        "tree_tracked_mib": round(sum(tree.values()) / 2**20, 2),
        "carried_mib": {k: round(v / 2**20, 2) for k, v in carried.items()},
        "files_back": len(files),
        "largest_file_back_mib": round(max(b for _, b in files) / 2**20, 2),
        "back_mib": round(back_mib, 2),
        "call": {"command": command, "carry": carry, "timeout_s": min(timeout_s,
                                                                      COMMAND_SECONDS)},
    }
    return Check(numbers, failures, notes)


def _carried_sizes(plan: tuple[Run, ...], burst_abs: Path) -> tuple[dict[str, int], list[str]]:
    """The size of each path the call carries, and what is missing (counted at a reserve)."""
    carried: dict[str, int] = {}
    missing: list[str] = []
    for rel in carry_paths(plan):
        path = burst_abs / Path(rel).relative_to(BURST)
        if path.exists():
            carried[rel] = _folder_bytes(path)
            continue
        reserve = _WHEELS_RESERVE if rel.endswith("whl") else _PACK_RESERVE
        if "/init/" in rel:
            reserve = sum(checkpoint_files(next(r for r in plan if r.init and
                                                rel.endswith(r.init)))) + 2**16
        carried[rel] = reserve
        missing.append(f"{rel} is missing (python -m training.burst prepare); counted as "
                       f"{reserve / 2**20:.1f} MiB")
    return carried, missing


def _files_back(plan: tuple[Run, ...]) -> list[tuple[str, int]]:
    """``(path, bytes)`` of every file the runs of a plan return."""
    files: list[tuple[str, int]] = []
    for run in plan:
        for k, nbytes in enumerate(checkpoint_files(run)):
            files.append((f"{run.name}/weights-{k:02d}.npz", nbytes))
        files += [(f"{run.name}/{name}", _SMALL_FILE_RESERVE) for name in _SMALL_FILES]
    return files


def _return_failures(files: list[tuple[str, int]]) -> list[str]:
    """What in the returned files breaks the device's limits on what comes back."""
    failures: list[str] = []
    if len(files) > FILES_BACK:
        failures.append(f"{len(files)} files would come back > {FILES_BACK}: "
                        f"{[f for f, _ in files]}")
    too_big = [(f, round(b / 2**20, 2)) for f, b in files if b > FILE_BACK_LIMIT_MIB * 2**20]
    if too_big:
        failures.append(f"files over {FILE_BACK_LIMIT_MIB} MiB would be left out: {too_big}")
    back_mib = sum(b for _, b in files) / 2**20
    if back_mib > BACK_LIMIT_MIB:
        failures.append(f"{back_mib:.1f} MiB would come back > {BACK_LIMIT_MIB} MiB")
    return failures


# --- prepare, hide, restore -----------------------------------------------------------------


def prepare_init(weights_dir: Path, burst: Path, modes: tuple[str, ...] = ("pair", "single"),
                 ) -> dict[str, list[str]]:
    """Writes the shipped weights of ``modes`` as shards into ``burst/init/<mode>``, with the
    state they resume from; returns the shard names by mode."""
    import keras

    from model_defs import get_custom_objects
    from training.jax_train import save_shards

    written = {}
    for mode in modes:
        name = SHIPPED[mode]
        model = keras.models.load_model(weights_dir / f"{name}.keras",
                                        custom_objects=get_custom_objects(), compile=False)
        folder = burst / "init" / mode
        written[mode] = save_shards(model, folder, SHARD_MB)
        shutil.copyfile(weights_dir / f"{name}.state.json", folder / "state.json")
    return written


def prepare_packs(data: Path | None, burst: Path, workers: int = 2,
                  names: tuple[str, ...] = tuple(PACKS),
                  pack_all: Path | None = None) -> dict[str, int]:
    """Registers every pair of ``data`` once (or reads ``pack_all``, a pack of every group
    that ``training.pack --part all`` wrote) and writes ``burst/pack/<name>.npz`` for each of
    ``names`` (:data:`PACKS`); returns their pair counts."""
    import numpy as np

    from training.pack import build_pack, select_groups

    if pack_all is not None:
        with np.load(pack_all, allow_pickle=False) as loaded:
            everything = {k: loaded[k] for k in loaded.files}
    elif data is not None:
        everything = build_pack(data, "all", workers)
    else:
        raise ValueError("prepare_packs needs `data` or `pack_all`")
    keys = [str(k) for k in everything["keys"]]
    counts = {}
    (burst / "pack").mkdir(parents=True, exist_ok=True)
    for name in names:
        idx = select_groups(keys, exclude_groups=PACKS[name])
        arrays = {k: (v if v.ndim == 0 else v[idx]) for k, v in everything.items()}
        np.savez_compressed(burst / "pack" / f"{name}.npz", **arrays)  # type: ignore[arg-type]
        counts[name] = len(idx)
    return counts


def prepare_wheels(burst: Path) -> None:
    """Downloads the wheels the machine lacks (keras at this checkout's version, namex,
    optree) for its Python 3.12 on x86-64 into ``burst/whl``."""
    import keras

    target = burst / "whl"
    target.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                             "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                    "cp", *platforms, "-d", str(target), f"keras=={keras.__version__}",
                    "namex", "optree"], check=True)


_MARK = "# training.burst hide: left out of the device call until `restore`"


def _exclude_file(root: Path) -> Path:
    return root / _git("rev-parse", "--git-path", "info/exclude", root=root).strip()


def hide(root: Path = ROOT) -> list[str]:
    """Takes :data:`HIDDEN` out of git's index and ignores them, so that the device call
    leaves them behind; the files stay where they are. Returns what was hidden."""
    hidden = [h for h in HIDDEN if _git("ls-files", "--", h, root=root).strip()]
    if not hidden:
        return []
    exclude = _exclude_file(root)
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as fh:
        fh.writelines(f"{_MARK}\n/{h}\n" for h in hidden)
    _git("rm", "--cached", "-q", "--", *hidden, root=root)
    return hidden


def restore(root: Path = ROOT) -> list[str]:
    """Puts :data:`HIDDEN` back into git's index (as committed) and drops the ignore lines
    that :func:`hide` wrote. Returns what was restored."""
    exclude = _exclude_file(root)
    if exclude.is_file():
        lines = exclude.read_text().splitlines()
        keep, skip = [], False
        for line in lines:
            if line == _MARK:
                skip = True
                continue
            if skip:
                skip = False
                continue
            keep.append(line)
        exclude.write_text("".join(f"{line}\n" for line in keep))
    missing = [h for h in HIDDEN if not _git("ls-files", "--", h, root=root).strip()]
    if missing:
        _git("reset", "-q", "--", *missing, root=root)
    return missing


# --- launch (on the machine) and the dry run ------------------------------------------------


def launch(plan_name: str, minutes: float, out: Path, burst: Path = BURST,
           tiny: bool = False, log_dir: Path | None = None) -> int:
    """Runs PLAN's runs side by side, each on its share of the GPU; returns 0 when all
    succeeded. Their logs go to ``log_dir`` (not ``out``: every file there comes back)."""
    plan = PLANS[plan_name]
    cpus = os.cpu_count() or 2
    workers = max(1, cpus // len(plan) - 1)
    log_dir = log_dir or Path(tempfile.gettempdir())
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1",
               # Side by side, no process may take JAX's default 75% of the GPU's memory.
               XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / len(plan):.2f}")
    if tiny:
        env["JAX_PLATFORMS"] = "cpu"
    procs = []
    for run in plan:
        argv = run_argv(run, burst, out, minutes, workers, tiny=tiny)
        log = (log_dir / f"{run.name}.log").open("w")
        print(" ".join(argv), flush=True)
        procs.append((run, log, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                                 stderr=subprocess.STDOUT)))
    status = 0
    for run, log, proc in procs:
        code = proc.wait()
        log.close()
        lines = (log_dir / f"{run.name}.log").read_text(errors="replace").splitlines()
        noise = ("I0000", "W0000", "WARNING: All")
        print(f"== {run.name} ({run.mode}, pack {run.pack}, init {run.init}): exit {code}")
        print("\n".join([ln for ln in lines if not ln.startswith(noise)][-25:]), flush=True)
        status = status or code
    return status


def _synthetic_packs(burst: Path, names: set[str]) -> None:
    """Small packs of synthetic boards under ``burst/pack`` for the dry run where the real
    ones are not built (CI has no dataset); their groups are the real ones'."""
    import numpy as np

    from training.pack import build_pack, select_groups
    from training.synth import write_deeppcb_folder

    with tempfile.TemporaryDirectory() as tmp:
        for k, group in enumerate(("00041", "44000", "50600", "77000")):
            write_deeppcb_folder(Path(tmp), n_pairs=1, seed=10 * k, size=160, group=group)
        everything = build_pack(Path(tmp), "all", workers=1)
    keys = [str(k) for k in everything["keys"]]
    (burst / "pack").mkdir(parents=True, exist_ok=True)
    for name in names:
        idx = select_groups(keys, exclude_groups=PACKS[name])
        np.savez_compressed(burst / "pack" / f"{name}.npz",  # type: ignore[arg-type]
                            **{k: (v if v.ndim == 0 else v[idx]) for k, v in everything.items()})


def load_init(run: Run, burst: Path) -> None:
    """Loads ``run``'s initial weights into the model its flags describe (what the run does
    first on the machine): raises when they do not fit."""
    from training.jax_train import load_shards

    if run.init is None:
        return
    init = burst / "init" / run.init
    state = json.loads((init / "state.json").read_text())
    if state["config"]["mode"] != run.mode:
        raise ValueError(f"{init} holds a {state['config']['mode']} model; {run.name} is "
                         f"{run.mode}")
    load_shards(_built(_config(run)), init)


def dry_run(plan_name: str, minutes: float, burst: Path = BURST, root: Path = ROOT,
            strict: bool = False, out: Path | None = None) -> dict[str, Any]:
    """The check, then each run's initial weights loaded, then the launcher for two steps of
    a tiny model on the CPU. Returns the check's numbers and the runs' states; raises
    ``SystemExit`` on the first failure."""
    report = check(plan_name, minutes, burst, root, strict)
    for note in report.notes:
        print(f"note: {note}")
    if not report.ok:
        raise SystemExit("burst check failed:\n- " + "\n- ".join(report.failures))
    plan = PLANS[plan_name]
    burst_abs = burst if burst.is_absolute() else root / burst
    loaded = set()
    for run in plan:
        if (run.init, _config(run)) in loaded:
            continue
        loaded.add((run.init, _config(run)))
        if run.init is not None and not (burst_abs / "init" / run.init).is_dir():
            if strict:
                raise SystemExit(f"{burst / 'init' / run.init} is missing")
            print(f"note: {run.name}: no {burst / 'init' / run.init} here, its loading is "
                  "not checked")
            continue
        load_init(run, burst_abs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        packs = {r.pack for r in plan}
        missing = {p for p in packs if not (burst_abs / "pack" / f"{p}.npz").is_file()}
        pack_burst = burst_abs
        if missing:
            # The runs read burst/pack; where it lacks a pack, a copy of the folder with
            # synthetic packs stands in (init is not read by the tiny runs).
            pack_burst = tmp_path / "burst"
            if (burst_abs / "pack").is_dir():
                shutil.copytree(burst_abs / "pack", pack_burst / "pack")
            _synthetic_packs(pack_burst, missing)
        run_out = out or tmp_path / "out"
        started = time.time()
        status = launch(plan_name, minutes, run_out, pack_burst, tiny=True, log_dir=tmp_path)
        if status:
            raise SystemExit(f"the dry run's launcher failed (exit {status})")
        states = {r.name: json.loads((run_out / r.name / "state.json").read_text())
                  for r in plan}
    # The tiny runs start from scratch (step 0), whatever the run's init.
    bad = [n for n, s in states.items() if s["step"] != 2]
    if bad:
        raise SystemExit(f"runs {bad} did not train their two steps")
    return {**report.numbers, "dry_run_seconds": round(time.time() - started, 1),
            "states": {n: {"stint_steps": s["stint_steps"], "groups": s["split"]["groups"],
                           "config": s["config"]} for n, s in states.items()}}


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m training.burst COMMAND ...``."""
    p = argparse.ArgumentParser(prog="python -m training.burst", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write burst/: initial shards, packs, wheels")
    prep.add_argument("--data", type=Path, default=None,
                      help="DeepPCB-format folder (for the packs; without it, no packs)")
    prep.add_argument("--pack-all", type=Path, default=None,
                      help="a pack of every group already written (training.pack --part "
                           "all): the packs are cut from it instead of registering again")
    prep.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    prep.add_argument("--burst", type=Path, default=ROOT / BURST)
    prep.add_argument("--workers", type=int, default=2)
    prep.add_argument("--no-wheels", action="store_true", help="skip the wheel download")
    for name in ("check", "dry-run", "launch"):
        q = sub.add_parser(name)
        q.add_argument("plan", choices=sorted(PLANS))
        q.add_argument("--minutes", type=float, default=DEFAULT_MINUTES)
        q.add_argument("--burst", type=Path, default=BURST)
        if name != "launch":
            q.add_argument("--strict", action="store_true",
                           help="fail on anything the call itself would lack")
        else:
            q.add_argument("--out", type=Path, required=True)
    sub.add_parser("hide", help="leave weights/*.keras out of the device call")
    sub.add_parser("restore", help="put weights/*.keras back into git's index")
    args = p.parse_args(argv)
    if args.command == "prepare":
        written = prepare_init(args.weights_dir, args.burst)
        print(f"initial weights: {written}")
        if args.data is not None or args.pack_all is not None:
            counts = prepare_packs(args.data, args.burst, args.workers, pack_all=args.pack_all)
            print(f"packs: {counts}")
        if not args.no_wheels:
            prepare_wheels(args.burst)
        return 0
    if args.command == "hide":
        print(f"left out of git's index until `restore`: {hide()}")
        return 0
    if args.command == "restore":
        print(f"back in git's index: {restore()}")
        return 0
    if args.command == "launch":
        return launch(args.plan, args.minutes, args.out, args.burst)
    if args.command == "check":
        report = check(args.plan, args.minutes, args.burst, strict=args.strict)
        print(json.dumps(report.numbers, indent=2))
        for note in report.notes:
            print(f"note: {note}")
        for failure in report.failures:
            print(f"FAILED: {failure}")
        return 0 if report.ok else 1
    print(json.dumps(dry_run(args.plan, args.minutes, args.burst, strict=args.strict),
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
