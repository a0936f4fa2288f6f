"""Golden boards across real server processes: two replicas on one data folder, and the
one-line startup failure of a configured pair model that is missing.

``slow``: each starts ``python -m app.serve`` (tests/helpers/server.py) with the tiny models.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.helpers.boards import encode
from tests.helpers.server import REPO_ROOT, running_server, server_env
from training.synth import make_board

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 180
BOARD = make_board(seed=1, size=256)


def test_two_replicas_share_golden_boards(
    tiny_weights: Path, tiny_pair_weights: Path, tmp_path: Path
) -> None:
    settings = {"pair_weights_path": tiny_pair_weights, "data_dir": tmp_path / "shared"}
    logs = tmp_path / "logs"
    with running_server(tiny_weights, logs, READY_TIMEOUT_S, **settings) as a, \
            running_server(tiny_weights, logs, READY_TIMEOUT_S, **settings) as b:
        put = httpx.put(f"{a.url}/v1/golden-boards/A17-top", timeout=60,
                        files={"file": ("g.png", encode(BOARD.template), "image/png")})
        assert put.status_code == 201, put.text

        def inspect(url: str) -> dict:  # type: ignore[type-arg]
            response = httpx.post(f"{url}/predict", params={"product": "A17-top"}, timeout=120,
                                  files={"file": ("b.png", encode(BOARD.image), "image/png")})
            assert response.status_code == 200, response.text[:500]
            return dict(response.json()["reference"])

        # Registered through a, used by b (and cached there).
        first = inspect(b.url)
        assert first["sha256"] == put.json()["sha256"] and abs(first["alignment"]["dx"]) < 0.5

        # Replaced through a: b must use the new board at once, not its cached one.
        moved = cv2.warpAffine(BOARD.template, np.float32([[1, 0, 4], [0, 1, 0]]), (256, 256),
                               borderMode=cv2.BORDER_REPLICATE)
        replaced = httpx.put(f"{a.url}/v1/golden-boards/A17-top", timeout=60,
                             files={"file": ("g.png", encode(moved), "image/png")})
        assert replaced.status_code == 200, replaced.text
        second = inspect(b.url)
        assert second["sha256"] == replaced.json()["sha256"] != first["sha256"]
        assert second["alignment"]["dx"] == pytest.approx(4, abs=0.6)

        png = httpx.get(f"{b.url}/v1/golden-boards/A17-top", headers={"accept": "image/png"},
                        timeout=30)
        assert hashlib.sha256(png.content).hexdigest() == replaced.json()["sha256"]

        # Deleted through b: a answers 404 for it.
        assert httpx.delete(f"{b.url}/v1/golden-boards/A17-top", timeout=30).status_code == 204
        gone = httpx.post(f"{a.url}/predict", params={"product": "A17-top"}, timeout=60,
                          files={"file": ("b.png", encode(BOARD.image), "image/png")})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_product"


def test_missing_configured_pair_model_exits_3_with_one_line(
    tiny_weights: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "pair.keras"
    env = server_env(tiny_weights, 1, pair_weights_path=missing)
    proc = subprocess.run([sys.executable, "-m", "app.serve"], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    plain = [line for line in proc.stderr.splitlines() if line.startswith("pcb-inspect:")]
    assert plain == [
        "pcb-inspect: startup failed: golden-board model (PCB_PAIR_WEIGHTS_PATH): weights file "
        f"{missing} does not exist"
    ], proc.stderr
    assert "Traceback" not in proc.stderr
