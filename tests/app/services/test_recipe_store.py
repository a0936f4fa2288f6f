"""The recipe store on a real folder: revisions, their sha256, damaged files, racing writers."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from app.core.ids import InvalidProductError
from app.services.golden_store import GoldenBoard
from app.services.recipe_store import (
    RecipeStore,
    RecipeStoreError,
    UnknownRecipeError,
    content_sha256,
)
from app.services.recipes import RecipeBody, RecipeFitError

GOLDEN = GoldenBoard(product="p1", width=200, height=100, sha256="a" * 64,
                     created="2026-01-01T00:00:00.000Z", png_bytes=10)
TWO = RecipeBody.model_validate({"units": [{"position": 1, "bbox": [0, 0, 100, 100]},
                                           {"position": 2, "bbox": [100, 0, 200, 100]}]})
TIGHT = RecipeBody.model_validate({**TWO.canonical(), "rules": {"min_area_px": 5}})


def test_revisions_are_numbered_kept_and_checked(tmp_path: Path) -> None:
    store = RecipeStore(tmp_path)
    with pytest.raises(UnknownRecipeError):
        store.current("p1")
    assert store.current_or_none("p1") is None
    first, created = store.put("p1", TWO, GOLDEN, "boss")
    assert created and first.revision == 1 and first.author == "boss"
    assert first.golden_board == {"sha256": "a" * 64, "width": 200, "height": 100}
    assert first.sha256 == content_sha256("p1", first.golden_board, TWO)

    same, created = store.put("p1", TWO, GOLDEN, "someone")
    assert not created and same == first

    second, created = store.put("p1", TIGHT, GOLDEN, "boss")
    assert created and second.revision == 2 and second.sha256 != first.sha256
    assert store.current("p1") == second
    assert store.revision("p1", 1) == first
    assert [r.revision for r in store.revisions("p1")] == [1, 2]
    # Back to the first content: a new revision (3), with the first one's sha256.
    third, created = store.put("p1", TWO, GOLDEN, "boss")
    assert created and third.revision == 3 and third.sha256 == first.sha256
    with pytest.raises(UnknownRecipeError, match="No revision 4"):
        store.revision("p1", 4)


def test_a_recipe_that_does_not_fit_the_golden_board_is_refused(tmp_path: Path) -> None:
    store = RecipeStore(tmp_path)
    small = GoldenBoard(**{**GOLDEN.__dict__, "width": 150})
    with pytest.raises(RecipeFitError, match=r"units\[1\]\.bbox"):
        store.put("p1", TWO, small, "boss")
    assert store.current_or_none("p1") is None


def test_product_ids_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidProductError):
        RecipeStore(tmp_path).current("../etc")


def test_a_damaged_revision_is_an_error_naming_the_file(tmp_path: Path) -> None:
    store = RecipeStore(tmp_path)
    store.put("p1", TWO, GOLDEN, "boss")
    path = tmp_path / "p1" / "000001.recipe"
    raw = json.loads(path.read_bytes())
    raw["units"][0]["bbox"] = [0, 0, 90, 100]  # edited behind the store's back
    path.write_text(json.dumps(raw))
    with pytest.raises(RecipeStoreError, match="does not match its sha256"):
        store.current("p1")
    path.write_text("not json")
    with pytest.raises(RecipeStoreError, match=r"000001\.recipe is not JSON"):
        store.current("p1")


def test_racing_writers_each_get_their_own_revision(tmp_path: Path) -> None:
    # Two stores on one folder, as two replicas on a shared volume: 8 writers of 8 different
    # recipes at once all land, numbered 1..8, none overwritten.
    stores = [RecipeStore(tmp_path), RecipeStore(tmp_path)]
    bodies = [RecipeBody.model_validate({"rules": {"min_area_px": n}}) for n in range(8)]
    start = threading.Barrier(len(bodies))
    results = []

    def write(i: int) -> None:
        start.wait()
        results.append(stores[i % 2].put("p1", bodies[i], GOLDEN, f"w{i}"))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(created for _, created in results)
    revs = stores[0].revisions("p1")
    assert [r.revision for r in revs] == list(range(1, 9))
    assert sorted(r.body.rules.min_area_px or 0 for r in revs) == list(range(8))
    assert not [p for p in (tmp_path / "p1").iterdir() if p.name.startswith(".tmp-")]


def test_partials_left_by_killed_writers_are_swept_when_old(tmp_path: Path) -> None:
    store = RecipeStore(tmp_path)
    store.put("p1", TWO, GOLDEN, "boss")
    old, young = tmp_path / "p1" / ".tmp-a.partial", tmp_path / "p1" / ".tmp-b.partial"
    old.write_text("{")
    young.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.sweep_partials() == 1
    assert not old.exists() and young.exists()
    assert store.current("p1").revision == 1
