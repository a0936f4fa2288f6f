"""Dynamic batching: tiles from concurrent requests share one model call.

A single worker task takes the first waiting tile, then gathers more until the batch holds
``max_batch_size`` tiles or ``max_wait_s`` has passed since that first tile, and runs the
batch in a dedicated executor of ``concurrency`` threads (never the event loop, never the
shared threadpool, so a slow model call cannot starve request handling or health checks).

Up to ``concurrency`` model calls run at once. On a CPU one call already spreads over every
core, but its parallel loops wait for their slowest thread: whenever anything else in the
process (decoding, post-processing, the event loop) takes a core, the call stalls. A second
call in flight uses that time, so two calls of one tile beat one call of two on 2 cores (README
"Benchmarks"). On a GPU one call at a time with the larger batch is better.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.core.metrics import BATCH_SIZE, MODEL_COMPUTE, QUEUE_DEPTH, QUEUE_WAIT, TILES

logger = logging.getLogger("pcb_inspect.batcher")

#: The model function: ``(n, T, T, C)`` uint8 tiles -> a tuple of arrays whose first axis is the
#: tile (the inferencer's ``(fg, cls, cls_p)``). The batcher splits and re-stacks the outputs
#: along that axis whatever their number, dtypes and other dimensions.
ForwardFn = Callable[[np.ndarray], tuple[np.ndarray, ...]]


class QueueFullError(RuntimeError):
    """The batching queue has no room for the request's tiles."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class ModelCallError(RuntimeError):
    """The model call for a batch failed; only that batch's requests see it."""


@dataclasses.dataclass
class SubmitTiming:
    """The model calls that ran the tiles of the :meth:`DynamicBatcher.submit` calls it was
    passed to (say, every chunk of one board), so a request can tell its time in the model
    from its wait in the queue."""

    #: ``(start, end)`` of each distinct model call (perf_counter seconds).
    calls: set[tuple[float, float]] = dataclasses.field(default_factory=set)

    @property
    def model_s(self) -> float:
        """Seconds in those model calls (whole calls, shared with other requests' tiles).

        Calls may overlap (``concurrency`` > 1): time covered by several counts once.
        """
        total, reached = 0.0, float("-inf")
        for start, end in sorted(self.calls):
            if end > reached:
                total += end - max(start, reached)
                reached = end
        return total


@dataclasses.dataclass
class _Item:
    tile: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, ...]]
    enqueued: float
    counted: bool = True  # still counted in the batcher's ``pending``
    #: ``(start, end)`` of the model call that ran this tile (perf_counter), once it ran.
    ran: tuple[float, float] | None = None


