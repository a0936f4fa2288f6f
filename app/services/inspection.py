"""The inspection service: from a board's upload to a finished board result.

The routes (:mod:`app.api.routes.predict`) keep the HTTP: reading the request, parameters,
status codes, headers and response models. Everything between them and the inferencer is here:
decoding the uploads, which model and which golden board, the rules, the timeout and the client
that leaves, the inference failures as domain errors (:mod:`app.services.errors`), and the
metrics. It takes values (uploads, board metadata, rules, a disconnect check) and no request,
so a CLI or a test can inspect a board without HTTP.

Every board that finishes passes through :meth:`InspectionService.finish`, with what it was
inspected against: the one place where each inspection can be recorded (``on_result``).

The golden boards are found in :mod:`app.services.golden_images`; one board runs through the model
in :mod:`app.services.running`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import numpy as np
from anyio.to_thread import run_sync

from app.core.config import Settings
from app.core.domain_errors import DomainError
from app.core.metrics import (
    DEFECTS,
    IMAGES,
    IN_FLIGHT_REQUESTS,
    INFLIGHT_PIXELS,
    INSPECTIONS,
    VERDICTS,
)
from app.core.rules import RuleOverrides, resolve
from app.inference.defects import Defect, PostprocessConfig
from app.inference.imaging import declared_pixels
from app.inference.inferencer import Inferencer
from app.inference.pipeline import InferenceResult
from app.services.admission import BudgetExceededError, Hold
from app.services.board_meta import BoardMeta
from app.services.errors import (
    InvalidMetadataError,
    OverCapacityError,
    PairModelUnavailableError,
    RecipeOutdatedError,
)
from app.services.golden_defects import split_golden_defects
from app.services.golden_images import (
    GoldenBoardImage,
    check_product_param,
    stored_golden,
    uploaded_golden,
)
from app.services.recipe_store import RecipeRevision, in_recipes
from app.services.recipes import (
    IgnoredDefect,
    UnitVerdict,
    apply_recipe,
    loosest,
)
from app.services.running import DisconnectCheck, run_board
from app.services.state import ServedModel, ServiceState
from app.services.uploads import Upload, decode_upload


class RuleParams(RuleOverrides):
    """A request's rules (``None``: not given) and its gating."""

    #: ``?gating=``: "on"/"off", or ``None`` for the setting ``PCB_PAIR_GATING``.
    gating: Literal["on", "off"] | None = None

    def config(self, inferencer: Inferencer, settings: Settings,
               product: RuleOverrides | None = None) -> PostprocessConfig:
        """The rules for ``inferencer``: the request's, else the product recipe's (``product``),
        else its card's operating point with the settings' fail rule.

        Per model, since the pair model's card has its own defaults.
        """
        fail = RuleOverrides(fail_rule=settings.fail.rule, fail_min_count=settings.fail.min_count,
                             fail_min_area_mm2=settings.fail.min_area_mm2)
        return resolve(inferencer.card.rules(fail), self, product)


def _check_unit_serials(meta: BoardMeta, recipe: RecipeRevision | None) -> None:
    """:class:`InvalidMetadataError` before the board runs when ``unit_serials`` are not one
    per unit of the recipe."""
    units = 1 if recipe is None else max(1, len(recipe.body.units))
    if meta.unit_serials and len(meta.unit_serials) != units:
        raise InvalidMetadataError(
            f"unit_serials: expected one serial per unit ({units}, by position"
            f"{'' if recipe is None else f' in revision {recipe.revision} of the recipe'}), "
            f"received {len(meta.unit_serials)}",
        )


async def _split_golden_defects(
    result: InferenceResult, pixels: np.ndarray, golden: GoldenBoardImage | None,
    config: PostprocessConfig, model: ServedModel,
) -> tuple[InferenceResult, tuple[Defect, ...]]:
    """The result without the differences that come from the golden board, and those."""
    if golden is None:
        return result, ()
    # A warp of the golden board and a few windows' components: off the event loop.
    classes = tuple(model.inferencer.card.classes)
    kept, moved = await run_sync(
        lambda: split_golden_defects(result, pixels, golden.pixels, config, classes)
    )
    return kept, tuple(moved)


