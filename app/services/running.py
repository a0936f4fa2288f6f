"""Running one board through the model for a request: under the request's timeout, dropped
when the client leaves, its failures raised as domain errors, its model time told from its
wait."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from app.core.config import Settings
from app.core.metrics import (
    GATING_SKIPPED_PIXELS,
    GATING_SKIPPED_TILES,
    IN_FLIGHT_IMAGES,
    INFLIGHT_PIXELS,
)
from app.inference.batcher import (
    BatcherClosedError,
    ModelCallError,
    QueueFullError,
    SubmitTiming,
)
from app.inference.defects import PostprocessConfig
from app.inference.pipeline import InferenceResult
from app.inference.registration import MIN_SCORE, AlignmentError
from app.services.admission import Hold
from app.services.errors import (
    AlignmentFailedError,
    ClientGoneError,
    InspectionTimeoutError,
    ModelFailedError,
    OverloadedError,
    ShuttingDownError,
)
from app.services.golden_images import GoldenBoardImage
from app.services.state import ServedModel

#: Polled while a board runs: ``True`` once its client has left.
DisconnectCheck = Callable[[], Awaitable[bool]]


async def run_board(
    disconnected: DisconnectCheck | None,
    settings: Settings,
    model: ServedModel,
    pixels: np.ndarray,
    config: PostprocessConfig,
    golden: GoldenBoardImage | None = None,
    gating: str | None = None,
    hold: Hold | None = None,
) -> InferenceResult:
    """Runs one board under the request timeout, dropping the work if the client leaves.

    With a ``golden`` board (pair model) the golden board is registered first. The result's
    ``timings_ms`` has the tiles' time in the model (``forward``) apart from their wait for
    it (``queue``).

    ``disconnected``: polled while the board runs, to drop its work once its client has left
    (``None``: nobody leaves, as for a CLI).

    ``gating`` (``"on"``/``"off"``; ``None``: ``PCB_PAIR_GATING``): only the tiles with work go
    through the model (:mod:`app.inference.gating`). The timeout first allows for every tile;
    once the tiles to compute are known (before any is), it counts only those; and ``hold``,
    the board's share of the memory budget, gives back the registered golden board that gating
    freed then.

    Raises:
        OverloadedError, ShuttingDownError, InspectionTimeoutError, ModelFailedError,
        ClientGoneError (nobody reads it, it only ends the handler), AlignmentFailedError
        (the golden board cannot be aligned).
    """
    inferencer = model.inferencer
    gated = (settings.pair.gating if gating is None else gating) == "on"
    loop = asyncio.get_running_loop()
    started = loop.time()
    plan = _Plan(settings.limits.request_timeout_for(len(inferencer.pre_process(pixels))))
    timing = SubmitTiming()
    submit = functools.partial(model.batcher.submit, timing=timing)
    IN_FLIGHT_IMAGES.inc()
    task = asyncio.ensure_future(
        inferencer.predict_async(
            pixels, config, submit, golden=None if golden is None else golden.pixels,
            gating=gated, on_plan=functools.partial(_Plan.set, plan, settings, hold),
        )
    )
    watcher = asyncio.ensure_future(_wait_disconnect(disconnected))
    waiters: set[asyncio.Future[Any]] = {task, watcher}
    try:
        while True:
            if not plan.known.is_set():
                waiters.add(asyncio.ensure_future(plan.known.wait()))
            remaining = started + plan.timeout - loop.time()
            done, _ = await asyncio.wait(
                waiters, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED
            )
            if task in done or watcher in done or not done:
                break
            waiters = {task, watcher}  # the plan came: wait again, under its timeout
            if loop.time() >= started + plan.timeout:
                done = set()  # already past what the computed tiles allow
                break
        if task in done:
            result = _with_queue_time(_result_or_error(task, golden), timing)
            if result.skipped_tiles:
                GATING_SKIPPED_PIXELS.labels(mode=inferencer.mode).inc(result.skipped_px)
                GATING_SKIPPED_TILES.labels(mode=inferencer.mode).inc(result.skipped_tiles)
            return result
        task.cancel()  # frees the request's places in the queue
        if watcher in done:
            raise ClientGoneError("The client closed the request.")
        raise _timeout_error(plan.timeout, settings)
    finally:
        for waiter in waiters - {task}:
            waiter.cancel()
        if not task.done():
            task.cancel()
        IN_FLIGHT_IMAGES.dec()


def _timeout_error(timeout: float, settings: Settings) -> InspectionTimeoutError:
    limits = settings.limits
    return InspectionTimeoutError(
        f"Inspection took longer than {timeout:g} s (PCB_LIMITS_REQUEST_TIMEOUT_S "
        f"{limits.request_timeout_s:g} s + PCB_LIMITS_REQUEST_TIMEOUT_PER_TILE_S "
        f"{limits.request_timeout_per_tile_s:g} s for each tile after the first "
        "that goes through the model); the work was dropped."
    )


@dataclasses.dataclass
class _Plan:
    """A board's timeout: for every tile until the tiles to compute are known, then for those."""

    timeout: float
    known: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def set(self, settings: Settings, hold: Hold | None, computed: int, freed_px: int) -> None:
        # Called on the event loop by the inferencer, before any tile goes to the model.
        self.timeout = settings.limits.request_timeout_for(computed)
        self.known.set()
        if hold is not None and freed_px:
            hold.release(freed_px)
            INFLIGHT_PIXELS.set(hold.budget.in_flight)


