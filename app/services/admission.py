"""Whole-board admission against a memory budget.

The service's memory beyond its fixed part (TensorFlow, the models, one batch's activations)
grows with the pixels of the boards in flight: the decoded board, its stitched maps and the
post-processing labels, about :data:`BYTES_PER_PIXEL` bytes a pixel in all (measured with
``python -m bench.big_board``, README "Benchmarks"). Counting queued tiles does not bound
that: one 8000 x 8000 board is 196 tiles but 64 Mpx. So a board is admitted whole, by its
pixel count read from the image header before it is decoded, or refused with 503 +
``Retry-After`` before any of it is computed. A board of the pair model counts twice: its
registered golden board is a second full-size image, until gating knows which tiles need the
model and keeps only their windows of it (:meth:`Hold.release` gives that count back).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

#: Bytes of memory a board pixel costs while the board is in flight (decoded board 1, stitched
#: maps 5; once those are freed, defect mask and labels 6 and the class map 1), with headroom
#: over what ``python -m bench.big_board`` measures (README "Benchmarks"; a pair board counts
#: twice).
BYTES_PER_PIXEL = 12

#: Memory of the service before any board: TensorFlow, both models and the activations of the
#: tiles in the model at once, at the worst CPU default (float32, two tiles: ``AUTO_CPU_TILES_IN_
#: FLIGHT``), above the peak ``python -m bench.run_bench``'s whole load plan with both models
#: measures (README "Benchmarks"). ``deploy/`` sizes its memory limit with it and
#: :data:`BYTES_PER_PIXEL` (a test checks the arithmetic and the tiles in flight).
FIXED_MEMORY_BYTES = 2 * 2**30

#: The formats a board may come in store at most this many bytes a pixel (16-bit RGBA); so a
#: body of ``n`` bytes holds at least ``n / MAX_ENCODED_BYTES_PER_PIXEL`` pixels, which lets a
#: request be refused from its Content-Length alone, before its body is read.
MAX_ENCODED_BYTES_PER_PIXEL = 8


class BudgetExceededError(RuntimeError):
    """The board does not fit the memory budget now; retry when boards in flight finish."""

    def __init__(self, pixels: int, in_flight: int, budget: int) -> None:
        super().__init__(
            f"{pixels:,} px would join {in_flight:,} px in flight; the budget "
            f"(PCB_LIMITS_MAX_INFLIGHT_PIXELS) is {budget:,} px"
        )
        self.pixels = pixels
        self.in_flight = in_flight
        self.budget = budget


@dataclasses.dataclass
class PixelBudget:
    """Counts the pixels of the boards in flight against ``max_pixels``.

    Used from the event loop only (no lock: admission and release never await).

    Args:
        max_pixels: Most pixels in flight at once; at least the largest board accepted, so a
            board that passes the size limit always fits an idle service.
    """

    max_pixels: int
    in_flight: int = 0
    boards: int = 0

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1. Received: max_pixels={self.max_pixels}")

    @property
    def free(self) -> int:
        """Pixels that can be admitted now."""
        return max(0, self.max_pixels - self.in_flight)

    def check(self, pixels: int) -> None:
        """Raises :class:`BudgetExceededError` unless ``pixels`` fit now (nothing is taken)."""
        if pixels < 0:
            raise ValueError(f"pixels must be >= 0. Received: pixels={pixels}")
        if self.in_flight + pixels > self.max_pixels:
            raise BudgetExceededError(pixels, self.in_flight, self.max_pixels)

    def check_body(self, content_length: int) -> None:
        """Refuses a body too large to fit, from its length alone (before it is read).

        A body of ``n`` bytes decodes to at least ``n / MAX_ENCODED_BYTES_PER_PIXEL`` pixels.
        """
        self.check(content_length // MAX_ENCODED_BYTES_PER_PIXEL)

    @contextlib.contextmanager
    def admit(self, pixels: int) -> Iterator[Hold]:
        """Holds ``pixels`` of the budget for the block, or raises before taking any.

        Yields:
            The hold, through which part of it can be given back early.

        Raises:
            BudgetExceededError: They do not fit now.
        """
        self.check(pixels)
        self.in_flight += pixels
        self.boards += 1
        hold = Hold(self, pixels)
        try:
            yield hold
        finally:
            self.in_flight -= hold.pixels
            hold.pixels = 0
            self.boards -= 1


@dataclasses.dataclass
class Hold:
    """The pixels one admitted board holds of a :class:`PixelBudget`."""

    budget: PixelBudget
    pixels: int

    def release(self, pixels: int) -> int:
        """Gives back up to ``pixels`` of the hold before the board ends (what it no longer
        needs); returns how many were given back."""
        given = max(0, min(pixels, self.pixels))
        self.pixels -= given
        self.budget.in_flight -= given
        return given
