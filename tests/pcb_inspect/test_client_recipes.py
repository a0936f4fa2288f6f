"""Product recipes through the line client: ``put_recipe``/``get_recipe``/``recipe_revisions``
(sync and async) and ``pcb-inspect product put|get|revisions``, against a real server process
with the tiny pair model; a two-board panel drawn with :mod:`training.synth`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.server import ServerProcess

from pcb_inspect.cli import main as cli_main
from pcb_inspect.client import AsyncInspectClient, InspectClient, InspectError
from training.synth import encode, make_board

SIDE = 160
UNITS = [{"position": 1, "bbox": [0, 0, SIDE, SIDE]},
         {"position": 2, "bbox": [SIDE, 0, 2 * SIDE, SIDE]}]
RAILS = {"name": "rails", "action": "ignore",
         "polygon": [[0, 0], [2 * SIDE, 0], [2 * SIDE, 6], [0, 6]]}


@pytest.fixture(scope="module")
def server(live_server_factory: Callable[..., ServerProcess], tiny_pair_weights: Path,
           tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    return live_server_factory(pair_weights_path=str(tiny_pair_weights),
                               data_dir=str(tmp_path_factory.mktemp("recipe_data")))


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-board panel and its golden board (the two boards' templates side by side)."""
    folder = tmp_path_factory.mktemp("panel")
    a, b = make_board(seed=3, size=SIDE, n_defects=2), make_board(seed=4, size=SIDE, n_defects=2)
    image, golden = folder / "panel.png", folder / "golden.png"
    image.write_bytes(encode(np.hstack([a.image, b.image])))
    golden.write_bytes(encode(np.hstack([a.template, b.template])))
    return image, golden


def test_bad_arguments_fail_before_any_request() -> None:
    with InspectClient("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="revision must be an integer >= 1; got 0"):
            client.get_recipe("A17", 0)
        with pytest.raises(TypeError, match="recipe must be a mapping"):
            client.put_recipe("A17", [UNITS])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="product must be a non-empty id"):
            client.recipe_revisions("a/b")


@pytest.mark.slow
def test_recipes_round_trip_through_the_client(server: ServerProcess,
                                               panel: tuple[Path, Path]) -> None:
    image, golden = panel
    with InspectClient(server.url) as client:
        with pytest.raises(InspectError) as info:
            client.put_recipe("P-2", {"units": UNITS})
        assert (info.value.status, info.value.code) == (404, "unknown_product")
        client.put_golden_board("P-2", golden)
        first = client.put_recipe("P-2", {"units": UNITS, "zones": [RAILS]})
        assert first["new_revision"] is True and first["revision"] == 1
        assert client.put_recipe("P-2", {"units": UNITS, "zones": [RAILS]})["new_revision"] is False
        second = client.put_recipe("P-2", {"units": UNITS, "zones": [RAILS],
                                           "rules": {"min_area_px": 4}})
        assert second["revision"] == 2
        assert client.get_recipe("P-2")["sha256"] == second["sha256"]
        old = client.get_recipe("P-2", 1)
        assert old["sha256"] == first["sha256"] and old["rules"]["min_area_px"] is None
        assert [r["revision"] for r in client.recipe_revisions("P-2")] == [1, 2]
        with pytest.raises(InspectError) as info:
            client.put_recipe("P-2", {"units": [{"position": 1, "bbox": [0, 0, 999, 10]}]})
        assert (info.value.status, info.value.code) == (422, "invalid_recipe")
        assert info.value.message.startswith("units[0].bbox")

        result = client.predict(image, product="P-2", unit_serials=["A-1", "B-2"],
                                threshold=0.02)
        assert result["recipe"] == {"product": "P-2", "revision": 2,
                                    "sha256": second["sha256"]}
        assert [(u["position"], u["identifier"]) for u in result["units"]] == [
            (1, "A-1"), (2, "B-2")]
        counted = {d["id"] for d in result["defects"]}
        for unit in result["units"]:
            assert set(unit["defect_ids"]) <= counted
            assert unit["verdict"] == ("fail" if unit["defect_ids"] else "pass")
        assert all(i["zone"] == "rails" and i["centroid"][1] <= 6 for i in result["ignored"])
        named = client.predict(image, product="P-2", serial="SER9", threshold=0.02)
        assert [u["identifier"] for u in named["units"]] == ["SER9-1", "SER9-2"]

    async def run() -> list[Any]:
        async with AsyncInspectClient(server.url) as aclient:
            return [await aclient.get_recipe("P-2"), await aclient.recipe_revisions("P-2")]

    current, revisions = asyncio.run(run())
    assert current["revision"] == 2 and len(revisions) == 2


