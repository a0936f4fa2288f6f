"""The line client installs without TensorFlow and works from there: ``pip install .`` into a
fresh venv, then its commands and its Python API against a real server on the tiny model.

Skips (with pip's words) where pip cannot reach the package index; any other install failure
fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.server import ServerProcess

from training.synth import encode, make_board

ROOT = Path(__file__).resolve().parents[2]
#: What a build of the project reads: its metadata and the packages it finds.
BUILD_INPUTS = ("pyproject.toml", "README.md", "app", "model_defs", "pcb_inspect", "training")
#: pip's words when the index cannot be reached (no network, no proxy, DNS down).
OFFLINE = ("NewConnectionError", "Failed to establish a new connection",
           "Temporary failure in name resolution", "Network is unreachable",
           "ProxyError", "No matching distribution found", "Could not find a version")
#: The server's dependencies, none of which the client may bring.
SERVER_ONLY = ("tensorflow", "keras", "numpy", "fastapi", "starlette", "cv2", "sqlalchemy")


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # The venv's own environment: nothing of this one's (PYTHONPATH would put the checkout
    # first), and a cwd outside the checkout, so `import pcb_inspect` is the installed one.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PCB_")}
    env["COLUMNS"] = "200"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with ``pip install .`` of a copy of the checkout: its ``bin`` folder."""
    base = tmp_path_factory.mktemp("client_venv")
    source = base / "src"
    for name in BUILD_INPUTS:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    installed = _run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                      "--disable-pip-version-check", str(source)], cwd=base, timeout=600)
    if installed.returncode != 0:
        said = installed.stdout + installed.stderr
        if any(word in said for word in OFFLINE):
            pytest.skip(f"pip cannot reach the package index: {said.strip()[-300:]}")
        raise AssertionError(f"pip install . failed:\n{said}")
    yield bin_dir


@pytest.fixture(scope="module")
def server(live_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return live_server_factory()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_client_installs_without_the_server(client_venv: Path, tmp_path: Path) -> None:
    probe = ("import importlib.util, json, pcb_inspect\n"
             f"found = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)]\n"
             "print(json.dumps({'file': pcb_inspect.__file__, 'found': found}))\n")
    result = _run([str(client_venv / "python"), "-c", probe], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["found"] == [], f"the client's install brought {seen['found']}"
    assert seen["file"].startswith(str(client_venv.parent)), seen["file"]
    imported = _run([str(client_venv / "python"), "-c", "import tensorflow"], cwd=tmp_path)
    assert imported.returncode == 1
    assert "No module named 'tensorflow'" in imported.stderr, imported.stderr
    served = _run([str(client_venv / "pcb-inspect"), "serve"], cwd=tmp_path)
    assert served.returncode == 2
    assert "install them with: pip install 'pcb-inspect[server]'" in served.stderr, served.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_installed_client_works_against_a_real_server(
    client_venv: Path, server: ServerProcess, tmp_path: Path
) -> None:
    board, golden = tmp_path / "board.png", tmp_path / "golden.png"
    synthetic = make_board(seed=5, size=128, n_defects=2)
    board.write_bytes(encode(synthetic.image))
    golden.write_bytes(encode(synthetic.template))

    def command(*argv: str) -> subprocess.CompletedProcess[str]:
        done = _run([str(client_venv / "pcb-inspect"), *argv, "--url", server.url],
                    cwd=tmp_path)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    predicted = command("predict", str(board), "--json", "--serial", "SN-V", "--tag", "venv")
    assert predicted.returncode in (0, 1), predicted.stderr
    inspection_id = json.loads(predicted.stdout)["result"]["inspection_id"]
    assert command("golden", "put", "V-1", str(golden)).returncode == 0
    listed = command("golden", "list", "--json")
    assert [b["product"] for b in json.loads(listed.stdout)] == ["V-1"]

    page = command("inspections", "list", "--serial", "SN-V", "--json")
    assert [r["id"] for r in json.loads(page.stdout)["items"]] == [inspection_id]
    reviewed = command("review", inspection_id, "--missed", "1,2,30,40=spur", "--json")
    assert json.loads(reviewed.stdout)["new_review"] is True, reviewed.stderr
    record = json.loads(command("inspections", "get", inspection_id, "--json").stdout)
    assert len(record["reviews"]) == 1
    export = tmp_path / "records.jsonl"
    assert command("inspections", "export", "--tag", "venv", "--format", "jsonl",
                   "--out", str(export)).returncode == 0
    assert [json.loads(x)["id"] for x in export.read_text().splitlines()] == [inspection_id]
    stats = json.loads(command("stats", "--json").stdout)
    assert (stats["boards"], stats["reviewed"]) == (1, 1)

    # The Python API, sync and async, as a line integrator imports it.
    script = (
        "import asyncio, json, sys\n"
        "from pcb_inspect.client import AsyncInspectClient, InspectClient\n"
        "url = sys.argv[1]\n"
        "with InspectClient(url) as c:\n"
        "    ready, model = c.health(), c.model_info()\n"
        "async def main():\n"
        "    async with AsyncInspectClient(url) as c:\n"
        "        return await c.list_inspections(tags=['venv'])\n"
        "page = asyncio.run(main())\n"
        "print(json.dumps({'ready': ready, 'classes': model['classes'],\n"
        "                  'ids': [r['id'] for r in page['items']]}))\n"
    )
    done = _run([str(client_venv / "python"), "-c", script, server.url], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ready"] is True and answer["ids"] == [inspection_id]
    assert answer["classes"], answer
