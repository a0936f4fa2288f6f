"""A wrong golden board is refused by the quick screen, without the full-size work that a
pair which does not match would make ECC run to its step limit, from every start."""

from __future__ import annotations

import numpy as np
import pytest

import app.inference.registration as registration
from app.inference.registration import SCREEN_SIDE, AlignmentError, register
from training.synth import make_board, moved


@pytest.mark.parametrize("wrong", ["other_design", "turned_90"])
def test_a_wrong_golden_board_is_refused_on_the_screen_alone(
    ecc_sizes: list[tuple[int, ...]], wrong: str
) -> None:
    board = make_board(seed=3, size=1000)
    golden = (make_board(seed=4, size=1000).template if wrong == "other_design"
                 else np.ascontiguousarray(np.rot90(board.template)))
    with pytest.raises(AlignmentError, match="does not match") as refused:
        register(board.image, golden)
    assert refused.value.score < registration.MIN_SCORE
    assert ecc_sizes and max(max(s) for s in ecc_sizes) <= SCREEN_SIDE, ecc_sizes


def test_a_matching_pair_passes_the_screen_at_its_first_start(
    ecc_sizes: list[tuple[int, ...]]
) -> None:
    board = make_board(seed=3, size=1000)
    _, alignment = register(board.image, moved(board.template, 6.5, -4.0, 0.5))
    assert abs(alignment.dx - 6.5) < 0.5 and abs(alignment.dy + 4.0) < 0.5
    small = [s for s in ecc_sizes if max(s) <= SCREEN_SIDE]
    assert len(small) == 1, ecc_sizes  # one look on the screen, then the full-size estimate