@pytest.mark.slow
def test_product_commands(server: ServerProcess, panel: tuple[Path, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    image, golden = panel
    url = ["--url", server.url]
    assert cli_main(["golden", "put", "Q-7", str(golden), *url]) == 0
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"units": UNITS, "zones": [RAILS]}))
    capsys.readouterr()
    assert cli_main(["product", "put", "Q-7", str(recipe), *url]) == 0
    assert "Stored revision 1 of Q-7's recipe" in capsys.readouterr().out
    assert cli_main(["product", "put", "Q-7", str(recipe), *url]) == 0
    assert "Unchanged: revision 1" in capsys.readouterr().out
    assert cli_main(["product", "get", "Q-7", *url]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "Q-7 recipe revision 1" in shown and "rails" in shown and "[160, 0, 320, 160]" in shown
    assert cli_main(["product", "get", "Q-7", "--revision", "1", "--json", *url]) == 0
    assert json.loads(capsys.readouterr().out)["units"] == UNITS
    assert cli_main(["product", "revisions", "Q-7", "--json", *url]) == 0
    assert [r["revision"] for r in json.loads(capsys.readouterr().out)] == [1]
    assert cli_main(["product", "revisions", "Q-7", *url]) == 0
    assert "Recipe revisions of Q-7 (1)" in capsys.readouterr().out

    # The board table names the recipe and each board's verdict.
    code = cli_main(["predict", str(image), *url, "--product", "Q-7", "--threshold", "1"])
    assert code == 0
    table = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "recipe: Q-7 revision 1; boards: 1 PASS, 2 PASS" in table

    # A batch's JSONL results keep each panel's boards and the revision.
    lot = tmp_path / "lot"
    lot.mkdir()
    (lot / "p.png").write_bytes(image.read_bytes())
    results = tmp_path / "r.jsonl"
    assert cli_main(["batch", str(lot), *url, "--product", "Q-7", "--out", str(results),
                     "--threshold", "1"]) == 0
    (line,) = [json.loads(t) for t in results.read_text().splitlines()]
    assert line["recipe"]["revision"] == 1
    assert [(u["position"], u["verdict"]) for u in line["units"]] == [(1, "pass"), (2, "pass")]
    capsys.readouterr()

    def err() -> str:  # unwrapped
        return " ".join(capsys.readouterr().err.split())

    # Errors: exit 2 with the API's code, or the file's problem.
    assert cli_main(["product", "get", "nope", *url]) == 2
    assert "[404] unknown_recipe" in err()
    recipe.write_text(json.dumps({"units": [{"position": 1, "bbox": [0, 0, 5, 5]},
                                            {"position": 2, "bbox": [4, 4, 9, 9]}]}))
    assert cli_main(["product", "put", "Q-7", str(recipe), *url]) == 2
    assert "[422] invalid_request: units: " in err()
    recipe.write_text("[1, 2]")
    assert cli_main(["product", "put", "Q-7", str(recipe), *url]) == 2
    assert "expected a JSON object" in err()
    assert cli_main(["product", "put", "Q-7", str(tmp_path / "none.json"), *url]) == 2
    assert "none.json" in err()
