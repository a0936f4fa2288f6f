"""The inspection service: from a request's uploads to a finished board result.

The routes (:mod:`app.api.routes.predict`) keep the HTTP: parameters, status codes, headers and
response models. Everything between them and the inferencer is here: reading and decoding the
uploads, which model and which golden board, the rules, the timeout and the client that
leaves, the mapping of inference failures to API errors, and the metrics.

Every board that finishes passes through :meth:`InspectionService.finish`, with what it was
inspected against: the one place where each inspection can be recorded (``on_result``).

The golden boards are found in :mod:`app.services.references`; one board runs through the model
in :mod:`app.services.running`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.core.config import Settings
from app.core.errors import ApiError
from app.core.metrics import (
    DEFECTS,
    IMAGES,
    IN_FLIGHT_REQUESTS,
    INFLIGHT_PIXELS,
    INSPECTIONS,
    REJECTED,
    VERDICTS,
)
from app.inference.defects import Defect
from app.inference.imaging import declared_pixels
from app.inference.inferencer import Inferencer, InferenceResult
from app.inference.postprocess import PostprocessConfig
from app.services.admission import BudgetExceededError, Hold
from app.services.board_meta import META_FIELDS, BoardMeta, with_form
from app.services.golden_defects import split_reference_defects
from app.services.recipe_store import RecipeRevision, call_recipes
from app.services.recipes import (
    IgnoredDefect,
    ProductRules,
    UnitVerdict,
    apply_recipe,
    loosest,
)
from app.services.references import (
    Reference,
    check_product_param,
    stored_reference,
    uploaded_reference,
)
from app.services.running import run_board
from app.services.state import ServedModel, ServiceState
from app.services.uploads import Upload, decode_or_error, read_upload_form


@dataclasses.dataclass(frozen=True)
class RuleParams:
    """A request's post-processing parameters (``None``: not given)."""

    threshold: float | None = None
    min_area_px: int | None = None
    pixels_per_mm: float | None = None
    min_confidence: float | None = None
    #: ``?gating=``: "on"/"off", or ``None`` for the setting ``PCB_PAIR_GATING``.
    gating: str | None = None

    def config(self, inferencer: Inferencer, settings: Settings,
               product: ProductRules | None = None) -> PostprocessConfig:
        """The rules for ``inferencer``: the request's, else the product recipe's (``product``),
        else the settings', else its card's.

        Per model, since the pair model's card has its own defaults.
        """
        card = inferencer.card.thresholds
        p = product or ProductRules()
        return PostprocessConfig(
            threshold=_first(self.threshold, p.threshold, card.confidence),
            min_area_px=int(_first(self.min_area_px, p.min_area_px, card.min_area_px)),
            pixels_per_mm=_first(self.pixels_per_mm, p.pixels_per_mm,
                                 inferencer.card.pixels_per_mm),
            min_confidence=float(_first(self.min_confidence, p.min_confidence,
                                        card.min_confidence)),
            fail_rule=_first(p.fail_rule, settings.fail.rule),
            fail_min_count=_first(p.fail_min_count, settings.fail.min_count),
            fail_min_area_mm2=_first(p.fail_min_area_mm2, settings.fail.min_area_mm2),
            merge_distance_px=card.merge_distance_px,
        )


def _check_unit_serials(meta: BoardMeta, recipe: RecipeRevision | None) -> None:
    """422 before the board runs when ``unit_serials`` are not one per unit of the recipe."""
    units = 1 if recipe is None else max(1, len(recipe.body.units))
    if meta.unit_serials and len(meta.unit_serials) != units:
        raise ApiError(
            422, "invalid_metadata",
            f"unit_serials: expected one serial per unit ({units}, by position"
            f"{'' if recipe is None else f' in revision {recipe.revision} of the recipe'}), "
            f"received {len(meta.unit_serials)}",
        )


