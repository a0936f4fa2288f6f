"""Tests of ``app.inference.batcher.DynamicBatcher``, the unit under test.

The forward function here is a plain numpy function standing in for the model call: the
batcher only moves tiles in and results out, so what it must get right (grouping, routing
each result back to its caller, limits, cancellation, failures, shutdown) does not depend on
what the function computes. It is not a mock of the model; the model is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from app.inference.batcher import (
    BatcherClosedError,
    DynamicBatcher,
    ModelCallError,
    QueueFullError,
    SubmitTiming,
)

T = 4  # tile side: the batcher is size-agnostic, small tiles keep the tests fast


def tiles(n: int, value: int) -> np.ndarray:
    """``n`` tiles; tile ``i`` is filled with ``value + i``, so every tile is identifiable."""
    out = np.empty((n, T, T, 1), dtype=np.uint8)
    for i in range(n):
        out[i] = value + i
    return out


class RecordingForward:
    """A numpy 'model': fg = pixel / 255, cls = pixel % 7; records each call's batch."""

    def __init__(self, fail_calls: set[int] | None = None, gate: threading.Event | None = None):
        self.batches: list[np.ndarray] = []
        self.fail_calls = fail_calls or set()
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(x.copy())
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if len(self.batches) in self.fail_calls:
            raise RuntimeError(f"boom in call {len(self.batches)}")
        return x[..., 0].astype(np.float32) / 255.0, (x[..., 0] % 7).astype(np.uint8)

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x[..., 0].astype(np.float32) / 255.0, (x[..., 0] % 7).astype(np.uint8)


def run(
    test: Callable[..., Awaitable[Any]], forward: RecordingForward, *, start: bool = True, **kw: Any
) -> Any:
    """Runs ``test(batcher)`` on a fresh event loop, always closing the batcher afterwards."""
    kw = {"max_batch_size": 8, "max_wait_s": 0.05, "max_queue": 64, **kw}

    async def main() -> Any:
        batcher = DynamicBatcher(forward, **kw)
        if start:
            batcher.start()
        try:
            return await asyncio.wait_for(test(batcher), 20)
        finally:
            await batcher.close()

    return asyncio.run(main())


def assert_routed(result: tuple[np.ndarray, np.ndarray], sent: np.ndarray) -> None:
    """Each caller gets exactly its own tiles' outputs, in its own order."""
    fg, cls = result
    want_fg, want_cls = expected(sent)
    np.testing.assert_array_equal(fg, want_fg)
    np.testing.assert_array_equal(cls, want_cls)


# --- grouping -------------------------------------------------------------------------------


def test_concurrent_submits_share_one_model_call() -> None:
    forward = RecordingForward()
    sent = [tiles(2, 10), tiles(3, 50), tiles(1, 100)]

    async def test(b: DynamicBatcher) -> list[Any]:
        return await asyncio.gather(*(b.submit(x) for x in sent))

    results = run(test, forward)
    # 6 tiles from 3 requests fit one batch of 8: one model call, not three.
    assert forward.sizes == [6]
    for result, x in zip(results, sent, strict=True):
        assert_routed(result, x)


def test_batches_never_exceed_max_batch_size() -> None:
    forward = RecordingForward()
    sent = [tiles(3, 10 * i) for i in range(5)]  # 15 tiles

    async def test(b: DynamicBatcher) -> list[Any]:
        return await asyncio.gather(*(b.submit(x) for x in sent))

    results = run(test, forward, max_batch_size=4)
    assert sum(forward.sizes) == 15
    assert max(forward.sizes) == 4
    # Full batches go first: only the last one may be short.
    assert forward.sizes[:-1] == [4] * (len(forward.sizes) - 1)
    for result, x in zip(results, sent, strict=True):
        assert_routed(result, x)


def test_lone_submit_fires_after_max_wait() -> None:
    forward = RecordingForward()

    async def test(b: DynamicBatcher) -> float:
        started = time.perf_counter()
        assert_routed(await b.submit(tiles(1, 7)), tiles(1, 7))
        return time.perf_counter() - started

    elapsed = run(test, forward, max_wait_s=0.3)
    # It waited for company (max_wait), then ran alone rather than waiting forever.
    assert 0.25 <= elapsed < 5, elapsed
    assert forward.sizes == [1]


