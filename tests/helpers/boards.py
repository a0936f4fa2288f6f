"""Synthetic PCB-like boards, generated in-test (never read from ../shared).

The boards only need to look like a binarised DeepPCB scan (light substrate, dark copper
traces and pads) so that the model sees plausible input; the tests never rely on what the
tiny random model finds, only on the service's contract around it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def make_board(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """Returns a ``(height, width)`` uint8 board: traces and pads on a light substrate."""
    rng = np.random.default_rng(seed)
    board = np.full((height, width), 235, dtype=np.uint8)
    for _ in range(max(2, (height + width) // 24)):
        if rng.random() < 0.5:
            y = int(rng.integers(0, height))
            board[y : y + int(rng.integers(2, 5)), :] = 30
        else:
            x = int(rng.integers(0, width))
            board[:, x : x + int(rng.integers(2, 5))] = 30
    disc = {r: np.add.outer(np.arange(-r, r + 1) ** 2, np.arange(-r, r + 1) ** 2) <= r * r
            for r in range(2, 6)}
    for _ in range(max(1, (height * width) // 2000)):
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        r = int(rng.integers(2, 6))
        # Pads: discs drawn in their own window, so big boards stay cheap to make.
        y0, x0 = max(cy - r, 0), max(cx - r, 0)
        window = board[y0 : cy + r + 1, x0 : cx + r + 1]
        shape = disc[r][y0 - (cy - r) :, x0 - (cx - r) :][: window.shape[0], : window.shape[1]]
        window[shape] = 20
    # A little sensor noise, so that no two boards of different seeds are identical.
    noise = rng.integers(-6, 7, size=board.shape)
    return np.clip(board.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    """Encodes an array (mode L) or a Pillow image as an image file of ``fmt``."""
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def board_png(height: int = 64, width: int = 64, seed: int = 0) -> bytes:
    """A synthetic board as PNG bytes."""
    return encode(make_board(height, width, seed))