async def _wait_disconnect(disconnected: DisconnectCheck | None) -> None:
    if disconnected is None:
        await asyncio.Event().wait()  # until cancelled: the board ends first
    else:
        while not await disconnected():
            await asyncio.sleep(0.05)


def _with_queue_time(result: InferenceResult, timing: SubmitTiming) -> InferenceResult:
    # The inferencer times the whole tile phase, from the first chunk handed to the batcher to
    # the last one back, which includes the chunks' wait in the queue behind other boards.
    # Split it: ``forward`` is the model calls that ran this board's tiles, ``queue`` the rest.
    model_ms = timing.model_s * 1e3
    timings: dict[str, float] = {}
    for name, ms in result.timings_ms.items():
        if name == "forward":
            timings["queue"] = round(max(0.0, ms - model_ms), 2)
            ms = round(min(ms, model_ms), 2)
        timings[name] = ms
    return dataclasses.replace(result, timings_ms=timings)


def _result_or_error(
    task: asyncio.Future[InferenceResult], golden: GoldenBoardImage | None
) -> InferenceResult:
    try:
        return task.result()
    except AlignmentError as exc:
        # Comparing a board with a golden board it does not align to would paint the whole
        # board as defects: refuse instead, with the score so the operator can judge.
        if golden is not None and golden.source == "product":
            what = f"the golden board of product {golden.product!r}"
        else:
            field = (golden.field if golden is not None else None) or "template"
            what = f"the uploaded golden board (field {field!r})"
        detail = str(exc)
        if "score" not in detail:
            detail += f" (alignment score {exc.score:.3f})"
        raise AlignmentFailedError(
            f"Cannot align {what} to this board: {detail}. Alignment needs a score of at least "
            f"{MIN_SCORE}; check that the golden board is the same design, side and "
            "orientation.",
        ) from None
    except QueueFullError as exc:
        raise OverloadedError(
            f"The service is at capacity ({exc}); retry after a second.", retry_after_s=1
        ) from None
    except BatcherClosedError:
        raise ShuttingDownError(
            "The service is shutting down; retry on another replica.", retry_after_s=5
        ) from None
    except ModelCallError:
        raise ModelFailedError(
            "The model failed on the batch holding this image; the image itself may be fine. "
            "Retry.",
        ) from None
