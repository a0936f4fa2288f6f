"""The end of a training stint: convert, card, evaluate, and ship only when better.

``python -m training.stint --ckpt DIR --data ../shared/datasets/deeppcb [--ship]``

1. converts the checkpoint folder of :mod:`training.jax_train` (a GPU burst's, or a CPU
   stint's) into ``runs/stint/<name>.keras`` with :mod:`training.convert`;
2. writes its model card (mode, classes, input, architecture, training totals and hardware
   from the run's ``state.json``);
3. evaluates it on the held-out board groups (both protocols, per-detection dump), choosing
   the operating point there, which goes into the card;
4. with ``--ship``, installs weights, card, ``.state.json`` and evaluation into ``weights/``
   **only if** it beats the shipped model of the same mode on README-protocol F (or the
   shipped one has no evaluation of this protocol yet), so one stint adds at most one
   weights file to the repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

#: Shipped file names, per mode.
SHIPPED = {"single": "pcb_defect_unet", "pair": "pcb_pair_unet"}
#: Card names: the single model keeps the historical ``model_card.json``.
CARD_NAMES = {"single": "model_card.json", "pair": "pcb_pair_unet.card.json"}


def write_card(weights: Path, card_path: Path, state: dict[str, Any],
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes the model card of converted weights from the run's state."""
    from app.inference.card import write_card as _write
    from model_defs import CLASS_NAMES

    config = state["config"]
    mode = config["mode"]
    depth = int(config["encoder_depth"])
    card: dict[str, Any] = {
        "name": "pcb-pair-unet" if mode == "pair" else "pcb-defect-unet",
        "version": f"2.{int(state['step'])}",
        "mode": mode,
        "classes": list(CLASS_NAMES),
        "input": {"tile_size": 640, "multiple_of": 2 ** depth, "channels": 1, "dtype": "uint8"},
        "pixels_per_mm": 48.0,
        "thresholds": {"confidence": 0.5, "min_area_px": 12, "min_confidence": 0.0},
        "annotation_box_margin_px": 10,
        "architecture": {
            "encoder": f"ResNet50 (keras.applications, from scratch), cut after stage {depth}",
            "encoder_input": ("board, registered reference, signed difference"
                              if mode == "pair" else "the board, three times"),
            "decoder": "U-Net, skips at strides 8, 4, 2 and 1"
                       + (", 1x1 reductions before the concatenations"
                          if config.get("decoder_reduction") else ""),
            "edge_enhancement": True,
            "loss": config.get("loss"),
            "file_bytes": weights.stat().st_size,
        },
        "training": {
            "steps_total": int(state["step"]),
            "train_seconds_total": float(state["train_seconds_total"]),
            "stints": int(state.get("stints", 1)),
            "hardware_last_stint": state.get("hardware"),
            "config": config,
            "split": state.get("split"),
            "last_loss": state.get("last_loss"),
        },
    }
    if extra:
        card.update(extra)
    _write(card_path, card)
    return card


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the stint's end; returns the evaluation report."""
    from training import crossval, evaluate
    from training.convert import convert

    state = json.loads((args.ckpt / "state.json").read_text())
    mode = state["config"]["mode"]
    name = SHIPPED[mode]
    out = args.work / mode
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.keras"
    convert(args.ckpt, weights)
    card_path = out / CARD_NAMES[mode]
    write_card(weights, card_path, state)
    eval_args = evaluate.build_parser().parse_args([
        "--data", str(args.data), "--weights", str(weights), "--card", str(card_path),
        "--choose-operating-point", "--dump", str(out / "detections_val.jsonl"),
        "--candidates", str(out / "candidates_val.json"),
        *(["--limit", str(args.limit)] if args.limit else []),
    ])
    report = evaluate.evaluate(eval_args)
    evaluate.print_report(report)
    (out / "eval_val.json").write_text(json.dumps(report, indent=2) + "\n")
    chosen = report["operating_point_chosen_here"]
    card = json.loads(card_path.read_text())
    card["thresholds"].update(chosen)
    # The card carries the figures that predict unseen designs: the operating point chosen on
    # the other held-out groups, in turn (the one chosen here, on all of them, flatters).
    cv = crossval.from_evaluation(out / "candidates_val.json", report["threshold"],
                                  report["merge_distance_px"], report["box_margin_px"])
    card["validation"] = crossval.card_validation(
        cv, next(iter(cv["variants"])),
        f"python -m training.stint --ckpt {args.ckpt} --data {args.data} (training.evaluate "
        "--candidates, then training.crossval.from_evaluation)")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    if args.ship:
        shipped_eval = args.weights_dir / f"{name}.eval_val.json"
        old_f = -1.0
        if shipped_eval.is_file():
            old = json.loads(shipped_eval.read_text())
            if old.get("val_groups") == report["val_groups"]:
                old_f = float(old["f_score"])
        if report["f_score"] > old_f:
            args.weights_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, args.weights_dir / f"{name}.keras")
            shutil.copyfile(card_path, args.weights_dir / CARD_NAMES[mode])
            shutil.copyfile(out / f"{name}.state.json", args.weights_dir / f"{name}.state.json")
            shutil.copyfile(out / "eval_val.json", shipped_eval)
            print(f"shipped: F {report['f_score']:.4f} > {old_f:.4f}")
        else:
            print(f"not shipped: F {report['f_score']:.4f} <= shipped {old_f:.4f}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m training.stint", description=__doc__)
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder (state.json)")
    p.add_argument("--data", required=True, type=Path, help="DeepPCB-format folder")
    p.add_argument("--work", type=Path, default=Path("runs/stint"))
    p.add_argument("--weights-dir", type=Path, default=Path("weights"))
    p.add_argument("--limit", type=int, default=0, help="evaluate on the first N boards only")
    p.add_argument("--ship", action="store_true", help="install into weights/ when better")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
