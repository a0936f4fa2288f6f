"""JSON bodies read within a byte bound and parsed off the event loop.

FastAPI reads a route's whole body and runs ``json.loads`` on it in the event loop, bounded only
by the service-wide ``PCB_LIMITS_MAX_BODY_BYTES`` (sized for images): a JSON body of tens of
megabytes would stall every other request, ``/livez`` included, for seconds. A router built
with :func:`bounded_json_route` refuses a body over its bound as it arrives (413, before any
parsing) and parses the rest in a worker thread.

A route whose body is one pydantic model has it validated in that thread too: FastAPI takes an
instance of the model as it is, where it would validate thousands of items (a review's outcomes)
on the event loop. A body the model refuses is handed on as parsed, and FastAPI validates it
again on the loop and answers its usual 422: only refused bodies pay twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["bounded_json_route"]


def _too_large(limit: int, what: str) -> StarletteHTTPException:
    # An HTTPException, not an ApiError: FastAPI turns any other error raised while it reads
    # a body into a 400 "There was an error parsing the body".
    return StarletteHTTPException(
        413, f"The request body is larger than the {limit:,} bytes a {what} may have.")


class _BoundedRequest(Request):
    """A request whose body is read within ``limit`` bytes and parsed in a worker thread."""

    def __init__(self, request: Request, limit: int, what: str,
                 model: type[BaseModel] | None) -> None:
        super().__init__(request.scope, request.receive)
        self._limit = limit
        self._what = what
        self._model = model

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            length = self.headers.get("content-length", "")
            if length.isdigit() and int(length) > self._limit:
                raise _too_large(self._limit, self._what)
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > self._limit:  # chunked, or a Content-Length that lied
                    raise _too_large(self._limit, self._what)
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = await run_in_threadpool(_parse, await self.body(), self._model)
        return self._json


def _parse(body: bytes, model: type[BaseModel] | None) -> Any:
    """The JSON of ``body``; an instance of ``model`` when that validates it."""
    value = json.loads(body)
    if model is None:
        return value
    try:
        return model.model_validate(value)
    except ValidationError:
        return value


def _body_model(route: APIRoute) -> type[BaseModel] | None:
    """The pydantic model of the route's body when the body is that model, not embedded."""
    params = route.dependant.body_params
    if len(params) != 1 or route.body_field is None or route.body_field is not params[0]:
        return None
    annotation = route.body_field.field_info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


def bounded_json_route(limit: int, what: str) -> type[APIRoute]:
    """An ``APIRoute`` class (for ``APIRouter(route_class=...)``) whose routes take JSON bodies
    of at most ``limit`` bytes; ``what`` names the body in the 413 (``"review"``)."""

    class BoundedJsonRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            model = _body_model(self)

            async def bounded(request: Request) -> Response:
                return await handler(_BoundedRequest(request, limit, what, model))

            return bounded

    return BoundedJsonRoute