class DynamicBatcher:
    """Gathers tiles into batched model calls.

    Args:
        forward: The model function, called from the batcher's own thread.
        max_batch_size: Most tiles per model call.
        max_wait_s: Longest a first tile waits for company.
        max_queue: Most tiles waiting at once; admission beyond it raises ``QueueFullError``.
        concurrency: Most model calls running at once, each in a thread of its own.
    """

    def __init__(
        self,
        forward: ForwardFn,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        concurrency: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1. Received: {max_batch_size}")
        if max_queue < max_batch_size:
            raise ValueError(
                f"max_queue must be >= max_batch_size ({max_batch_size}). Received: {max_queue}"
            )
        self._forward = forward
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1. Received: concurrency={concurrency}")
        self.concurrency = concurrency
        #: Free places for a model call; the worker forms the next batch only once one is free,
        #: so tiles keep gathering while every call is busy.
        self._slots = asyncio.Semaphore(concurrency)
        self._calls: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="pcb-model"
        )

    @property
    def pending(self) -> int:
        """Tiles admitted and not yet taken into a batch."""
        return self._pending

    def start(self) -> None:
        """Starts the worker task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pcb-batcher")

    async def close(self) -> None:
        """Stops taking work, fails what still waits, and stops the worker."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # The worker cancelled the calls in flight; let them fail their tiles before going on.
        await asyncio.gather(*self._calls, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._release(item)
            if not item.future.done():
                item.future.set_exception(BatcherClosedError("the service is shutting down"))
        QUEUE_DEPTH.set(self._pending)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(
        self, tiles: np.ndarray, timing: SubmitTiming | None = None, *, admit: bool = True
    ) -> tuple[np.ndarray, ...]:
        """Runs ``tiles`` through the model, batched with whatever else is waiting.

        Admission is all-or-nothing, so a request is never half-queued. Cancelling the caller
        (a client that went away, a timeout) cancels its tiles, and the worker skips them.

        Args:
            tiles: ``(n, T, T, C)`` uint8.
            timing: Where to note the model calls that ran these tiles.
            admit: Check the queue's room (the first chunk of a board). ``False`` for the later
                chunks of a board already admitted: refusing them would drop a board after
                part of it was computed. The inferencer keeps few of them in flight, so the
                queue stays bounded. The check runs before this coroutine first suspends.

        Returns:
            The model function's outputs for these ``n`` tiles, in its order (for the
            inferencer: ``(fg, cls, cls_p)``, each ``(n, T, T)``).

        Raises:
            QueueFullError: The queue has no room for ``n`` more tiles.
            BatcherClosedError: The batcher is closing.
            ModelCallError: The model call failed.
        """
        if self._closed:
            raise BatcherClosedError("the service is shutting down")
        n = len(tiles)
        if admit and self._pending + n > self.max_queue:
            raise QueueFullError(
                f"inference queue is full ({self._pending} of {self.max_queue} tiles waiting)"
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(tile, loop.create_future(), now) for tile in tiles]
        self._pending += n
        QUEUE_DEPTH.set(self._pending)
        for item in items:
            self._queue.put_nowait(item)
        try:
            results = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            for item in items:
                item.future.cancel()
                # Free the places at once: under load a timed-out request must not keep
                # others out of the queue until the worker gets round to its tiles.
                self._release(item)
            QUEUE_DEPTH.set(self._pending)
            raise
        if timing is not None:
            timing.calls.update(item.ran for item in items if item.ran is not None)
        return tuple(np.stack(maps) for maps in zip(*results, strict=True))

    def _release(self, item: _Item) -> None:
        if item.counted:
            item.counted = False
            self._pending -= 1

    async def _next_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        deadline = 0.0
        while len(batch) < self.max_batch_size:
            if not batch:
                item = await self._queue.get()
            else:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
            self._release(item)
            if item.future.done():  # cancelled: skip it, so it takes no slot in the batch
                continue
            if not batch:
                deadline = time.perf_counter() + self.max_wait_s
            batch.append(item)
        QUEUE_DEPTH.set(self._pending)
        return batch

    async def _run(self) -> None:
        try:
            while True:
                await self._slots.acquire()
                batch = await self._next_batch()
                live = [item for item in batch if not item.future.done()]
                if not live:
                    self._slots.release()
                    continue
                call = asyncio.get_running_loop().create_task(self._call(live))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
        finally:
            for call in list(self._calls):
                call.cancel()

    async def _call(self, live: list[_Item]) -> None:
        """Runs one batch in the executor and hands each tile its outputs; frees its slot."""
        loop = asyncio.get_running_loop()
        try:
            started = time.perf_counter()
            for item in live:
                QUEUE_WAIT.observe(started - item.enqueued)
            x = np.stack([item.tile for item in live])
            try:
                outputs = await loop.run_in_executor(self._executor, self._forward, x)
            except asyncio.CancelledError:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(BatcherClosedError("the service stopped"))
                raise
            except Exception as exc:  # the model failed: fail this batch, keep serving
                logger.exception("model call failed for a batch of %d tiles", len(live))
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(ModelCallError(f"model call failed: {exc}"))
                return
            finished = time.perf_counter()
            MODEL_COMPUTE.observe(finished - started)
            BATCH_SIZE.observe(len(live))
            TILES.inc(len(live))
            for i, item in enumerate(live):
                item.ran = (started, finished)
                if not item.future.done():
                    item.future.set_result(tuple(out[i] for out in outputs))
        finally:
            self._slots.release()
