"""Product recipes: a product's panel (units), zones and operating point, versioned.

Thin routes over :class:`app.services.recipe_store.RecipeStore`; what a recipe means is in
:mod:`app.services.recipes`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from app.api.deps import AdminDep, AuthDep, StateDep
from app.api.openapi import error_responses
from app.api.params import ProductPath, product_id
from app.api.schemas import RecipeOut, RecipeRevisionListOut, RecipeRevisionOut
from app.services.golden_images import in_store
from app.services.recipe_store import RecipeRevision, in_recipes
from app.services.recipes import RecipeBody

router = APIRouter(prefix="/v1/products", tags=["product recipes"], dependencies=[AuthDep])

_ERRORS = error_responses(401, 404, 422, 500)
RevisionParam = Annotated[int, Path(ge=1, le=10**9, description="The revision, 1-based.")]


def _out(rev: RecipeRevision) -> RecipeOut:
    return RecipeOut.model_validate(rev.as_dict())


@router.put(
    "/{product}/recipe",
    summary="Store a new revision of a product's recipe",
    response_model=RecipeOut,
    status_code=201,
    # 400: a body that is not text at all (JSON that does not parse is a 422).
    responses={**_ERRORS, **error_responses(400, 403),
               200: {"model": RecipeOut, "description": "Unchanged: the current revision."},
               201: {"description": "Stored as a new revision."}},
)
async def put_recipe(
    product: ProductPath, body: RecipeBody, response: Response, state: StateDep,
    principal: AdminDep,
) -> RecipeOut:
    """Stores ``body`` as the next revision of ``product``'s recipe, for its current golden
    board (``PUT /v1/golden-boards/{product}`` first): 201 with the new revision, or 200 with
    the current one when nothing changed. Units and zones must lie inside the golden board,
    units must not overlap. Every later ``?product=`` inspection applies it; older revisions
    stay readable.

    Storing a recipe changes how every later board of the product is judged: an
    administrator's act, as for the golden board.
    """
    product = product_id(product)
    golden = await in_store(state.golden, state.golden.get, product)
    rev, created = await in_recipes(state.recipes.put, product, body, golden, principal.name)
    response.status_code = 201 if created else 200
    return _out(rev)


@router.get(
    "/{product}/recipe",
    summary="The current recipe of a product",
    response_model=RecipeOut,
    responses=_ERRORS,
)
async def get_recipe(product: ProductPath, state: StateDep) -> RecipeOut:
    """The current (latest) revision of ``product``'s recipe."""
    return _out(await in_recipes(state.recipes.current, product_id(product)))


@router.get(
    "/{product}/recipe/revisions",
    summary="Every revision of a product's recipe",
    response_model=RecipeRevisionListOut,
    responses=_ERRORS,
)
async def list_revisions(product: ProductPath, state: StateDep) -> RecipeRevisionListOut:
    """Number, sha256, time and author of every revision, oldest first."""
    product = product_id(product)
    revs = await in_recipes(state.recipes.revisions, product)
    return RecipeRevisionListOut(
        product=product, count=len(revs),
        revisions=[RecipeRevisionOut(revision=r.revision, sha256=r.sha256, created=r.created,
                                     author=r.author) for r in revs],
    )


@router.get(
    "/{product}/recipe/revisions/{revision}",
    summary="One revision of a product's recipe",
    response_model=RecipeOut,
    responses=_ERRORS,
)
async def get_revision(product: ProductPath, revision: RevisionParam, state: StateDep) -> RecipeOut:
    """Revision ``revision`` of ``product``'s recipe, as it was stored (what an inspection
    that names it in its ``recipe`` block was judged by)."""
    return _out(await in_recipes(state.recipes.revision, product_id(product), revision))
