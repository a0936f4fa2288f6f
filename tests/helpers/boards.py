"""Boards for the service tests, from :mod:`training.synth` (the one board generator).

The tests only need something that looks like a binarised DeepPCB scan, of a given size, so
that the model sees plausible input; they never rely on what the tiny random model finds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.synth import SyntheticBoard, encode
from training.synth import make_board as make_defective_board
from training.synth import plain_board as make_board

__all__ = ["Panel", "board_png", "encode", "make_board", "two_board_panel"]


def board_png(height: int = 64, width: int = 64, seed: int = 0) -> bytes:
    """A defect-free synthetic board of ``height`` x ``width`` as PNG bytes."""
    return encode(make_board(height, width, seed))


@dataclass(frozen=True)
class Panel:
    """Two synthetic boards side by side (positions 1 and 2), with their golden panel."""

    left: SyntheticBoard
    right: SyntheticBoard
    #: The panel under test and its golden panel, as PNG bytes.
    png: bytes
    golden_png: bytes
    side: int

    @property
    def halves(self) -> list[dict[str, object]]:
        """A recipe's ``units``: one board per half."""
        return [{"position": 1, "bbox": [0, 0, self.side, self.side]},
                {"position": 2, "bbox": [self.side, 0, 2 * self.side, self.side]}]


def two_board_panel(side: int, seeds: tuple[int, int] = (1, 2)) -> Panel:
    """A panel of two defective ``side`` px boards (each drawn with its defects and boxes)."""
    left, right = (make_defective_board(seed=s, size=side) for s in seeds)
    return Panel(left, right, encode(np.hstack([left.image, right.image])),
                 encode(np.hstack([left.template, right.template])), side)
