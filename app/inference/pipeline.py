"""A board on its way through the model, the loop that feeds its chunks to the batcher, and
what comes out.

The inferencer plans a board (:class:`BoardRun`), :func:`run_chunks` sends its chunks through
the batcher a few at a time and stitches what comes back, and the inferencer's post-processing
turns the stitched maps into an :class:`InferenceResult`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from app.inference.defects import Defect, Summary
from app.inference.registration import Alignment
from app.inference.tiling import Stitcher, Tile

#: Chunks of one board in the batcher at once. One would leave the model idle while the board's
#: next chunk is cut and the last one stitched; more than three would let a large board fill the
#: queue ahead of small boards that arrive after it (each waits behind at most this many chunks).
CHUNKS_IN_FLIGHT = 3


@dataclasses.dataclass(frozen=True)
class InferenceResult:
    """What one board's inspection found."""

    width: int
    height: int
    defects: list[Defect]
    summary: Summary
    class_map: np.ndarray  # (H, W) uint8: 0 background, k the k-th class
    tiles: int
    timings_ms: dict[str, float]
    #: Where the golden board sat relative to the board (pair model only).
    alignment: Alignment | None = None
    #: Tiles left background without a forward pass (:mod:`app.inference.gating`), and the
    #: board pixels they own; ``tiles - skipped_tiles`` went through the model.
    skipped_tiles: int = 0
    skipped_px: int = 0
    #: Whether the tiles were gated at all (``False``: every tile computed, the full path).
    gated: bool = False


class RunTiles(Protocol):
    """Runs ``(n, T, T, C)`` uint8 tiles through the model (the batcher's ``submit``).

    ``admit=False`` marks the later chunks of a board that was already admitted: they are not
    refused for a full queue, so a board is never dropped after part of it was computed.
    """

    async def __call__(self, tiles: np.ndarray, *, admit: bool = True) -> tuple[np.ndarray, ...]:
        """The model's ``(fg, cls, cls_p)`` for these tiles."""
        ...


@dataclasses.dataclass
class BoardRun:
    """One board on its way through the model: its plan, golden board and stitched maps."""

    #: Every tile of the board's plan.
    tiles: list[Tile]
    #: The golden board registered onto this one (pair model), else ``None``.
    warped: np.ndarray | None
    alignment: Alignment | None
    stitcher: Stitcher
    timings: dict[str, float]
    #: Tiles stitched so far.
    stitched: int = 0
    #: The tiles that go through the model (``None``: all of :attr:`tiles`); the others are
    #: left background.
    computed: list[Tile] | None = None
    gated: bool = False
    #: Gated pair board: the registered golden board's windows of the computed tiles, by
    #: ``(y0, x0)``, kept in place of the whole registered board (``warped`` is then ``None``).
    golden_windows: dict[tuple[int, int], np.ndarray] | None = None
    #: Board pixels of the registered golden board freed that way (not counting the windows).
    freed_px: int = 0

    @property
    def to_compute(self) -> list[Tile]:
        """The tiles that go through the model."""
        return self.tiles if self.computed is None else self.computed

    def stitch(self, chunk: list[Tile], outputs: tuple[np.ndarray, ...]) -> None:
        """Writes a chunk's model outputs ``(fg, cls, cls_p)`` into the board's maps."""
        fg, cls, cls_p = outputs
        for i, tile in enumerate(chunk):
            self.stitcher.add(tile, fg[i], cls[i], cls_p[i])
        self.stitched += len(chunk)


async def run_chunks(
    board: BoardRun,
    chunks: Iterator[tuple[list[Tile], np.ndarray]],
    run_tiles: RunTiles,
) -> None:
    """Sends ``chunks`` of ``board`` through ``run_tiles`` and stitches their outputs.

    Up to :data:`CHUNKS_IN_FLIGHT` chunks wait in the batcher at once, so the model never
    waits for this board's next chunk to be cut or its last one to be stitched, and small
    boards that arrive meanwhile are never more than that many chunks behind. Only the first
    chunk can be refused (queue full): once a board is admitted, its later chunks go in
    without the check, so it is never dropped half computed.

    Cutting and stitching run in worker threads (seconds on a large board; the event loop
    must stay free for probes). Cancelling this coroutine (timeout, client gone) cancels every
    chunk in flight.
    """
    in_flight: collections.deque[tuple[list[Tile], asyncio.Future[Any]]] = collections.deque()
    try:
        while True:
            while len(in_flight) < CHUNKS_IN_FLIGHT:
                item = await asyncio.to_thread(next, chunks, None)
                if item is None:
                    break
                chunk, arrays = item
                first = not in_flight and not board.stitched
                submitted = asyncio.ensure_future(run_tiles(arrays, admit=first))
                in_flight.append((chunk, submitted))
                if first:
                    # Let the batcher decide on the board before any later chunk goes in:
                    # its admission check runs before the submission first suspends.
                    await asyncio.sleep(0)
                    if submitted.done():
                        submitted.result()
            if not in_flight:
                return
            chunk, future = in_flight[0]
            outputs = await future
            in_flight.popleft()
            await asyncio.to_thread(board.stitch, chunk, outputs)
    finally:
        for _, pending in in_flight:
            pending.cancel()
