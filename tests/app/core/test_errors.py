"""Tests of ``app.core.errors``: the one table that answers each domain error in HTTP.

The statuses, codes and headers below are written out by hand, from the API's documented
answers: the table must give exactly these, through the one exception handler.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import app
from app.core.domain_errors import DomainError
from app.core.errors import DOMAIN_ERRORS, install_error_handlers
from app.core.ids import InvalidProductError
from app.core.metrics import REJECTED
from app.inference.imaging import ImageError
from app.records.errors import (
    InvalidBoxError,
    InvalidCursorError,
    ReviewValidationError,
    UnknownClassError,
    UnknownDefectError,
    UnknownInspectionError,
)
from app.services.errors import (
    AlignmentFailedError,
    ClientGoneError,
    InspectionTimeoutError,
    InvalidMetadataError,
    ModelFailedError,
    OverCapacityError,
    OverloadedError,
    PairModelUnavailableError,
    RecipeOutdatedError,
    RecordsUnavailableError,
    ShuttingDownError,
)
from app.services.golden_store import GoldenStoreError, UnknownProductError
from app.services.recipe_store import RecipeStoreError, UnknownRecipeError
from app.services.recipes import RecipeFitError
from app.services.records_service import ImageNotKeptError

#: (error, status, code, Retry-After or None)
CASES: list[tuple[DomainError, int, str, str | None]] = [
    (ImageError("empty_image", "m"), 400, "empty_image", None),
    (ImageError("truncated_image", "m"), 400, "truncated_image", None),
    (ImageError("corrupt_image", "m"), 400, "corrupt_image", None),
    (ImageError("filename_too_long", "m"), 400, "filename_too_long", None),
    (ImageError("image_too_large", "m"), 413, "image_too_large", None),
    (ImageError("not_an_image", "m"), 415, "not_an_image", None),
    (ImageError("unsupported_image_format", "m"), 415, "unsupported_image_format", None),
    (ImageError("unsupported_image_mode", "m"), 415, "unsupported_image_mode", None),
    (ImageError("image_too_small", "m"), 422, "image_too_small", None),
    (ImageError("multi_frame_image", "m"), 422, "multi_frame_image", None),
    (InvalidMetadataError("m"), 422, "invalid_metadata", None),
    (InvalidProductError("m"), 422, "invalid_product", None),
    (RecipeFitError("units[0].bbox", "m"), 422, "invalid_recipe", None),
    (AlignmentFailedError("m"), 422, "alignment_failed", None),
    (UnknownProductError("p1"), 404, "unknown_product", None),
    (UnknownRecipeError("p1", 3), 404, "unknown_recipe", None),
    (RecipeOutdatedError("m"), 409, "recipe_outdated", None),
    (UnknownInspectionError("ins_x"), 404, "unknown_inspection", None),
    (ImageNotKeptError("ins_x"), 404, "image_not_kept", None),
    (InvalidCursorError("c", "malformed content"), 422, "invalid_cursor", None),
    (ReviewValidationError(("verdict",), "x", "m"), 422, "invalid_review", None),
    (UnknownDefectError(("defects", 0, "defect_id"), 9, "m"), 422, "unknown_defect", None),
    (UnknownClassError(("missed", 0, "class"), "x", "m"), 422, "unknown_class", None),
    (InvalidBoxError(("missed", 0, "bbox"), [0], "m"), 422, "box_outside_image", None),
    (OverloadedError("m", retry_after_s=1), 503, "overloaded", "1"),
    (OverCapacityError("m", retry_after_s=7), 503, "over_capacity", "7"),
    (ShuttingDownError("m", retry_after_s=5), 503, "shutting_down", "5"),
    (PairModelUnavailableError("m"), 503, "pair_model_unavailable", None),
    (RecordsUnavailableError("m", retry_after_s=5), 503, "records_unavailable", "5"),
    (InspectionTimeoutError("m"), 504, "timeout", None),
    (ClientGoneError("m"), 499, "client_closed_request", None),
    (ModelFailedError("m"), 500, "model_error", None),
    (GoldenStoreError("m"), 500, "golden_store_error", None),
    (RecipeStoreError("m"), 500, "recipe_store_error", None),
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    api = FastAPI()
    install_error_handlers(api)

    @api.get("/raise/{index}")
    async def _raise(index: int) -> None:
        raise CASES[index][0]

    @api.get("/unknown-code")
    async def _unknown() -> None:
        raise DomainError("m", code="nobody_mapped_this")

    with TestClient(api, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)),
                         ids=[type(c[0]).__name__ + ":" + c[2] for c in CASES])
def test_each_domain_error_is_answered_with_its_status_code_and_message(
    client: TestClient, index: int, case: tuple[DomainError, int, str, str | None],
) -> None:
    error, status, code, retry_after = case
    response = client.get(f"/raise/{index}")
    assert response.status_code == status
    assert response.json() == {"error": {"code": code, "message": error.message}}
    assert response.headers.get("retry-after") == retry_after


def test_the_table_has_exactly_the_hand_checked_codes() -> None:
    # A code added to the table without a case here (or the other way) fails this.
    assert set(DOMAIN_ERRORS) == {code for _, _, code, _ in CASES}


def test_shed_load_is_counted_under_its_reason_and_a_server_failure_is_not(
    client: TestClient,
) -> None:
    def count(reason: str) -> float:
        return float(REJECTED.labels(reason=reason)._value.get())  # type: ignore[attr-defined]

    overloaded = next(i for i, c in enumerate(CASES) if c[2] == "overloaded")
    model_error = next(i for i, c in enumerate(CASES) if c[2] == "model_error")
    before = count("queue_full"), count("overloaded"), count("model_error")
    client.get(f"/raise/{overloaded}")
    client.get(f"/raise/{model_error}")
    assert (count("queue_full"), count("overloaded"), count("model_error")) == (
        before[0] + 1, before[1], before[2])


def test_a_code_missing_from_the_table_is_a_server_failure_without_details(
    client: TestClient,
) -> None:
    response = client.get("/unknown-code")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "nobody_mapped_this" not in response.text


def _all_subclasses(cls: type[DomainError]) -> Iterator[type[DomainError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_domain_error_class_of_the_app_has_its_code_in_the_table() -> None:
    for module in pkgutil.walk_packages(app.__path__, "app."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    classes = set(_all_subclasses(DomainError))
    # Only the image's errors name their code per error (one class, several problems).
    assert {c for c in classes if c.code == DomainError.code} == {ImageError}
    unmapped = {c.__name__: c.code for c in classes - {ImageError} if c.code not in DOMAIN_ERRORS}
    assert not unmapped