def test_full_batch_does_not_wait_for_max_wait() -> None:
    forward = RecordingForward()

    async def test(b: DynamicBatcher) -> float:
        started = time.perf_counter()
        await b.submit(tiles(4, 0))
        return time.perf_counter() - started

    # With a 30 s max_wait, only "batch is full" can make this return quickly.
    elapsed = run(test, forward, max_batch_size=4, max_wait_s=30)
    assert elapsed < 5, elapsed
    assert forward.sizes == [4]


# --- admission ------------------------------------------------------------------------------


def test_queue_bound_raises_queue_full_all_or_nothing() -> None:
    forward = RecordingForward()

    async def test(b: DynamicBatcher) -> None:
        first = asyncio.ensure_future(b.submit(tiles(3, 0)))
        await asyncio.sleep(0)  # let it enqueue; no worker runs, so it stays queued
        assert b.pending == 3
        with pytest.raises(QueueFullError, match=r"3 of 4 tiles"):
            await b.submit(tiles(2, 50))
        # The refused request took no places: all-or-nothing admission.
        assert b.pending == 3
        second = asyncio.ensure_future(b.submit(tiles(1, 90)))  # exactly fills the queue
        await asyncio.sleep(0)
        assert b.pending == 4
        b.start()
        assert_routed(await first, tiles(3, 0))
        assert_routed(await second, tiles(1, 90))
        assert b.pending == 0

    run(test, forward, start=False, max_batch_size=2, max_queue=4)


def test_cancelled_submit_frees_its_places_and_its_tiles_are_skipped() -> None:
    forward = RecordingForward()

    async def test(b: DynamicBatcher) -> None:
        doomed = asyncio.ensure_future(b.submit(tiles(3, 200)))
        await asyncio.sleep(0)
        assert b.pending == 3
        doomed.cancel()  # the client went away or timed out
        with contextlib.suppress(asyncio.CancelledError):
            await doomed
        # Its places are free at once, not only when the worker gets round to them: a
        # request that times out under load must not keep others out of the queue.
        assert b.pending == 0
        survivor = tiles(4, 1)
        late = asyncio.ensure_future(b.submit(survivor))  # would not fit if places leaked
        await asyncio.sleep(0)
        b.start()
        assert_routed(await late, survivor)

    run(test, forward, start=False, max_batch_size=4, max_queue=4)
    # The cancelled tiles (values 200..202) never reached the model.
    assert forward.sizes == [4]
    assert all(int(batch.max()) < 200 for batch in forward.batches)


def test_cancelled_tiles_do_not_take_batch_slots() -> None:
    forward = RecordingForward()

    async def test(b: DynamicBatcher) -> None:
        doomed = asyncio.ensure_future(b.submit(tiles(3, 200)))
        await asyncio.sleep(0)
        doomed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await doomed
        live = [asyncio.ensure_future(b.submit(tiles(2, 10 * i))) for i in range(2)]
        await asyncio.sleep(0)
        b.start()
        for i, fut in enumerate(live):
            assert_routed(await fut, tiles(2, 10 * i))

    run(test, forward, start=False, max_batch_size=4, max_queue=8, max_wait_s=0.2)
    # The 4 live tiles fill one batch; skipped tiles did not split it into two calls.
    assert forward.sizes == [4]


# --- failures -------------------------------------------------------------------------------


def test_failing_model_call_fails_only_its_batch() -> None:
    forward = RecordingForward(fail_calls={1})

    async def test(b: DynamicBatcher) -> list[Any]:
        # max_batch_size=2: each request is its own batch; the first call raises.
        return await asyncio.gather(
            b.submit(tiles(2, 0)), b.submit(tiles(2, 40)), return_exceptions=True
        )

    first, second = run(test, forward, max_batch_size=2)
    assert isinstance(first, ModelCallError) and "boom in call 1" in str(first)
    assert_routed(second, tiles(2, 40))
    assert forward.sizes == [2, 2]


def test_next_batch_succeeds_after_a_failed_one() -> None:
    forward = RecordingForward(fail_calls={1})

    async def test(b: DynamicBatcher) -> None:
        together = await asyncio.gather(
            b.submit(tiles(1, 0)), b.submit(tiles(2, 5)), return_exceptions=True
        )
        # Both requests were in the failing batch: both see the model error...
        assert all(isinstance(r, ModelCallError) for r in together), together
        # ...and the worker survived it: the next batch runs normally.
        assert_routed(await b.submit(tiles(3, 9)), tiles(3, 9))

    run(test, forward)
    assert forward.sizes == [3, 3]


# --- shutdown -------------------------------------------------------------------------------


