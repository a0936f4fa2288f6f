"""Draws docs/img/mask-derivation.png: how training masks are derived from boxes.

    .venv/bin/python scripts/make_mask_figure.py

On a synthetic board saved as JPEG like DeepPCB's scans (so the JPEG edge noise is there),
shows the test image, its template, where they differ, and the mask ``derive_mask`` keeps
inside the boxes. Dataset images are never rendered into the project.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from training.data import DIFF_THRESHOLD, Box, derive_mask
from training.synth import make_board


def _jpeg(a: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def main() -> int:
    """Writes the figure."""
    board = make_board(seed=11, size=320, n_defects=4)
    # Shift the template by one pixel, as real scans are never perfectly aligned.
    test, template = _jpeg(board.image), _jpeg(np.roll(board.template, 1, axis=1))
    boxes = []
    for d in board.defects:
        x0, y0, x1, y1 = d.bbox
        # DeepPCB boxes hold a margin of about 10 px around the defect.
        boxes.append(Box(max(0, x0 - 10), max(0, y0 - 10), x1 + 10, y1 + 10, d.label))
    mask = derive_mask(test, template, boxes)
    diff = ((cv2.absdiff(test, template) > DIFF_THRESHOLD) * 255).astype(np.uint8)
    panels = []
    for title, img in (("test", test), ("template", template),
                       ("|test - template| > 100", diff), ("derived mask", (mask > 0) * 255)):
        rgb = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_GRAY2RGB)
        for b in boxes:
            cv2.rectangle(rgb, (b.x1, b.y1), (b.x2 - 1, b.y2 - 1), (220, 40, 40), 1)
        header = np.full((26, rgb.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(header, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        panels.append(np.vstack([header, rgb]))
        panels.append(np.full((panels[-1].shape[0], 8, 3), 255, dtype=np.uint8))
    out = Path("docs/img/mask-derivation.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.hstack(panels[:-1])).save(out, optimize=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
