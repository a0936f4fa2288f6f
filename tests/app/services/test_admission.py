"""Tests of ``app.services.admission``: whole boards in or out, never half."""

from __future__ import annotations

import pytest

from app.services.admission import (
    MAX_ENCODED_BYTES_PER_PIXEL,
    BudgetExceededError,
    PixelBudget,
)


def test_boards_are_admitted_whole_until_the_budget_is_spent() -> None:
    budget = PixelBudget(100)
    with budget.admit(60):
        assert (budget.in_flight, budget.boards, budget.free) == (60, 1, 40)
        with budget.admit(40):  # exactly fills it
            assert budget.free == 0
            with pytest.raises(BudgetExceededError) as caught, budget.admit(1):
                pass
            # The refusal names the board, what is in flight and the setting.
            assert "1 px would join 100 px in flight" in str(caught.value)
            assert "PCB_LIMITS_MAX_INFLIGHT_PIXELS" in str(caught.value)
        # A refused board took nothing; a finished one gave its pixels back.
        assert (budget.in_flight, budget.boards) == (60, 1)
        with pytest.raises(BudgetExceededError):
            budget.check(41)
    assert (budget.in_flight, budget.boards) == (0, 0)


def test_pixels_come_back_when_the_work_fails() -> None:
    budget = PixelBudget(10)
    with pytest.raises(RuntimeError, match="model failed"), budget.admit(10):
        raise RuntimeError("model failed")
    assert budget.in_flight == 0


def test_a_body_is_refused_from_its_length_alone() -> None:
    budget = PixelBudget(1000)
    with budget.admit(900):
        budget.check_body(100 * MAX_ENCODED_BYTES_PER_PIXEL)  # at least 100 px: fits
        with pytest.raises(BudgetExceededError):
            budget.check_body(101 * MAX_ENCODED_BYTES_PER_PIXEL)


@pytest.mark.parametrize(("kwargs", "match"), [({"max_pixels": 0}, "Received: max_pixels=0")])
def test_invalid_budget_is_refused(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PixelBudget(**kwargs)


def test_negative_pixels_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="Received: pixels=-1"):
        PixelBudget(10).check(-1)


def test_part_of_a_hold_comes_back_early_and_never_more_than_it_holds() -> None:
    budget = PixelBudget(100)
    with budget.admit(80) as hold:
        assert hold.release(30) == 30
        assert (budget.in_flight, hold.pixels, budget.free) == (50, 50, 50)
        with budget.admit(50):  # the room given back is usable at once
            assert budget.free == 0
        assert hold.release(500) == 50 and hold.release(-1) == 0
        assert budget.in_flight == 0
    assert (budget.in_flight, budget.boards) == (0, 0)