def test_close_fails_waiting_items_and_refuses_new_ones() -> None:
    forward = RecordingForward()

    async def test(b: DynamicBatcher) -> None:
        waiting = asyncio.ensure_future(b.submit(tiles(2, 0)))
        await asyncio.sleep(0)
        await b.close()
        with pytest.raises(BatcherClosedError):
            await waiting
        assert b.pending == 0
        with pytest.raises(BatcherClosedError):
            await b.submit(tiles(1, 0))

    run(test, forward, start=False)
    assert forward.sizes == []


def test_close_during_a_model_call_fails_that_batch() -> None:
    gate = threading.Event()
    forward = RecordingForward(gate=gate)

    async def test(b: DynamicBatcher) -> None:
        in_call = asyncio.ensure_future(b.submit(tiles(2, 0)))
        await asyncio.to_thread(forward.started.wait, 10)
        # close() waits for the model thread; open the gate shortly so the call can end.
        threading.Timer(0.2, gate.set).start()
        await b.close()
        with pytest.raises(BatcherClosedError):
            await in_call

    run(test, forward)


def test_rejects_inconsistent_limits() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(RecordingForward(), max_batch_size=0, max_wait_s=0, max_queue=4)
    with pytest.raises(ValueError, match="max_queue"):
        DynamicBatcher(RecordingForward(), max_batch_size=8, max_wait_s=0, max_queue=4)
    with pytest.raises(ValueError, match="Received: concurrency=0"):
        DynamicBatcher(RecordingForward(), max_batch_size=1, max_wait_s=0, max_queue=4,
                       concurrency=0)


# --- concurrent model calls -----------------------------------------------------------------


class OverlapForward(RecordingForward):
    """Counts the calls running at once; each call holds ``hold`` s or until ``release``."""

    def __init__(self, hold: float = 0.3) -> None:
        super().__init__()
        self.hold = hold
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.release = threading.Event()
        self.two_running = threading.Event()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            if self.running == 2:
                self.two_running.set()
        try:
            self.release.wait(self.hold)  # held, so that calls overlap
            return super().__call__(x)
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_model_calls_at_once_never_exceed_concurrency(concurrency: int) -> None:
    forward = OverlapForward()
    sent = [tiles(1, 10 * i) for i in range(6)]

    async def test(b: DynamicBatcher) -> list[Any]:
        return await asyncio.gather(*(b.submit(x) for x in sent))

    results = run(test, forward, max_batch_size=1, max_wait_s=0, concurrency=concurrency)
    # Six one-tile batches with each call held 0.3 s: as many run at once as allowed.
    assert forward.most == concurrency
    assert forward.sizes == [1] * 6
    for result, x in zip(results, sent, strict=True):
        assert_routed(result, x)


def test_tiles_keep_gathering_while_every_call_is_busy() -> None:
    forward = OverlapForward(hold=10)

    async def test(b: DynamicBatcher) -> None:
        first = []
        for i in range(2):  # one at a time, so each is a call of its own
            first.append(asyncio.ensure_future(b.submit(tiles(1, i))))
            while forward.running <= i:
                await asyncio.sleep(0.01)
        assert forward.two_running.is_set()
        # Both calls busy: these four wait together and go as one batch when a call ends.
        later = [asyncio.ensure_future(b.submit(tiles(1, 50 + i))) for i in range(4)]
        await asyncio.sleep(0.05)
        forward.release.set()
        await asyncio.gather(*first, *later)

    run(test, forward, max_batch_size=4, max_wait_s=0, concurrency=2)
    assert sorted(forward.sizes) == [1, 1, 4]


def test_close_with_two_calls_in_flight_fails_both() -> None:
    gate = threading.Event()
    forward = RecordingForward(gate=gate)

    async def test(b: DynamicBatcher) -> None:
        in_calls = [asyncio.ensure_future(b.submit(tiles(1, i))) for i in range(2)]
        while len(forward.batches) < 2:
            await asyncio.sleep(0.01)
        threading.Timer(0.2, gate.set).start()
        await b.close()
        for call in in_calls:
            with pytest.raises(BatcherClosedError):
                await call

    run(test, forward, max_batch_size=1, max_wait_s=0, concurrency=2)


def test_overlapping_calls_count_once_in_model_time() -> None:
    timing = SubmitTiming(calls={(0.0, 1.0), (0.5, 1.5), (3.0, 4.0), (3.2, 3.4)})
    # [0, 1.5] and [3, 4]: 1.5 s + 1 s, not the 3.2 s the four durations add up to.
    assert timing.model_s == pytest.approx(2.5)
