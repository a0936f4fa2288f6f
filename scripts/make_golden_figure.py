"""Draws docs/img/golden.png: a golden board, a board under test, and the pair model's overlay.

    .venv/bin/python scripts/make_golden_figure.py [--weights weights/pcb_pair_unet.keras]

Both boards come from the synthetic generator (README pictures never show dataset images); the
golden board is the defect-free template moved by a few pixels and a fraction of a degree, as a
second scan would be, so the figure also shows registration at work.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from app.inference.inferencer import Inferencer
from app.inference.postprocess import PostprocessConfig
from app.inference.render import render_overlay
from training.synth import make_board


def main() -> int:
    """Writes the figure."""
    p = argparse.ArgumentParser()
    p.add_argument("--weights", type=Path, default=Path("weights/pcb_pair_unet.keras"))
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("docs/img/golden.png"))
    args = p.parse_args()
    inf = Inferencer.load(args.weights)
    card = inf.card
    board = make_board(seed=args.seed, size=640, jpeg_quality=90)
    angle = math.radians(0.4)
    matrix = np.array([[math.cos(angle), -math.sin(angle), 4.0],
                       [math.sin(angle), math.cos(angle), -3.0]], dtype=np.float32)
    golden = cv2.warpAffine(board.template, matrix, (640, 640), borderMode=cv2.BORDER_REPLICATE)
    config = PostprocessConfig(threshold=card.thresholds.confidence,
                               min_area_px=card.thresholds.min_area_px,
                               min_confidence=card.thresholds.min_confidence,
                               merge_distance_px=card.thresholds.merge_distance_px,
                               pixels_per_mm=card.pixels_per_mm)
    result = inf.predict(board.image, config, golden=golden)
    overlay = np.asarray(Image.open(io.BytesIO(render_overlay(
        board.image, result.class_map, result.defects, card.classes))).convert("RGB"))
    h = overlay.shape[0]
    pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
    gap = np.full((h, 12, 3), 255, dtype=np.uint8)
    figure = np.hstack([pad(cv2.cvtColor(golden, cv2.COLOR_GRAY2RGB)), gap,
                        pad(cv2.cvtColor(board.image, cv2.COLOR_GRAY2RGB)), gap, overlay])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).resize((figure.shape[1] // 2, h // 2), Image.LANCZOS).save(
        args.out, optimize=True)
    assert result.alignment is not None
    print(f"{args.out}: {len(result.defects)} defects found, {len(board.defects)} drawn; "
          f"alignment {result.alignment.as_dict()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
