"""Export of a training run as shippable weights and model card (``pcb-inspect export``).

The training checkpoint carries the optimizer state and the training dtype policy. The export
rebuilds the same architecture under float32, copies the weights in, and saves a model with
no optimizer (about a third of the checkpoint's size), then writes ``model_card.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.train import TrainConfig, run_split

if TYPE_CHECKING:
    from training.data import Sample

WEIGHTS_NAME = "pcb_defect_unet.keras"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Adds the export arguments to ``parser`` (or a new one) and returns it."""
    p = parser or argparse.ArgumentParser(prog="pcb-inspect export", description=__doc__)
    p.add_argument("--run", required=True, type=Path, help="training run folder")
    p.add_argument("--out", type=Path, default=Path("weights"), help="output folder")
    p.add_argument("--checkpoint", default="best.keras",
                   help="checkpoint in the run folder: a .keras model, or a .weights.h5 file "
                        "(e.g. backup/latest.weights.h5, the last epoch)")
    p.add_argument("--name", default="pcb-defect-unet")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--min-area-px", type=int, default=12)
    p.add_argument("--tile-size", type=int, default=640)
    p.add_argument("--pixels-per-mm", type=float, default=48.0)
    p.add_argument("--recalibrate-bn", type=int, default=0, metavar="BATCHES",
                   help="re-estimate BatchNorm statistics on this many batches of 4 full "
                        "training boards (0: keep the training-time moving averages)")
    p.add_argument("--extra", type=Path, default=None,
                   help="JSON file merged into the card (metrics, ablation, notes)")
    return p


def annotation_box_margin(train: Sequence[Sample]) -> int:
    """Median margin (pixels a side) between DeepPCB's boxes and the defects' tight boxes.

    Args:
        train: The run's training boards (never its validation ones); the first 300 count.
    """
    from training.data import load_sample

    pads = []
    for sample in train[:300]:
        _, mask, boxes = load_sample(sample)
        for b in boxes:
            ys, xs = np.nonzero(mask[b.y1 : b.y2, b.x1 : b.x2] == b.label)
            if len(xs):
                pads.append(((b.x2 - b.x1) - (xs.max() - xs.min() + 1)) / 2)
                pads.append(((b.y2 - b.y1) - (ys.max() - ys.min() + 1)) / 2)
    return int(round(float(np.median(pads)))) if pads else 0


def recalibrate_batchnorm(model: Any, images: np.ndarray, batch_size: int = 4) -> int:
    """Re-estimates every BatchNorm layer's statistics on whole boards (``(N, H, W)`` uint8),
    ``batch_size`` a forward pass (:func:`training.batchnorm.recalibrate`); returns the number
    of batches used."""
    from training.batchnorm import recalibrate

    starts = range(0, len(images) - batch_size + 1, batch_size)
    return recalibrate(model, (images[s : s + batch_size, ..., None].astype("float32")
                               for s in starts))


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Writes ``weights/pcb_defect_unet.keras`` and ``model_card.json``; returns the card."""
    import keras

    from app.inference.card import write_card
    from model_defs import CLASS_NAMES, build_model, get_custom_objects

    # The run folder may have moved since training: its split.json is read from where it is.
    config = TrainConfig.load(args.run).model_copy(update={"out": args.run})
    train, _ = run_split(config)
    summary_path = args.run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    keras.mixed_precision.set_global_policy("float32")
    depth = config.encoder_depth
    edge = not config.no_edge
    model = build_model(encoder_depth=depth, edge_enhancement=edge)
    checkpoint = args.run / args.checkpoint
    if checkpoint.name.endswith(".weights.h5"):
        # A BackupAndRestore file: the model's weights (and the optimizer's, not needed here).
        model.load_weights(checkpoint, skip_mismatch=False)
    else:
        trained = keras.models.load_model(
            checkpoint, custom_objects=get_custom_objects(), compile=False
        )
        model.set_weights([np.asarray(w, dtype=np.float32) for w in trained.get_weights()])
    recalibrated = 0
    if args.recalibrate_bn:
        from training.data import load_arrays

        images, _, _ = load_arrays(train[: args.recalibrate_bn * 4])
        recalibrated = recalibrate_batchnorm(model, images)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / WEIGHTS_NAME
    model.save(weights)
    card: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "classes": list(CLASS_NAMES),
        "input": {"tile_size": args.tile_size, "multiple_of": 2 ** depth, "channels": 1,
                  "dtype": "uint8"},
        "pixels_per_mm": args.pixels_per_mm,
        "thresholds": {"confidence": args.threshold, "min_area_px": args.min_area_px},
        "annotation_box_margin_px": annotation_box_margin(train),
        "architecture": {
            "encoder": f"ResNet50 (keras.applications), cut after stage {depth}",
            "decoder": "U-Net, skips at strides 8, 4, 2 and 1",
            "edge_enhancement": edge,
            "parameters": int(model.count_params()),
            "weights_dtype": "float32",
            "file_bytes": weights.stat().st_size,
        },
        "training": {"config": config.model_dump(mode="json"), "summary": summary,
                     "batchnorm_recalibrated_on_boards": recalibrated * 4},
    }
    if args.extra:
        card.update(json.loads(args.extra.read_text()))
    write_card(args.out / "model_card.json", card)
    return card


def run(args: argparse.Namespace) -> int:
    """Entry point of ``pcb-inspect export``."""
    card = export(args)
    print(json.dumps({k: card[k] for k in ("name", "version", "architecture")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(build_parser().parse_args()))
