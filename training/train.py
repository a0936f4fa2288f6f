"""Training of the defect model on a DeepPCB-format folder (``pcb-inspect train``)."""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from training.data import Sample

LOSSES = ("dice_iou_ce", "dice_iou", "ce")
CONFIG_NAME = "config.json"
SPLIT_NAME = "split.json"


class TrainConfig(BaseModel):
    """A run's settings, typed: what ``pcb-inspect train`` was given (defaults: the flags').

    Saved in the run folder as ``config.json`` with JSON's own types (``"seed": 42``,
    ``"no_edge": false``), and read back by ``pcb-inspect export``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The DeepPCB-format folder, or several (e.g. DeepPCB and `pcb-inspect export-reviews`).
    data: Path | list[Path]
    out: Path
    max_minutes: float
    epochs: int
    steps_per_epoch: int
    batch_size: int
    crop: int
    defect_crop_prob: float
    val_fraction: float
    val_images: int
    loss: Literal["dice_iou_ce", "dice_iou", "ce"]
    no_edge: bool
    encoder_weights: Literal["none", "imagenet"]
    encoder_depth: int = Field(ge=2, le=5)
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"]
    learning_rate: float
    seed: int
    cache: Path | None
    verbose: int

    @field_validator("data", mode="before")
    @classmethod
    def _one_folder_as_before(cls, value: object) -> object:
        # One folder stays one path, so a single-folder run's config.json reads as it did.
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    @property
    def folders(self) -> list[Path]:
        """The data folders, in the order given."""
        return list(self.data) if isinstance(self.data, list) else [self.data]

    @field_validator("cache", mode="before")
    @classmethod
    def _none_as_written_by_older_runs(cls, value: object) -> object:
        # Runs before the typed config wrote every value with str(), None included.
        return None if value == "None" else value

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The config of parsed :func:`build_parser` arguments."""
        return cls(**vars(args))

    @classmethod
    def load(cls, run: Path) -> TrainConfig:
        """Reads ``run/config.json``; an older run's all-string values are converted."""
        return cls.model_validate_json((run / CONFIG_NAME).read_text())

    def save(self) -> None:
        """Writes ``config.json`` into the run folder (``out``)."""
        (self.out / CONFIG_NAME).write_text(self.model_dump_json(indent=2) + "\n")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Adds the training arguments to ``parser`` (or a new one) and returns it."""
    p = parser or argparse.ArgumentParser(prog="pcb-inspect train", description=__doc__)
    p.add_argument("--data", required=True, type=Path, action="extend", nargs="+",
                   help="DeepPCB-format folder; several: --data A B or --data A --data B")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs)")
    p.add_argument("--max-minutes", type=float, default=60.0, help="wall-time budget")
    p.add_argument("--epochs", type=int, default=1000, help="upper bound on epochs")
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="training crop size (multiple of 32)")
    p.add_argument("--defect-crop-prob", type=float, default=0.7,
                   help="share of crops centred near an annotated defect")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-images", type=int, default=24,
                   help="validation images scored after each epoch (full 640x640)")
    p.add_argument("--loss", choices=LOSSES, default="dice_iou_ce")
    p.add_argument("--no-edge", action="store_true", help="ablation: no EdgeEnhancementLayer")
    p.add_argument("--encoder-weights", choices=("none", "imagenet"), default="none",
                   help="'imagenet' downloads weights: needs internet")
    p.add_argument("--encoder-depth", type=int, choices=(2, 3, 4, 5), default=4)
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"),
                   default="float32")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cache", type=Path, default=None, help="npz cache of decoded data")
    p.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bar, 2 a line")
    return p


def _boxes_to_centers(boxes: list[list[Any]], max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    centers = np.zeros((len(boxes), max_boxes, 2), dtype=np.int32)
    counts = np.zeros((len(boxes),), dtype=np.int32)
    for i, bxs in enumerate(boxes):
        bxs = bxs[:max_boxes]
        counts[i] = len(bxs)
        for j, b in enumerate(bxs):
            centers[i, j] = ((b.y1 + b.y2) // 2, (b.x1 + b.x2) // 2)
    return centers, counts


def make_train_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    boxes: list[list[Any]],
    crop: int,
    batch_size: int,
    defect_crop_prob: float,
    seed: int,
) -> Any:
    """Builds the augmented ``tf.data`` training pipeline.

    Each element is a random ``crop x crop`` window (centred near an annotated defect with
    probability ``defect_crop_prob``, so the rare defect pixels are seen often), flipped and
    rotated by a random multiple of 90 degrees; PCB layouts have no preferred orientation.

    Args:
        images: ``(N, H, W)`` uint8 boards.
        masks: ``(N, H, W)`` uint8 class masks.
        boxes: Per image, its annotated boxes.
        crop: Crop size.
        batch_size: Batch size.
        defect_crop_prob: Probability of a defect-centred crop.
        seed: Seed of the shuffle and of the augmentations.

    Returns:
        An infinite ``tf.data.Dataset`` of ``(image (B, crop, crop, 1) float32,
        mask (B, crop, crop) int32)``.
    """
    import tensorflow as tf

    n, h, w = images.shape
    if crop > min(h, w):
        raise ValueError(f"`crop` must be <= the image size {h}x{w}. Received: crop={crop}")
    centers, counts = _boxes_to_centers(boxes, max_boxes=max(1, max(len(b) for b in boxes)))
    rng = tf.random.Generator.from_seed(seed)

    def sample(image: Any, mask: Any, ctr: Any, count: Any) -> tuple[Any, Any]:
        stacked = tf.stack([image, mask], axis=-1)  # (H, W, 2) uint8
        k = rng.uniform([], 0, tf.maximum(count, 1), dtype=tf.int32)
        jitter = rng.uniform([2], -(crop // 3), crop // 3 + 1, dtype=tf.int32)
        limit = tf.constant([h - crop, w - crop], dtype=tf.int32)
        near = tf.clip_by_value(ctr[k] - crop // 2 + jitter, 0, limit)
        anywhere = tf.cast(rng.uniform([2]) * tf.cast(limit + 1, tf.float32), tf.int32)
        use_near = tf.logical_and(rng.uniform([]) < defect_crop_prob, count > 0)
        off = tf.where(use_near, near, anywhere)
        window = stacked[off[0] : off[0] + crop, off[1] : off[1] + crop]
        window = tf.image.rot90(window, rng.uniform([], 0, 4, dtype=tf.int32))
        window = tf.cond(rng.uniform([]) < 0.5, lambda: tf.reverse(window, [1]), lambda: window)
        window = tf.reshape(window, (crop, crop, 2))
        return tf.cast(window[..., :1], tf.float32), tf.cast(window[..., 1], tf.int32)

    ds = tf.data.Dataset.from_tensor_slices((images, masks, centers, counts))
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    # One parallel call keeps the generator's sequence deterministic for a given seed.
    ds = ds.map(sample, num_parallel_calls=1)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def make_loss(kind: str) -> Any:
    """Returns the loss named ``kind`` (one of :data:`LOSSES`)."""
    import keras

    from model_defs import DiceIoULoss

    # Overlaps are pooled over the batch: per image, a class absent from a crop turns any
    # residual probability into a large loss, which drives early training to predict nothing.
    if kind == "dice_iou_ce":
        return DiceIoULoss(cross_entropy_weight=1.0, reduction_mode="per_batch")
    if kind == "dice_iou":
        return DiceIoULoss(reduction_mode="per_batch")
    if kind == "ce":
        return keras.losses.SparseCategoricalCrossentropy()
    raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={kind!r}")


class TimeBudget:
    """Keras callback that stops training once a wall-time budget is spent."""

    def __new__(cls, minutes: float, started: float) -> Any:  # noqa: D102
        import keras

        class _Budget(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                if time.time() - started > minutes * 60:
                    self.model.stop_training = True

        return _Budget()


def _best_so_far(out: Path) -> float | None:
    """Lowest ``val_loss`` logged in the run folder while ``best.keras`` exists, else None.

    A resumed run must not replace ``best.keras`` with a model worse than the one it holds.
    """
    history = out / "history.csv"
    if not (out / "best.keras").is_file() or not history.is_file():
        return None
    with history.open(newline="") as f:
        values = [float(row["val_loss"]) for row in csv.DictReader(f) if row.get("val_loss")]
    return min(values) if values else None


def run_split(config: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """The run's own ``(train, val)`` samples: as its ``split.json`` lists them.

    A run folder without one (it was never started) gets the split its config's seed and
    validation fraction give, which is what training writes there.

    Raises:
        ValueError: ``split.json`` names boards that ``config.data`` does not hold.
    """
    from training.data import read_split, split_train_val

    samples = [s for folder in config.folders for s in read_split(folder)]
    seen: dict[str, Path] = {}
    for s in samples:
        # The split and the cache are keyed by board: two folders' boards must differ.
        if seen.setdefault(s.key, s.test_path) != s.test_path:
            raise ValueError(f"board {s.key} is in two data folders ({seen[s.key]} and "
                             f"{s.test_path}); expected each board once")
    path = config.out / SPLIT_NAME
    if not path.is_file():
        return split_train_val(samples, config.val_fraction, config.seed)
    split = json.loads(path.read_text())
    by_key = {s.key: s for s in samples}
    missing = [k for k in split["train"] + split["val"] if k not in by_key]
    if missing:
        raise ValueError(
            f"{path} lists {len(missing)} boards that {config.data} does not hold "
            f"(e.g. {missing[:3]}); expected the folder the run was trained on"
        )
    return [by_key[k] for k in split["train"]], [by_key[k] for k in split["val"]]


def run(args: argparse.Namespace | TrainConfig) -> dict[str, Any]:
    """Trains a model as ``args`` say and writes the run folder.

    Args:
        args: Parsed arguments of :func:`build_parser`, or their :class:`TrainConfig`.

    Returns:
        A summary dict (also written as ``summary.json`` in the run folder).
    """
    import keras
    import tensorflow as tf

    from model_defs import build_model
    from training.data import load_arrays

    config = args if isinstance(args, TrainConfig) else TrainConfig.from_args(args)
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    config.save()

    # A resumed run keeps the split it started with (run_split reads split.json).
    train_s, val_s = run_split(config)
    images, masks, boxes = load_arrays(train_s, cache=config.cache)
    val_images, val_masks, _ = load_arrays(val_s[: config.val_images])
    (out / SPLIT_NAME).write_text(
        json.dumps({"train": [s.key for s in train_s], "val": [s.key for s in val_s]})
    )
    train_ds = make_train_dataset(
        images, masks, boxes, config.crop, config.batch_size, config.defect_crop_prob,
        config.seed,
    )
    val_ds = tf.data.Dataset.from_tensor_slices(
        (val_images[..., None].astype("float32"), val_masks.astype("int32"))
    ).batch(4)

    model = build_model(
        encoder_weights=None if config.encoder_weights == "none" else config.encoder_weights,
        encoder_depth=config.encoder_depth,
        edge_enhancement=not config.no_edge,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=make_loss(config.loss),
        metrics=[keras.metrics.MeanIoU(num_classes=7, sparse_y_pred=False, name="miou")],
    )
    callbacks = [
        # Kept after a finished run too, so a rerun with a larger --epochs continues it.
        keras.callbacks.BackupAndRestore(str(out / "backup"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(out / "best.keras"), monitor="val_loss",
                                        save_best_only=True,
                                        initial_value_threshold=_best_so_far(out)),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=4,
                                          min_lr=1e-5),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        TimeBudget(config.max_minutes, started),
    ]
    history = model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=val_ds,
        callbacks=callbacks,
        verbose=config.verbose,
        shuffle=False,  # the dataset shuffles itself; Keras warns when asked to
    )
    summary = {
        "epochs_run": len(history.history.get("loss", [])),
        "best_val_loss": float(min(history.history.get("val_loss", [float("nan")]))),
        "wall_minutes": round((time.time() - started) / 60, 1),
        "hardware": f"{platform.processor() or platform.machine()}, "
                    f"{len(tf.config.list_physical_devices('GPU'))} GPU(s)",
        "train_images": len(train_s),
        "val_images": len(val_s),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pcb-inspect train``."""
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