def _over_budget(exc: BudgetExceededError) -> OverCapacityError:
    # Boards finish at about 0.8 Mpx a second on 2 cores: ask to come back when the pixels in
    # flight should be done, within [1, 60] s.
    retry = min(60, max(1, round(exc.in_flight / 800_000)))
    return OverCapacityError(
        f"The service is at its memory budget: {exc}. Nothing of this board was computed; "
        f"retry after {retry} s, or send it to another replica.",
        retry_after_s=retry,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class InspectedBoard:
    """One finished board: what its response is made of, and what a record of it would keep."""

    result: InferenceResult
    inferencer: Inferencer
    config: PostprocessConfig
    golden: GoldenBoardImage | None
    upload: Upload
    #: The decoded board (``(H, W)`` uint8), for the overlay.
    pixels: np.ndarray
    #: The board's metadata (query parameters and form fields), for its record.
    meta: BoardMeta = BoardMeta()
    #: Its record's id, set by the recording hook; ``None`` when nothing was recorded.
    record_id: str | None = None
    #: The boards of the panel with their verdicts (one, the whole image, without a recipe),
    #: the defects the recipe set aside, and the recipe revision applied (``None``: none).
    units: tuple[UnitVerdict, ...] = ()
    ignored: tuple[IgnoredDefect, ...] = ()
    recipe: RecipeRevision | None = None
    #: Differences that come from the golden board, not the board
    #: (:mod:`app.services.golden_defects`); already out of ``result``.
    golden_defects: tuple[Defect, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class BatchItem:
    """One board of a batch, in upload order: its inspection, or the error it got alone."""

    index: int
    upload: Upload
    inspection: InspectedBoard | None = None
    error: DomainError | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
    """What boards are inspected with: the model, and for a product its golden board and
    current recipe (``None``: none)."""

    model: ServedModel
    golden: GoldenBoardImage | None = None
    recipe: RecipeRevision | None = None


#: Called with every finished inspection, in :meth:`InspectionService.finish`; an exception
#: fails that board's inspection. A hook may return the inspection with what it added (the
#: record's id), which the next hooks and the response then see.
ResultHook = Callable[[InspectedBoard], Awaitable[InspectedBoard | None]]


class InspectionService:
    """Inspects the boards of requests with the service's models (one per app).

    Args:
        state: The service's state: settings, models, golden boards and the drain.
        on_result: Awaited, in order, with every board that finishes (see :meth:`finish`).
    """

    def __init__(self, state: ServiceState, on_result: list[ResultHook] | None = None) -> None:
        self.state = state
        self.on_result: list[ResultHook] = list(on_result or [])

    @property
    def settings(self) -> Settings:
        """The service's settings."""
        return self.state.settings

    @contextlib.asynccontextmanager
    async def request_in_flight(self) -> AsyncIterator[None]:
        """Counts one inspection request as in flight (the gauge, and the drain's count)."""
        state = self.state
        state.in_flight += 1
        state.idle.clear()
        IN_FLIGHT_REQUESTS.inc()
        try:
            yield
        finally:
            state.in_flight -= 1
            IN_FLIGHT_REQUESTS.dec()
            if state.in_flight == 0:
                state.idle.set()

    # ----------------------------------------------------------------------- the requests
    async def inspect(
        self, model: ServedModel, board: Upload, rules: RuleParams, meta: BoardMeta,
        golden_upload: Upload | None = None, disconnected: DisconnectCheck | None = None,
    ) -> InspectedBoard:
        """Inspects one board, against the uploaded golden board ``golden_upload`` or the stored
        one of ``meta.product`` if given (with the pair model), else with ``model``.

        ``disconnected``: polled while the board runs; its work is dropped once it says the
        client has left (``None``: never).

        Raises:
            DomainError: What fails the board (:mod:`app.services.errors`, the stores' errors,
                :class:`app.inference.imaging.ImageError`).
        """
        product = meta.product
        check_product_param(product)
        pair = golden_upload is not None or product is not None
        if pair:
            model = self.pair_model()
        async with self._admitted(board, pair) as hold:
            decoded = await decode_upload(board, self.settings)
            golden: GoldenBoardImage | None = None
            recipe = None
            if golden_upload is not None:
                golden = await uploaded_golden(golden_upload, self.settings)
            elif product is not None:
                golden, recipe = await self._product(product)
            _check_unit_serials(meta, recipe)
            config = rules.config(model.inferencer, self.settings,
                                  None if recipe is None else recipe.body.rules)
            result = await run_board(
                disconnected, self.settings, model, decoded.pixels,
                config if recipe is None else loosest(config, recipe.body), golden,
                rules.gating, hold,
            )
            result, from_golden = await _split_golden_defects(
                result, decoded.pixels, golden, config, model)
            return await self.finish(await self._judged(
                InspectedBoard(result, model.inferencer, config, golden, board,
                           decoded.pixels, meta, recipe=recipe,
                           golden_defects=from_golden)
            ))

    async def target(self, model: ServedModel, product: str | None) -> Target:
        """What boards of ``product`` are inspected with: the pair model, its stored golden
        board and recipe; ``model`` alone without a product.

        A batch asks for it before its upload is read: a batch for a product without a golden
        board (or without a pair model) fails at once, not after every file has arrived.

        Raises:
            InvalidProductError, UnknownProductError, PairModelUnavailableError,
            RecipeOutdatedError, and the stores' errors.
        """
        if product is None:
            return Target(model)
        check_product_param(product)
        pair = self.pair_model()
        golden, recipe = await self._product(product)
        return Target(pair, golden, recipe)

    async def inspect_batch(
        self, target: Target, boards: list[Upload], rules: RuleParams, meta: BoardMeta,
        disconnected: DisconnectCheck | None = None,
    ) -> list[BatchItem]:
        """Inspects ``boards`` with ``target`` (:meth:`target`), each on its own: a board's
        own failure is its item's error, and never fails the others. ``meta`` goes with every
        board; a ``meta.product`` that ``target`` has no golden board for is looked up here.

        Raises:
            DomainError: What fails the whole batch (its metadata, its product).
        """
        if meta.unit_serials:
            raise InvalidMetadataError(
                f"unit_serials: /predict/batch takes none (received {len(meta.unit_serials)}): "
                "each panel of a batch has its own boards; send panels with unit serials to "
                "/predict one at a time, or name the boards from 'serial'."
            )
        if target.golden is None and meta.product is not None:
            # The product came as a form field: the same golden board as ?product= would.
            target = await self.target(target.model, meta.product)
        model, golden, recipe = target.model, target.golden, target.recipe
        config = rules.config(model.inferencer, self.settings,
                              None if recipe is None else recipe.body.rules)
        run_config = config if recipe is None else loosest(config, recipe.body)

        async def one(index: int, upload: Upload) -> BatchItem:
            try:
                async with self._admitted(upload, golden is not None) as hold:
                    decoded = await decode_upload(upload, self.settings)
                    result = await run_board(
                        disconnected, self.settings, model, decoded.pixels, run_config,
                        golden, rules.gating, hold,
                    )
                    result, from_golden = await _split_golden_defects(
                        result, decoded.pixels, golden, config, model)
                    inspection = await self.finish(await self._judged(
                        InspectedBoard(result, model.inferencer, config, golden, upload,
                                   decoded.pixels, meta, recipe=recipe,
                                   golden_defects=from_golden)
                    ))
            except DomainError as exc:
                return BatchItem(index, upload, error=exc)
            return BatchItem(index, upload, inspection=inspection)

        return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(boards))))

    async def finish(self, inspection: InspectedBoard) -> InspectedBoard:
        """Where every finished board passes: records its metrics, then calls ``on_result``."""
        result, inferencer = inspection.result, inspection.inferencer
        IMAGES.inc()
        INSPECTIONS.labels(mode=inferencer.mode).inc()
        VERDICTS.labels(verdict=result.summary.verdict).inc()
        for defect in result.defects:
            DEFECTS.labels(class_name=defect.class_).inc()
        for hook in self.on_result:
            inspection = await hook(inspection) or inspection
        return inspection

    async def check_golden(
        self, pixels: np.ndarray, disconnected: DisconnectCheck | None = None
    ) -> tuple[list[Defect], ServedModel | None]:
        """What the single-image model finds on a golden board being stored (its own
        defects), with the model; ``([], None)`` while no model is ready. Not an inspection:
        nothing is recorded or counted as one.

        Raises:
            OverCapacityError: Over the memory budget; and :func:`run_board`'s errors.
        """
        model = self.state.model
        if model is None or self.state.draining:
            return [], None
        config = RuleParams().config(model.inferencer, self.settings)
        try:
            with self.state.budget.admit(int(pixels.size)):
                result = await run_board(disconnected, self.settings, model, pixels, config)
        except BudgetExceededError as exc:
            raise _over_budget(exc) from None
        return list(result.defects), model

    # ----------------------------------------------------------------- the memory budget
    def check_body_fits(self, length: int | None) -> None:
        """:class:`OverCapacityError` before a body of ``length`` bytes (``None``: unknown) is
        read when even its smallest decoding cannot fit now."""
        if length is not None:
            try:
                self.state.budget.check_body(length)
            except BudgetExceededError as exc:
                raise _over_budget(exc) from None

    @contextlib.asynccontextmanager
    async def _admitted(self, upload: Upload, pair: bool) -> AsyncIterator[Hold]:
        """Holds the board's pixels of the memory budget while it is decoded, run and
        post-processed, or raises 503 ``over_capacity`` before any of that starts.

        The size comes from the image header. A pair board counts twice: its registered golden
        board is a second full-size image. A header that cannot be read, or a board over the
        size limit, counts nothing here: decoding refuses it at once, with its own error.
        Yields the board's hold, through which gating gives back its golden board's count.
        """
        # A header is parsed in a worker thread: a hostile file can make even that slow.
        pixels = await run_sync(declared_pixels, upload.data) or 0
        if pixels > self.settings.limits.max_image_pixels:
            pixels = 0
        cost = pixels * (2 if pair else 1)
        budget = self.state.budget
        try:
            budget.check(cost)
        except BudgetExceededError as exc:
            raise _over_budget(exc) from None
        try:
            with budget.admit(cost) as hold:
                INFLIGHT_PIXELS.set(budget.in_flight)
                yield hold
        finally:
            INFLIGHT_PIXELS.set(budget.in_flight)  # the budget's own count, after the release

    # ------------------------------------------------------------------------- recipes
    async def _product(self, product: str) -> tuple[GoldenBoardImage, RecipeRevision | None]:
        """The stored golden board of ``product`` and its current recipe (``None``: none).

        Raises:
            UnknownProductError, RecipeOutdatedError (the golden board was replaced by one of
                another size than the recipe was drawn on), and the stores' errors.
        """
        golden = await stored_golden(self.state.golden, product)
        recipe = await in_recipes(self.state.recipes.current_or_none, product)
        if recipe is not None:
            height, width = golden.pixels.shape[:2]
            board = recipe.golden_board
            if (board["width"], board["height"]) != (width, height):
                raise RecipeOutdatedError(
                    f"Revision {recipe.revision} of {product!r}'s recipe was drawn on a "
                    f"{board['width']}x{board['height']} golden board, but the stored golden "
                    f"board is now {width}x{height}: its units and zones would be misplaced. "
                    f"PUT /v1/products/{product}/recipe again for the new board.",
                )
        return golden, recipe

    async def _judged(self, inspection: InspectedBoard) -> InspectedBoard:
        """``inspection`` with its units and verdicts under its recipe (a worker thread: a
        panel may have many defects and zones). Without a recipe the defects and summary are
        post-processing's own, and the one unit is the whole image.

        Raises:
            InvalidMetadataError: ``unit_serials`` that are not one per unit.
        """
        result, recipe, meta = inspection.result, inspection.recipe, inspection.meta
        try:
            panel = await asyncio.to_thread(
                apply_recipe, result.defects, None if recipe is None else recipe.body,
                inspection.config, inspection.inferencer.card.classes, result.width,
                result.height, meta.serial, meta.unit_serials,
            )
        except ValueError as exc:
            raise InvalidMetadataError(str(exc)) from None
        if recipe is not None:
            result = dataclasses.replace(result, defects=panel.defects, summary=panel.summary)
        return dataclasses.replace(inspection, result=result, units=tuple(panel.units),
                                   ignored=tuple(panel.ignored))

    # ------------------------------------------------------------------- models, golden boards
    def pair_model(self) -> ServedModel:
        """The golden-board (pair) model, or :class:`PairModelUnavailableError`.

        Asked for only once a request has a golden board, so that the many requests without one
        never depend on the pair model.
        """
        pair = self.state.pair_model
        if pair is None:
            raise PairModelUnavailableError(
                "This request has a golden board (the 'golden' or 'template' field, or "
                "?product=), but the service has no golden-board model: "
                f"{self.state.pair_unavailable_reason}. "
                "Send the board alone for a single-image inspection, or install the pair model "
                "(PCB_PAIR_WEIGHTS_PATH).",
            )
        return pair

    # ------------------------------------------------------------------------- the running
