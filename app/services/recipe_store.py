"""The recipe store: every revision of every product's recipe, beside the golden boards.

Each revision is one file, ``<root>/<product>/<n>.recipe`` (``n`` zero-padded), written once
and never changed, so an audit can always read what decided an old verdict. The current recipe
is the highest revision. A revision is created atomically and exclusively: written and fsynced
under a temporary name, then hard-linked to its final name, which fails if that name exists.
Two replicas sharing the folder that add a revision at the same moment therefore never
overwrite each other: the second one's link fails and it takes the next number.

A revision holds the golden board it was written for (sha256 and size), its units, zones and
rules, who wrote it and when, and the sha256 of the canonical JSON of its content (product,
golden board, units, zones, rules: not the number, time or author), which a read checks.
Resending the current recipe unchanged adds no revision.

Blocking file I/O: the routes and the inspection service call it in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pydantic import ValidationError

from app.core.domain_errors import DomainError
from app.core.files import fsync_dir
from app.core.ids import check_product
from app.services.golden_store import GoldenBoard
from app.services.recipes import RecipeBody, canonical_json, sha256_of

P = ParamSpec("P")
T = TypeVar("T")

FORMAT = "pcb-recipe/1"
SUFFIX = ".recipe"
_DIGITS = 6
_PARTIAL_PREFIX = ".tmp-"
_PARTIAL_SUFFIX = ".partial"
#: How often a writer retries after losing the race for a revision number to another replica.
_RACE_RETRIES = 20


class RecipeStoreError(DomainError, RuntimeError):
    """A stored revision cannot be read (damaged or foreign file) or written (I/O error)."""

    code = "recipe_store_error"


class UnknownRecipeError(DomainError, LookupError):
    """No recipe (or no such revision) is stored for the product."""

    code = "unknown_recipe"

    def __init__(self, product: str, revision: int | None = None) -> None:
        what = "No recipe" if revision is None else f"No revision {revision} of the recipe"
        hint = (f"list them with GET /v1/products/{product}/recipe/revisions"
                if revision is not None else
                f"write one with PUT /v1/products/{product}/recipe")
        super().__init__(f"{what} is stored for product {product!r}; {hint}.")
        self.product = product
        self.revision = revision


@dataclasses.dataclass(frozen=True)
class RecipeRevision:
    """One stored revision of a product's recipe."""

    product: str
    revision: int
    sha256: str
    #: When it was stored, ISO 8601 UTC, and by which API key's name.
    created: str
    author: str
    #: The golden board it was written for: ``{"sha256", "width", "height"}``.
    golden_board: dict[str, Any]
    body: RecipeBody

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the API (and of the file, with its format)."""
        return {
            "product": self.product, "revision": self.revision, "sha256": self.sha256,
            "created": self.created, "author": self.author, "golden_board": self.golden_board,
            **self.body.canonical(),
        }


def content_sha256(product: str, golden_board: dict[str, Any], body: RecipeBody) -> str:
    """The sha256 a revision of this content has."""
    return sha256_of({"product": product, "golden_board": golden_board, **body.canonical()})


class RecipeStore:
    """Recipes under ``root`` (``PCB_DATA_DIR/recipes``; created on the first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder_of(self, product: str) -> Path:
        """The folder of ``product``'s revisions (validated id)."""
        return self.root / check_product(product)

    # ----------------------------------------------------------------------------- writing
    def put(self, product: str, body: RecipeBody, golden: GoldenBoard,
            author: str) -> tuple[RecipeRevision, bool]:
        """Adds a revision of ``product``'s recipe, written for ``golden``.

        Returns:
            ``(revision, created)``: ``created`` is False when ``body`` and ``golden`` are
            those of the current revision, which is returned unchanged.

        Raises:
            InvalidProductError: A bad id.
            RecipeFitError: A unit or zone outside the golden board.
            RecipeStoreError: The folder cannot be written, or a stored revision is damaged.
        """
        folder = self.folder_of(product)
        body.check_fits(golden.width, golden.height)
        board = {"sha256": golden.sha256, "width": golden.width, "height": golden.height}
        sha = content_sha256(product, board, body)
        for _ in range(_RACE_RETRIES):
            latest = self._latest_number(folder)
            if latest:
                current = self.revision(product, latest)
                if current.sha256 == sha:
                    return current, False
            rev = RecipeRevision(
                product=product, revision=latest + 1, sha256=sha,
                created=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace(
                    "+00:00", "Z"),
                author=author, golden_board=board, body=body,
            )
            if self._create(folder, rev):
                return rev, True
        raise RecipeStoreError(
            f"cannot add a revision of {product!r}'s recipe: {_RACE_RETRIES} attempts lost the "
            "race for a revision number to other writers"
        )

    def _create(self, folder: Path, rev: RecipeRevision) -> bool:
        """Writes ``rev`` under its number; False if another writer took that number."""
        data = canonical_json({"format": FORMAT, **rev.as_dict()})
        path = folder / f"{rev.revision:0{_DIGITS}d}{SUFFIX}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=_PARTIAL_PREFIX,
                                       suffix=_PARTIAL_SUFFIX)
            try:
                os.fchmod(fd, 0o644)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                try:
                    # link, unlike rename, refuses an existing name: the exclusive create.
                    os.link(tmp, path)
                except FileExistsError:
                    return False
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            fsync_dir(folder)
        except OSError as exc:
            raise RecipeStoreError(
                f"cannot store revision {rev.revision} of {rev.product!r}'s recipe in "
                f"{folder}: {exc}"
            ) from exc
        return True

    def sweep_partials(self, max_age_s: float = 3600.0) -> int:
        """Removes temporary files older than ``max_age_s`` left by killed writers (younger
        ones may be another replica's write in progress); returns how many."""
        removed = 0
        now = time.time()
        for partial in self.root.glob(f"*/{_PARTIAL_PREFIX}*{_PARTIAL_SUFFIX}"):
            with contextlib.suppress(OSError):
                if now - partial.stat().st_mtime > max_age_s:
                    partial.unlink()
                    removed += 1
        return removed

    # ----------------------------------------------------------------------------- reading
    def _numbers(self, folder: Path) -> list[int]:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RecipeStoreError(f"cannot list the recipes in {folder}: {exc}") from exc
        return sorted(int(n[:-len(SUFFIX)]) for n in names
                      if n.endswith(SUFFIX) and n[:-len(SUFFIX)].isdigit())

    def _latest_number(self, folder: Path) -> int:
        numbers = self._numbers(folder)
        return numbers[-1] if numbers else 0

    def current(self, product: str) -> RecipeRevision:
        """The current (highest) revision.

        Raises:
            InvalidProductError, UnknownRecipeError, RecipeStoreError.
        """
        latest = self._latest_number(self.folder_of(product))
        if not latest:
            raise UnknownRecipeError(product)
        return self.revision(product, latest)

    def current_or_none(self, product: str) -> RecipeRevision | None:
        """:meth:`current`, or ``None`` when the product has no recipe."""
        try:
            return self.current(product)
        except UnknownRecipeError:
            return None

    def revisions(self, product: str) -> list[RecipeRevision]:
        """Every revision, oldest first.

        Raises:
            InvalidProductError, UnknownRecipeError (none at all), RecipeStoreError.
        """
        numbers = self._numbers(self.folder_of(product))
        if not numbers:
            raise UnknownRecipeError(product)
        return [self.revision(product, n) for n in numbers]

    def revision(self, product: str, number: int) -> RecipeRevision:
        """Revision ``number`` (1-based).

        Raises:
            InvalidProductError, UnknownRecipeError, RecipeStoreError.
        """
        path = self.folder_of(product) / f"{number:0{_DIGITS}d}{SUFFIX}"
        if number < 1:
            raise UnknownRecipeError(product, number)
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise UnknownRecipeError(product, number) from None
        except OSError as exc:
            raise RecipeStoreError(f"cannot read recipe file {path}: {exc}") from exc
        except ValueError as exc:
            raise RecipeStoreError(f"recipe file {path} is not JSON ({exc})") from None
        try:
            if raw.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            body = RecipeBody.model_validate(
                {k: raw[k] for k in ("units", "zones", "rules")})
            rev = RecipeRevision(
                product=raw["product"], revision=int(raw["revision"]), sha256=raw["sha256"],
                created=raw["created"], author=raw["author"],
                golden_board=dict(raw["golden_board"]), body=body,
            )
        except (ValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RecipeStoreError(
                f"recipe file {path} is unreadable ({exc}); expected {FORMAT}") from None
        if rev.product != product or rev.revision != number:
            raise RecipeStoreError(
                f"recipe file {path} holds revision {rev.revision} of {rev.product!r}, not the "
                "one its name says")
        if content_sha256(product, rev.golden_board, body) != rev.sha256:
            raise RecipeStoreError(
                f"recipe file {path} is damaged: its content does not match its sha256 "
                f"{rev.sha256[:12]}...")
        return rev


async def in_recipes(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs a recipe-store call in a worker thread (file I/O); its errors are domain errors
    (:class:`InvalidProductError`, :class:`RecipeFitError`, :class:`UnknownRecipeError`,
    :class:`RecipeStoreError`)."""
    return await asyncio.to_thread(fn, *args, **kwargs)
