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

It **refuses to validate on a board group that the run trained on** (the groups are in the
run's ``state.json``): a model trained on all seven groups has no held-out design left, and
scoring it on its own training boards would read as a gain. Such a run is judged by its
**twin** (``--twin DIR``): the same recipe trained without some groups (``--val-groups``,
e.g. 44000), scored there against the shipped model by the same evaluator; the run ships
only if the twin beats the shipped model there (higher README-protocol F, mAP not lower),
and its card says that it has no held-out design.
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


def trained_groups(state: dict[str, Any]) -> set[str]:
    """The board groups a run trained on, from its ``state.json``."""
    return {str(g) for g in (state.get("split") or {}).get("groups") or []}


def held_out_groups(state: dict[str, Any], val_groups: list[str], what: str) -> list[str]:
    """``val_groups``, after checking that the run never trained on any of them.

    Raises:
        SystemExit: When the run trained on one of them, or its state does not say which
            groups it trained on.
    """
    trained = trained_groups(state)
    if not trained:
        raise SystemExit(
            f"refusing to validate {what}: its state.json does not say which board groups it "
            "trained on (split.groups), so held-out scores cannot be told from training scores"
        )
    seen = sorted(trained & set(val_groups))
    if seen:
        raise SystemExit(
            f"refusing to validate {what} on board groups {seen}: the run trained on them "
            f"(it trained on {sorted(trained)}). Pass --val-groups with groups it did not see, "
            "or judge it by a twin trained without them (--twin DIR --val-groups G)."
        )
    return list(val_groups)


def _evaluate(weights: Path, card: Path, data: Path, groups: list[str], limit: int,
              dump: Path | None = None, candidates: Path | None = None) -> dict[str, Any]:
    from training import evaluate

    eval_args = evaluate.build_parser().parse_args([
        "--data", str(data), "--weights", str(weights), "--card", str(card),
        "--val-groups", ",".join(groups), "--choose-operating-point",
        *(["--dump", str(dump)] if dump else []),
        *(["--candidates", str(candidates)] if candidates else []),
        *(["--limit", str(limit)] if limit else []),
    ])
    report = evaluate.evaluate(eval_args)
    evaluate.print_report(report)
    return report


def judge_by_twin(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    """Scores the twin and the shipped model on the twin's held-out groups; ships ``args.ckpt``
    (which has no held-out design) only if the twin gains there. Returns the comparison."""
    from training.convert import convert

    twin_state = json.loads((args.twin / "state.json").read_text())
    mode = state["config"]["mode"]
    if twin_state["config"]["mode"] != mode:
        raise SystemExit(f"--twin is a {twin_state['config']['mode']} run; {args.ckpt} is {mode}")
    groups = held_out_groups(twin_state, args.val_groups, f"the twin {args.twin}")
    name = SHIPPED[mode]
    out = args.work / f"{mode}_twin"
    out.mkdir(parents=True, exist_ok=True)
    twin_weights = out / f"{name}.keras"
    convert(args.twin, twin_weights)
    twin_card = out / CARD_NAMES[mode]
    write_card(twin_weights, twin_card, twin_state)
    twin = _evaluate(twin_weights, twin_card, args.data, groups, args.limit)
    shipped = _evaluate(args.weights_dir / f"{name}.keras", args.weights_dir / CARD_NAMES[mode],
                        args.data, groups, args.limit)
    gains = twin["f_score"] > shipped["f_score"] and twin["map"] >= shipped["map"]
    comparison = {
        "held_out_groups": groups,
        "twin": {"ckpt": str(args.twin), "trained_groups": sorted(trained_groups(twin_state)),
                 "f_score": twin["f_score"], "map": twin["map"]},
        "shipped": {"f_score": shipped["f_score"], "map": shipped["map"]},
        "twin_gains": gains,
    }
    print(json.dumps(comparison, indent=2))
    if not gains:
        print(f"not shipped: the twin did not gain on {groups} (F {twin['f_score']:.4f} vs "
              f"{shipped['f_score']:.4f}, mAP {twin['map']:.4f} vs {shipped['map']:.4f})")
        return comparison
    work = args.work / mode
    work.mkdir(parents=True, exist_ok=True)
    weights = work / f"{name}.keras"
    convert(args.ckpt, weights)
    card_path = work / CARD_NAMES[mode]
    card = write_card(weights, card_path, state, extra={"validation": {
        "held_out_groups": [],
        "note": ("trained on every board group: no held-out design is left, so its own "
                 "scores would be training scores; shipped because its twin, trained "
                 f"without {groups}, beat the shipped model there"),
        "twin_comparison": comparison,
    }})
    # The run has no held-out boards to choose its own operating point on; the twin's, chosen
    # on boards the twin never saw, is the closest to an unbiased choice that is left.
    card["thresholds"].update(twin["operating_point_chosen_here"])
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (work / "eval_val.json").write_text(json.dumps(comparison, indent=2) + "\n")
    if args.ship:
        args.weights_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, args.weights_dir / f"{name}.keras")
        shutil.copyfile(card_path, args.weights_dir / CARD_NAMES[mode])
        shutil.copyfile(work / f"{name}.state.json", args.weights_dir / f"{name}.state.json")
        shutil.copyfile(work / "eval_val.json", args.weights_dir / f"{name}.eval_val.json")
        print(f"shipped {args.ckpt}: its twin gained on {groups}")
    return comparison


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the stint's end; returns the evaluation report."""
    from training.convert import convert
    from training.data import VAL_GROUPS

    state = json.loads((args.ckpt / "state.json").read_text())
    args.val_groups = list(args.val_groups or VAL_GROUPS)
    if args.twin is not None:
        return judge_by_twin(args, state)
    groups = held_out_groups(state, args.val_groups, str(args.ckpt))
    mode = state["config"]["mode"]
    name = SHIPPED[mode]
    out = args.work / mode
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.keras"
    convert(args.ckpt, weights)
    card_path = out / CARD_NAMES[mode]
    write_card(weights, card_path, state)
    report = _evaluate(weights, card_path, args.data, groups, args.limit,
                       dump=out / "detections_val.jsonl",
                       candidates=out / "candidates_val.json")
    (out / "eval_val.json").write_text(json.dumps(report, indent=2) + "\n")
    chosen = report["operating_point_chosen_here"]
    card = json.loads(card_path.read_text())
    card["thresholds"].update(chosen)
    # The card carries the figures that predict unseen designs: the operating point chosen on
    # the other held-out groups, in turn (the one chosen here, on all of them, flatters).
    from training import crossval

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
    p.add_argument("--val-groups", type=lambda t: [g for g in t.split(",") if g], default=[],
                   help="comma-separated board groups to validate on (default: training.data."
                        "VAL_GROUPS); never one the run trained on")
    p.add_argument("--twin", type=Path, default=None,
                   help="for a run trained on every group: the checkpoint of the same recipe "
                        "without --val-groups; the run ships only if the twin gains there")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
