"""Turns a checkpoint folder of :mod:`training.jax_train` into a ``.keras`` file.

``python -m training.convert --ckpt DIR --out weights/pcb_pair_unet.keras`` rebuilds the model
that ``DIR/state.json`` describes (in whatever Keras backend runs here: TensorFlow for the
service), loads the ``weights-NN.npz`` shards into it, and saves it. The file loads with
``keras.models.load_model(path, custom_objects=model_defs.get_custom_objects())``. The run's
``state.json`` is copied beside it as ``<stem>.state.json``, so that the next training stint
resumes from what is committed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any


def convert(ckpt: Path, out: Path) -> Any:
    """Builds the model of ``ckpt``'s state, loads its shards, saves ``out``; returns it."""
    from model_defs import build_model
    from training.jax_train import load_shards, model_kwargs

    state = json.loads((ckpt / "state.json").read_text())
    model = build_model(**model_kwargs(state["config"]))
    load_shards(model, ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    shutil.copyfile(ckpt / "state.json", out.with_name(out.name.removesuffix(".keras")
                                                        + ".state.json"))
    return model


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m training.convert", description=__doc__)
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder")
    p.add_argument("--out", required=True, type=Path, help="the .keras file to write")
    args = p.parse_args(argv)
    convert(args.ckpt, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
