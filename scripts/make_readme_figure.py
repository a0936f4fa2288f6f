"""Draws docs/img/example.png: a synthetic board, the service's mask, and its overlay.

    .venv/bin/python scripts/make_readme_figure.py [--weights W] [--seed 3]

Uses the service's own Inferencer and renderer on a board from the synthetic generator (README
pictures never show dataset images).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from app.core.config import DEFAULT_WEIGHTS
from app.inference.inferencer import Inferencer
from app.inference.postprocess import PostprocessConfig
from app.inference.render import CLASS_COLORS_BGR, render_overlay
from training.synth import make_board


def main() -> int:
    """Writes the figure."""
    p = argparse.ArgumentParser()
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("docs/img/example.png"))
    args = p.parse_args()
    inf = Inferencer.load(args.weights, device="auto")
    card = inf.card
    board = make_board(seed=args.seed, size=640, jpeg_quality=90)
    config = PostprocessConfig(threshold=card.thresholds.confidence,
                               min_area_px=card.thresholds.min_area_px,
                               min_confidence=card.thresholds.min_confidence,
                               merge_distance_px=card.thresholds.merge_distance_px,
                               pixels_per_mm=card.pixels_per_mm)
    result = inf.predict(board.image, config)
    mask_rgb = np.zeros((*board.image.shape, 3), dtype=np.uint8)
    for k in range(1, len(card.classes) + 1):
        mask_rgb[result.class_map == k] = CLASS_COLORS_BGR[k - 1][::-1]
    overlay = np.asarray(Image.open(io.BytesIO(render_overlay(
        board.image, result.class_map, result.defects, card.classes))).convert("RGB"))
    h = overlay.shape[0]
    pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
    board_rgb = cv2.cvtColor(board.image, cv2.COLOR_GRAY2RGB)
    gap = np.full((h, 12, 3), 255, dtype=np.uint8)
    figure = np.hstack([pad(board_rgb), gap, pad(mask_rgb), gap, overlay])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).resize((figure.shape[1] // 2, h // 2), Image.LANCZOS).save(
        args.out, optimize=True)
    print(f"{args.out}: {len(result.defects)} defects found, {len(board.defects)} drawn")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