async def _split_reference(
    result: InferenceResult, pixels: np.ndarray, reference: Reference | None,
    config: PostprocessConfig, model: ServedModel,
) -> tuple[InferenceResult, tuple[Defect, ...]]:
    """The result without the differences that come from the golden board, and those."""
    if reference is None:
        return result, ()
    # A warp of the golden board and a few windows' components: off the event loop.
    kept, moved = await run_in_threadpool(
        split_reference_defects, result, pixels, reference.pixels, config,
        tuple(model.inferencer.card.classes),
    )
    return kept, tuple(moved)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _over_budget(exc: BudgetExceededError) -> ApiError:
    # Boards finish at about 0.8 Mpx a second on 2 cores: ask to come back when the pixels in
    # flight should be done, within [1, 60] s.
    retry = min(60, max(1, round(exc.in_flight / 800_000)))
    return ApiError(
        503, "over_capacity",
        f"The service is at its memory budget: {exc}. Nothing of this board was computed; "
        f"retry after {retry} s, or send it to another replica.",
        {"Retry-After": str(retry)}, reject_reason="memory_budget",
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Inspection:
    """One finished board: what its response is made of, and what a record of it would keep."""

    result: InferenceResult
    inferencer: Inferencer
    config: PostprocessConfig
    reference: Reference | None
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
    reference_defects: tuple[Defect, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class BatchItem:
    """One board of a batch, in upload order: its inspection, or the error it got alone."""

    index: int
    upload: Upload
    inspection: Inspection | None = None
    error: ApiError | None = None


#: Called with every finished inspection, in :meth:`InspectionService.finish`; an exception
#: fails that board's inspection. A hook may return the inspection with what it added (the
#: record's id), which the next hooks and the response then see.
ResultHook = Callable[[Inspection], Awaitable[Inspection | None]]


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
        self, request: Request, model: ServedModel, rules: RuleParams, product: str | None,
        meta: BoardMeta | None = None,
    ) -> Inspection:
        """Inspects the one board of a ``/predict`` request (field ``file`` or a raw body),
        against the golden board of the field ``template`` or of ``product`` (the query's or
        the form field's) if given. ``meta``: the query's board metadata.

        Raises:
            ApiError: The request's error (its status, code and message).
        """
        check_product_param(product)
        self._check_body_fits(request)
        form = await read_upload_form(
            request, self.settings, "file", ("template",), META_FIELDS
        )
        uploads, extra = form.uploads, form.extra
        meta = with_form(meta or BoardMeta(product=product), form.texts)
        product = meta.product
        check_product_param(product)
        if len(uploads) > 1:
            raise ApiError(
                400, "too_many_files",
                f"/predict takes one image; received {len(uploads)} in field 'file'. "
                "Use /predict/batch for several.",
            )
        templates = extra["template"]
        if len(templates) > 1:
            raise ApiError(
                400, "too_many_files",
                f"template: /predict takes one golden board; received {len(templates)} in "
                "field 'template'.",
            )
        if templates and product is not None:
            raise ApiError(
                422, "invalid_request",
                f"Send the golden board either as the field 'template' or as ?product={product}, "
                "not both.",
            )
        pair = bool(templates) or product is not None
        if pair:
            model = self.pair_model()
        async with self._admitted(uploads[0], pair) as hold:
            decoded = await decode_or_error(uploads[0], self.settings)
            reference = None
            recipe = None
            if templates:
                reference = await uploaded_reference(templates[0], self.settings)
            elif product is not None:
                reference, recipe = await self._product(product)
            _check_unit_serials(meta, recipe)
            config = rules.config(model.inferencer, self.settings,
                                  None if recipe is None else recipe.body.rules)
            result = await run_board(
                request, self.settings, model, decoded.pixels,
                config if recipe is None else loosest(config, recipe.body), reference,
                rules.gating, hold,
            )
            result, from_reference = await _split_reference(
                result, decoded.pixels, reference, config, model)
            return await self.finish(await self._judged(
                Inspection(result, model.inferencer, config, reference, uploads[0],
                           decoded.pixels, meta, recipe=recipe,
                           reference_defects=from_reference)
            ))

    async def inspect_batch(
        self, request: Request, model: ServedModel, rules: RuleParams, product: str | None,
        meta: BoardMeta | None = None,
    ) -> list[BatchItem]:
        """Inspects the boards of a ``/predict/batch`` request (field ``files``), each on its
        own: a board's own failure is its item's error, and never fails the others. ``meta``
        (the query's and the form's) goes with every board of the batch.

        Raises:
            ApiError: What fails the whole request (the product, the upload).
        """
        check_product_param(product)
        reference = None
        recipe = None
        if product is not None:
            # Checked before the upload is read: a batch for a product without a golden board
            # (or without a pair model) fails at once, not after every file has arrived.
            model = self.pair_model()
            reference, recipe = await self._product(product)
        # "template" is read only to be refused: ignored, it would inspect every board alone
        # while the station believes they were compared with its golden board.
        form = await read_upload_form(request, self.settings, "files", ("template",),
                                      META_FIELDS)
        if form.extra["template"]:
            raise ApiError(
                422, "invalid_request",
                "template: /predict/batch takes no golden board in the request; store it "
                "with PUT /v1/golden-boards/{product} and send ?product= (the form field "
                "'product' works too), or send each board with its template to /predict.",
            )
        uploads = form.uploads
        meta = with_form(meta or BoardMeta(product=product), form.texts)
        if meta.unit_serials:
            raise ApiError(
                422, "invalid_metadata",
                f"unit_serials: /predict/batch takes none (received {len(meta.unit_serials)}): "
                "each panel of a batch has its own boards; send panels with unit serials to "
                "/predict one at a time, or name the boards from 'serial'.",
            )
        if product is None and meta.product is not None:
            # The product came as a form field: the same golden board as ?product= would.
            check_product_param(meta.product)
            model = self.pair_model()
            reference, recipe = await self._product(meta.product)
        config = rules.config(model.inferencer, self.settings,
                              None if recipe is None else recipe.body.rules)
        run_config = config if recipe is None else loosest(config, recipe.body)

        async def one(index: int, upload: Upload) -> BatchItem:
            try:
                async with self._admitted(upload, reference is not None) as hold:
                    decoded = await decode_or_error(upload, self.settings)
                    result = await run_board(
                        request, self.settings, model, decoded.pixels, run_config, reference,
                        rules.gating, hold,
                    )
                    result, from_reference = await _split_reference(
                        result, decoded.pixels, reference, config, model)
                    inspection = await self.finish(await self._judged(
                        Inspection(result, model.inferencer, config, reference, upload,
                                   decoded.pixels, meta, recipe=recipe,
                                   reference_defects=from_reference)
                    ))
            except ApiError as exc:
                # Counted here: the exception handler that counts the others never sees it.
                if exc.status != 500 and exc.reject_reason:
                    REJECTED.labels(reason=exc.reject_reason).inc()
                return BatchItem(index, upload, error=exc)
            return BatchItem(index, upload, inspection=inspection)

        return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(uploads))))

    async def finish(self, inspection: Inspection) -> Inspection:
        """Where every finished board passes: records its metrics, then calls ``on_result``."""
        result, inferencer = inspection.result, inspection.inferencer
        IMAGES.inc()
        INSPECTIONS.labels(mode=inferencer.mode).inc()
        VERDICTS.labels(verdict=result.summary.verdict).inc()
        for defect in result.defects:
            DEFECTS.labels(class_name=defect.class_name).inc()
        for hook in self.on_result:
            inspection = await hook(inspection) or inspection
        return inspection

    async def check_golden(
        self, request: Request, pixels: np.ndarray
    ) -> tuple[list[Defect], ServedModel | None]:
        """What the single-image model finds on a golden board being stored (its own
        defects), with the model; ``([], None)`` while no model is ready. Not an inspection:
        nothing is recorded or counted as one.

        Raises:
            ApiError: 503 over the memory budget, and :func:`run_board`'s errors.
        """
        model = self.state.model
        if model is None or self.state.draining:
            return [], None
        config = RuleParams().config(model.inferencer, self.settings)
        try:
            with self.state.budget.admit(int(pixels.size)):
                result = await run_board(request, self.settings, model, pixels, config)
        except BudgetExceededError as exc:
            raise _over_budget(exc) from None
        return list(result.defects), model

    # ----------------------------------------------------------------- the memory budget
    def _check_body_fits(self, request: Request) -> None:
        """503 before the body is read when even its smallest decoding cannot fit now."""
        length = request.headers.get("content-length", "")
        if length.isdigit():
            try:
                self.state.budget.check_body(int(length))
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
        pixels = await run_in_threadpool(declared_pixels, upload.data) or 0
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
    async def _product(self, product: str) -> tuple[Reference, RecipeRevision | None]:
        """The stored golden board of ``product`` and its current recipe (``None``: none).

        Raises:
            ApiError: 404 ``unknown_product``, 409 ``recipe_outdated`` (the golden board was
                replaced by one of another size than the recipe was drawn on), 500.
        """
        reference = await stored_reference(self.state.golden, product)
        recipe: RecipeRevision | None = await call_recipes(
            self.state.recipes, "current_or_none", product)
        if recipe is not None:
            height, width = reference.pixels.shape[:2]
            board = recipe.golden_board
            if (board["width"], board["height"]) != (width, height):
                raise ApiError(
                    409, "recipe_outdated",
                    f"Revision {recipe.revision} of {product!r}'s recipe was drawn on a "
                    f"{board['width']}x{board['height']} golden board, but the stored golden "
                    f"board is now {width}x{height}: its units and zones would be misplaced. "
                    f"PUT /v1/products/{product}/recipe again for the new board.",
                )
        return reference, recipe

    async def _judged(self, inspection: Inspection) -> Inspection:
        """``inspection`` with its units and verdicts under its recipe (a worker thread: a
        panel may have many defects and zones). Without a recipe the defects and summary are
        post-processing's own, and the one unit is the whole image.

        Raises:
            ApiError: 422 ``invalid_metadata`` for ``unit_serials`` that are not one per unit.
        """
        result, recipe, meta = inspection.result, inspection.recipe, inspection.meta
        try:
            panel = await asyncio.to_thread(
                apply_recipe, result.defects, None if recipe is None else recipe.body,
                inspection.config, inspection.inferencer.card.classes, result.width,
                result.height, meta.serial, meta.unit_serials,
            )
        except ValueError as exc:
            raise ApiError(422, "invalid_metadata", str(exc)) from None
        if recipe is not None:
            result = dataclasses.replace(result, defects=panel.defects, summary=panel.summary)
        return dataclasses.replace(inspection, result=result, units=tuple(panel.units),
                                   ignored=tuple(panel.ignored))

    # ------------------------------------------------------------------- models, references
    def pair_model(self) -> ServedModel:
        """The golden-board (pair) model, or 503 ``pair_model_unavailable``.

        Asked for only once a request has a reference, so that the many requests without one
        never depend on the pair model.
        """
        pair = self.state.pair_model
        if pair is None:
            raise ApiError(
                503, "pair_model_unavailable",
                "This request has a reference board (the 'template' field or ?product=), but "
                f"the service has no golden-board model: {self.state.pair_unavailable_reason}. "
                "Send the board alone for a single-image inspection, or install the pair model "
                "(PCB_PAIR_WEIGHTS_PATH).",
            )
        return pair

    # ------------------------------------------------------------------------- the running
