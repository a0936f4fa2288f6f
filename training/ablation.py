"""Ablation under one training budget: edge layer on/off, Dice+IoU against cross-entropy.

    python -m training.ablation --data ../shared/datasets/deeppcb --out runs/ablation

Every variant trains with the same seed, data, crops and number of steps (a step budget, not a
time budget, so a busy machine cannot favour one variant), is exported like the shipped model
(last epoch, BatchNorm statistics re-estimated on 40 full training boards), and is scored by
``evaluate`` on the same validation boards. Writes ``ablation.json`` and
prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: name -> extra train arguments
VARIANTS: dict[str, list[str]] = {
    "edge + dice_iou_ce (shipped recipe)": [],
    "no edge layer": ["--no-edge"],
    "dice_iou only": ["--loss", "dice_iou"],
    "cross-entropy only": ["--loss", "ce"],
}


def main(argv: list[str] | None = None) -> int:
    """Trains, exports and evaluates every variant; writes the comparison."""
    from training import evaluate, export, train

    p = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-boards", type=int, default=50)
    p.add_argument("--only", nargs="*", default=None, help="subset of variant names")
    args = p.parse_args(argv)
    results: dict[str, Any] = {}
    for name, extra in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        run_dir = args.out / name.split(" (")[0].replace(" ", "_").replace("+", "plus")
        train.run(train.build_parser().parse_args([
            "--data", str(args.data), "--out", str(run_dir), "--epochs", str(args.epochs),
            "--steps-per-epoch", str(args.steps_per_epoch), "--crop", str(args.crop),
            "--batch-size", str(args.batch_size), "--max-minutes", "600", "--val-images", "8",
            "--precision", "mixed_bfloat16", "--verbose", "2", *extra,
        ]))
        export.export(export.build_parser().parse_args([
            "--run", str(run_dir), "--out", str(run_dir / "export"),
            "--checkpoint", "backup/latest.weights.h5", "--recalibrate-bn", "10",
        ]))
        report = evaluate.evaluate(evaluate.build_parser().parse_args([
            "--data", str(args.data), "--weights", str(run_dir / "export" / export.WEIGHTS_NAME),
            "--split", "val", "--limit", str(args.eval_boards),
        ]))
        results[name] = {k: report[k] for k in ("map", "f_score", "precision", "recall",
                                                 "mean_dice", "mean_iou")}
        results[name]["steps"] = args.epochs * args.steps_per_epoch
        print(name, json.dumps(results[name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| variant | mAP | F-score | precision | recall | mean Dice | mean IoU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['map']:.3f} | {r['f_score']:.3f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['mean_dice']:.3f} | {r['mean_iou']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
