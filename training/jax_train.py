"""Time-boxed training under Keras 3's JAX backend, resumable from committed state.

``KERAS_BACKEND=jax python -m training.jax_train --pack runs/pack/train.npz --out DIR
--mode pair --minutes 8`` trains the golden-board (``pair``) or single-image (``single``)
model for a wall-time budget, on whatever JAX sees (an H100, or the CPU in CI), with a data
pipeline that needs no TensorFlow (:mod:`training.sampler`).

The loop is a plain JAX loop over ``model.stateless_call`` and
``optimizer.stateless_apply``, so the learning rate is set per step from Python:

* **schedule**: linear warmup, then cosine to ``min_lr_ratio`` of the peak. It is indexed by
  step; the number of steps is ``--steps``, or, with ``--minutes``, measured after the first
  steps from the real step rate and then fixed (so the cosine ends when the budget does);
* **EMA** of the weights (decay ``--ema``, with the usual ``(1 + t) / (10 + t)`` warmup):
  what is checkpointed and exported is the EMA, with its BatchNorm statistics re-estimated
  on ``--bn-batches`` training batches (:mod:`training.batchnorm`): the moving statistics
  that training kept belong to the live weights, which the EMA lags;
* **checkpoints** every ``--checkpoint-minutes`` into ``DIR``: the weights split into
  ``weights-NN.npz`` shards of at most ``--shard-mb`` (kernels in float16, everything else in
  float32), written atomically, and ``state.json`` (step, schedule, seed, split, config,
  elapsed time). The device tool returns at most 8 files of 16 MiB, hence the shards.

``python -m training.convert`` turns such a folder into a ``.keras`` file that TensorFlow
loads with ``custom_objects``. A later stint resumes with ``--init`` (a ``.keras`` file or a
checkpoint folder) and ``--state`` (its ``state.json``): the step count, the data stream and
the training-time total continue from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: Kernel arrays are stored in float16 in checkpoints (half the size); vectors (biases,
#: BatchNorm statistics, whose variances can be tiny) stay float32.
_HALF_MIN_NDIM = 2
#: First sampler index of the batches that re-estimate BatchNorm statistics.
_BN_BATCH_BASE = 10**9


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m training.jax_train``."""
    p = argparse.ArgumentParser(prog="python -m training.jax_train", description=__doc__)
    p.add_argument("--pack", required=True, type=Path, help="training pack (training.pack)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder")
    p.add_argument("--mode", choices=("pair", "single"), default="pair")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-time budget (0: --steps)")
    p.add_argument("--steps", type=int, default=0, help="steps of this stint (0: by time)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.02)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--encoder-depth", type=int, default=4, choices=(2, 3, 4, 5))
    p.add_argument("--decoder-filters", type=str, default="",
                   help="comma-separated decoder widths (default: the model's)")
    p.add_argument("--no-reduction", action="store_true", help="the wide (original) decoder")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32")
    p.add_argument("--workers", type=int, default=4, help="data threads")
    p.add_argument("--checkpoint-minutes", type=float, default=2.0)
    p.add_argument("--shard-mb", type=float, default=15.0)
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights: a .keras file or a checkpoint folder")
    p.add_argument("--state", type=Path, default=None,
                   help="state.json of the run to continue (step, seed, time totals)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--bn-batches", type=int, default=0,
                   help="re-estimate the EMA weights' BatchNorm statistics on this many "
                        "training batches at each checkpoint (0: keep the live statistics)")
    p.add_argument("--template-negatives", type=float, default=0.0,
                   help="single mode: share of crops cut from the defect-free template, "
                        "with an empty mask")
    p.add_argument("--synthetic", type=float, default=0.0,
                   help="share of crops cut from synthetic boards (training.synth)")
    p.add_argument("--synthetic-boards", type=int, default=64,
                   help="synthetic boards drawn once at start, cropped at random")
    return p


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Warmup + cosine learning rate at ``step`` (0-based within the stint)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """``build_model`` arguments from a run's config (shared with :mod:`training.convert`)."""
    filters = config.get("decoder_filters") or None
    return {
        "encoder_depth": int(config["encoder_depth"]),
        "decoder_filters": tuple(filters) if filters else None,
        "reference": config["mode"] == "pair",
        "decoder_reduction": bool(config["decoder_reduction"]),
        "name": "pcb_pair_unet" if config["mode"] == "pair" else "pcb_defect_unet",
    }


