"""Export of a training run as shippable weights and model card (``pcb-inspect export``).

The training checkpoint carries the optimizer state and the training dtype policy. The export
rebuilds the same architecture under float32, copies the weights in, and saves a model with
no optimizer (about a third of the checkpoint's size), then writes ``model_card.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_NAME = "pcb_defect_unet.keras"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Adds the export arguments to ``parser`` (or a new one) and returns it."""
    p = parser or argparse.ArgumentParser(prog="pcb-inspect export", description=__doc__)
    p.add_argument("--run", required=True, type=Path, help="training run folder")
    p.add_argument("--out", type=Path, default=Path("weights"), help="output folder")
    p.add_argument("--checkpoint", default="best.keras", help="checkpoint in the run folder")
    p.add_argument("--name", default="pcb-defect-unet")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--min-area-px", type=int, default=12)
    p.add_argument("--tile-size", type=int, default=640)
    p.add_argument("--pixels-per-mm", type=float, default=48.0)
    p.add_argument("--extra", type=Path, default=None,
                   help="JSON file merged into the card (metrics, ablation, notes)")
    return p


def annotation_box_margin(data: Path, seed: int = 42, val_fraction: float = 0.1) -> int:
    """Median margin (pixels a side) between DeepPCB's boxes and the defects' tight boxes.

    Measured on the training part of the split only.
    """
    from training.data import load_sample, read_split, split_train_val

    train, _ = split_train_val(read_split(data), val_fraction, seed)
    pads = []
    for sample in train[:300]:
        _, mask, boxes = load_sample(sample)
        for b in boxes:
            ys, xs = np.nonzero(mask[b.y1 : b.y2, b.x1 : b.x2] == b.label)
            if len(xs):
                pads.append(((b.x2 - b.x1) - (xs.max() - xs.min() + 1)) / 2)
                pads.append(((b.y2 - b.y1) - (ys.max() - ys.min() + 1)) / 2)
    return int(round(float(np.median(pads)))) if pads else 0


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Writes ``weights/pcb_defect_unet.keras`` and ``model_card.json``; returns the card."""
    import keras

    from app.inference.card import write_card
    from model_defs import CLASS_NAMES, build_model, get_custom_objects

    config = json.loads((args.run / "config.json").read_text())
    summary_path = args.run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    trained = keras.models.load_model(
        args.run / args.checkpoint, custom_objects=get_custom_objects(), compile=False
    )
    keras.mixed_precision.set_global_policy("float32")
    depth = int(config.get("encoder_depth", 4))
    model = build_model(encoder_depth=depth, edge_enhancement=config.get("no_edge") != "True")
    model.set_weights([np.asarray(w, dtype=np.float32) for w in trained.get_weights()])
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
        "annotation_box_margin_px": annotation_box_margin(Path(config["data"])),
        "architecture": {
            "encoder": f"ResNet50 (keras.applications), cut after stage {depth}",
            "decoder": "U-Net, skips at strides 8, 4, 2 and 1",
            "edge_enhancement": config.get("no_edge") != "True",
            "parameters": int(model.count_params()),
            "weights_dtype": "float32",
            "file_bytes": weights.stat().st_size,
        },
        "training": {"config": config, "summary": summary},
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
