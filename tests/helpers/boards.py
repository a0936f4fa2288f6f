"""Boards for the service tests, from :mod:`training.synth` (the one board generator).

The tests only need something that looks like a binarised DeepPCB scan, of a given size, so
that the model sees plausible input; they never rely on what the tiny random model finds.
"""

from __future__ import annotations

from training.synth import encode
from training.synth import plain_board as make_board

__all__ = ["board_png", "encode", "make_board"]


def board_png(height: int = 64, width: int = 64, seed: int = 0) -> bytes:
    """A defect-free synthetic board of ``height`` x ``width`` as PNG bytes."""
    return encode(make_board(height, width, seed))