def save_shards(model: Any, folder: Path, shard_mb: float) -> list[str]:
    """Writes ``model``'s weights into ``weights-NN.npz`` shards, atomically per file."""
    folder.mkdir(parents=True, exist_ok=True)
    limit = shard_mb * 2**20
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0.0
    for v in model.weights:
        a = np.asarray(v.numpy())
        a = a.astype(np.float16 if a.ndim >= _HALF_MIN_NDIM else np.float32)
        if size + a.nbytes > limit and shards[-1]:
            shards.append({})
            size = 0.0
        shards[-1][v.path] = a
        size += a.nbytes
    names = []
    for i, arrays in enumerate(shards):
        name = f"weights-{i:02d}.npz"
        tmp = folder / (name + ".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, folder / name)
        names.append(name)
    for stale in folder.glob("weights-*.npz"):
        if stale.name not in names:
            stale.unlink()
    return names


def load_shards(model: Any, folder: Path) -> None:
    """Loads ``weights-NN.npz`` shards into ``model``, matching variables by path."""
    arrays: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("weights-*.npz")):
        with np.load(shard) as data:
            arrays.update({k: data[k] for k in data.files})
    missing = [v.path for v in model.weights if v.path not in arrays]
    if missing:
        raise ValueError(
            f"checkpoint {folder} lacks {len(missing)} of the model's variables, e.g. "
            f"{missing[:3]}: was it written for another model configuration?"
        )
    for v in model.weights:
        v.assign(arrays[v.path].astype(v.dtype))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def make_train_step(model: Any, lr: float, weight_decay: float) -> tuple[Any, Any]:
    """The jitted training step and its initial state (what training and ``bench.decoder`` run).

    ``step(state, lr, decay, x, y) -> (loss, state)``: DiceIoULoss + CE pooled over the batch,
    AdamW (clipnorm 1) at the learning rate ``lr`` passed in (so the schedule is set from
    Python each step), then the EMA of the weights with ``decay``. ``state`` is
    ``(trainable, non_trainable, optimizer, ema)`` lists of arrays; it is donated to each step.
    """
    import jax
    import keras

    from model_defs import DiceIoULoss

    loss_fn = DiceIoULoss(cross_entropy_weight=1.0, reduction_mode="per_batch")
    optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay,
                                       clipnorm=1.0)
    optimizer.build(model.trainable_variables)
    lr_index = [i for i, v in enumerate(optimizer.variables) if v.path.endswith("learning_rate")]
    if len(lr_index) != 1:
        raise RuntimeError("cannot find the optimizer's learning-rate variable")

    def loss_and_state(tv: Any, ntv: Any, x: Any, y: Any) -> tuple[Any, Any]:
        y_pred, ntv = model.stateless_call(tv, ntv, x, training=True)
        return loss_fn(y, y_pred), ntv

    grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

    def train_step(state: Any, lr: Any, decay: Any, x: Any, y: Any) -> tuple[Any, Any]:
        tv, ntv, ov, ema = state
        (loss, ntv), grads = grad_fn(tv, ntv, x, y)
        ov = list(ov)
        ov[lr_index[0]] = lr.astype(ov[lr_index[0]].dtype)
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        ema = [e * decay + p.astype(e.dtype) * (1 - decay) for e, p in zip(ema, tv, strict=True)]
        return loss, (tv, ntv, ov, ema)

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
        [jax.numpy.array(v.value, dtype="float32", copy=True) for v in model.trainable_variables],
    )
    return jax.jit(train_step, donate_argnums=(0,)), state


class JaxTrainConfig(BaseModel):
    """What a stint trains, typed: the model and the optimisation, from the command line.

    Written into ``state.json`` as ``config``, which :mod:`training.convert`,
    :mod:`training.stint` and :mod:`training.burst` read back to rebuild the same model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["pair", "single"]
    encoder_depth: int = Field(ge=2, le=5)
    decoder_filters: list[int]
    decoder_reduction: bool
    crop: int
    batch_size: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    ema: float
    precision: Literal["float32", "mixed_bfloat16"]
    loss: str
    bn_batches: int
    template_negatives: float
    synthetic: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JaxTrainConfig:
        """The config of parsed :func:`build_parser` arguments."""
        if args.template_negatives and args.mode != "single":
            raise SystemExit(
                "--template-negatives is for the single-image model (the pair model sees the "
                f"template as its reference). Received: --mode {args.mode}"
            )
        return cls(
            mode=args.mode,
            encoder_depth=args.encoder_depth,
            decoder_filters=[int(f) for f in args.decoder_filters.split(",") if f],
            decoder_reduction=not args.no_reduction,
            crop=args.crop,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            min_lr_ratio=args.min_lr_ratio,
            weight_decay=args.weight_decay,
            ema=args.ema,
            precision=args.precision,
            loss="DiceIoULoss(cross_entropy_weight=1.0, reduction_mode='per_batch')",
            bn_batches=args.bn_batches,
            template_negatives=args.template_negatives,
            synthetic=args.synthetic,
        )


@dataclasses.dataclass
class _Stint:
    """One stint of training: what it continues from, its model and data, and its state."""

    args: argparse.Namespace
    config: JaxTrainConfig
    previous: dict[str, Any]
    started: float
    model: Any
    pack: Any
    sampler: Any

    @property
    def step0(self) -> int:
        return int(self.previous.get("step", 0))

    @property
    def seed(self) -> int:
        return int(self.previous.get("seed", self.args.seed))

    def checkpoint(self, state: Any, step: int, total: int, losses: list[float],
                   final: bool) -> None:
        """Writes the EMA weights (BatchNorm statistics re-estimated if asked) and state.json."""
        from training.batchnorm import recalibrate

        _, ntv, _, ema = state
        for v, value in zip(self.model.trainable_variables, ema, strict=True):
            v.assign(value)
        for v, value in zip(self.model.non_trainable_variables, ntv, strict=True):
            v.assign(value)
        if self.config.bn_batches:
            # Batches far past any training step: crops the run never trained on, drawn the
            # same way, so the statistics are those of the training distribution.
            recalibrate(self.model, (self.sampler.batch(_BN_BATCH_BASE + k)[0]
                                     for k in range(self.config.bn_batches)))
        args = self.args
        shards = save_shards(self.model, args.out, args.shard_mb)
        elapsed = time.time() - self.started
        _write_json(args.out / "state.json", {
            "step": self.step0 + step,
            "stint_steps": step,
            "stint_total_steps": total,
            "seed": self.seed,
            "config": self.config.model_dump(mode="json"),
            "split": {"pack": str(args.pack), "pairs": len(self.pack.keys),
                      "groups": sorted(set(self.pack.groups))},
            "train_seconds_total": round(float(self.previous.get("train_seconds_total", 0))
                                         + elapsed, 1),
            "stints": int(self.previous.get("stints", 0)) + (1 if final else 0),
            "last_loss": round(float(np.mean(losses[-50:])), 5) if losses else None,
            "hardware": _hardware(),
            "shards": shards,
            "final": final,
        })

    def train(self) -> None:
        """Steps until ``--steps`` or the time budget, checkpointing on the way and at the end."""
        import jax

        from training.sampler import prefetch

        args, config = self.args, self.config
        train_step_jit, state = make_train_step(self.model, config.lr, config.weight_decay)
        budget = args.minutes * 60
        total = args.steps or 10**9
        losses: list[float] = []
        log = args.out / "train_log.jsonl"
        last_ckpt = time.time()
        t_rate = None
        step = 0
        for x, y in prefetch(self.sampler, start=self.step0, workers=args.workers):
            if step == 10:
                jax.block_until_ready(state[0])
                t_rate = time.time()  # after compilation
            if step == 60 and t_rate is not None and args.minutes and not args.steps:
                rate = 50 / (time.time() - t_rate)
                remaining = budget - (time.time() - self.started) - 20  # time for the last save
                total = max(config.warmup_steps + 1, 60 + int(rate * remaining))
                print(f"measured {rate:.2f} steps/s: this stint runs {total} steps", flush=True)
            lr = lr_at(step, config.lr, config.warmup_steps, total, config.min_lr_ratio)
            t = self.step0 + step
            decay = min(config.ema, (1 + t) / (10 + t))
            loss, state = train_step_jit(state, np.float32(lr), np.float32(decay), x, y)
            step += 1
            if step % args.log_every == 0 or step == 1:
                value = float(loss)
                losses.append(value)
                line = {"step": self.step0 + step, "loss": round(value, 5), "lr": round(lr, 7),
                        "elapsed_s": round(time.time() - self.started, 1)}
                with log.open("a") as fh:
                    fh.write(json.dumps(line) + "\n")
                print(json.dumps(line), flush=True)
            out_of_time = bool(budget) and time.time() - self.started > budget - 15
            if step >= total or out_of_time:
                break
            if time.time() - last_ckpt > args.checkpoint_minutes * 60:
                self.checkpoint(state, step, total, losses, final=False)
                last_ckpt = time.time()
        self.checkpoint(state, step, total, losses, final=True)


def _load_init(model: Any, init: Path | None) -> None:
    """Starts ``model`` from a checkpoint folder or a ``.keras`` file, if one is given."""
    import keras

    from model_defs import get_custom_objects

    if init is None:
        return
    if init.is_dir():
        load_shards(model, init)
    else:
        saved = keras.models.load_model(init, custom_objects=get_custom_objects(), compile=False)
        model.set_weights(saved.get_weights())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains as ``args`` say; returns the final state (also in ``OUT/state.json``)."""
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(
            f"training.jax_train needs KERAS_BACKEND=jax. Received: {keras.backend.backend()}"
        )
    from model_defs import build_model
    from training.pack import load_pack
    from training.sampler import CropSampler

    started = time.time()
    previous: dict[str, Any] = json.loads(args.state.read_text()) if args.state else {}
    config = JaxTrainConfig.from_args(args)
    if previous and previous.get("config", {}).get("mode", args.mode) != args.mode:
        raise SystemExit(f"--state is a {previous['config']['mode']} run, not {args.mode}")
    step0 = int(previous.get("step", 0))
    seed = int(previous.get("seed", args.seed))
    keras.utils.set_random_seed(seed + step0)
    keras.mixed_precision.set_global_policy(config.precision)
    pack = load_pack(args.pack)
    model = build_model(**model_kwargs(config.model_dump()))
    _load_init(model, args.init)
    sampler = CropSampler(pack, config.crop, config.batch_size, pair=config.mode == "pair",
                          seed=seed, template_negative_prob=config.template_negatives,
                          synthetic_prob=config.synthetic,
                          synthetic_boards=args.synthetic_boards if config.synthetic else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    _Stint(args, config, previous, started, model, pack, sampler).train()
    final: dict[str, Any] = json.loads((args.out / "state.json").read_text())
    print(json.dumps({k: final[k] for k in ("step", "train_seconds_total", "last_loss")}))
    return final


def _hardware() -> str:
    import jax

    devices = jax.devices()
    kind = devices[0].device_kind if devices else "unknown"
    return f"{kind} x{len(devices)} ({platform.machine()}, {os.cpu_count()} CPU threads)"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
