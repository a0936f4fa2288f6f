"""In-process apps around the tiny real model, served through ``TestClient`` with lifespan."""

from __future__ import annotations

import contextlib
import io
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from app.core.config import Settings
from app.main import create_app
from app.services.state import ServiceState

#: One key per role (``PCB_API_KEYS`` as JSON objects) and the headers that send each, for the
#: tests of what each role may do.
ROLE_KEYS = [
    {"name": "station-1", "role": "inspect", "key": "k-inspect"},
    {"name": "alice", "role": "review", "key": "k-review"},
    {"name": "boss", "role": "admin", "key": "k-admin"},
]
INSPECT = {"x-api-key": "k-inspect"}
REVIEW = {"x-api-key": "k-review"}
ADMIN = {"authorization": "Bearer k-admin"}  # the other way to send a key


def tiny_settings(weights: Path, **overrides: Any) -> Settings:
    """Settings for the tiny model on the CPU; ``overrides`` are Settings fields, a group's by
    its flat name (``limits_max_body_bytes=4096``).

    No golden-board model (the shipped one would be loaded otherwise) unless
    ``pair_weights_path`` is given, and golden boards go to a fresh folder under the system
    temp dir (created only if a test stores one) rather than ./data.
    """
    values: dict[str, Any] = {
        "weights_path": weights,
        "device": "cpu",
        "pair_weights_path": "",
        "data_dir": Path(tempfile.gettempdir()) / f"pcb-test-data-{uuid.uuid4().hex}",
        **overrides,
    }
    return Settings(**values)


@contextlib.contextmanager
def app_client(weights: Path, **overrides: Any) -> Iterator[TestClient]:
    """A ``TestClient`` whose ``with`` block runs the lifespan (model loaded and warmed)."""
    app = create_app(tiny_settings(weights, **overrides))
    with TestClient(app) as client:
        yield client


@contextlib.contextmanager
def panel_client(
    weights: Path, pair_weights: Path, data_dir: Path, golden: bytes, products: tuple[str, ...]
) -> Iterator[TestClient]:
    """A client with both models, role keys, and ``golden`` stored for each of ``products``."""
    with app_client(weights, pair_weights_path=pair_weights, data_dir=data_dir,
                    api_keys=ROLE_KEYS) as client:
        for product in products:
            store_golden(client, product, golden)
        yield client


def store_golden(client: TestClient, product: str, data: bytes) -> None:
    """Stores ``data`` as ``product``'s golden board (admin)."""
    r = client.put(f"/v1/golden-boards/{product}",
                   files={"file": ("golden.png", data, "image/png")}, headers=ADMIN)
    assert r.status_code in (200, 201), r.text


def with_thresholds(folder: Path, *weights: Path, **thresholds: Any) -> list[Path]:
    """Copies of the ``weights`` files and their cards into ``folder``, each card's
    ``thresholds`` updated with ``thresholds`` (e.g. ``confidence=defect_cut(w)``): the
    operating point is the model card's. Returns the copies' weights paths."""
    import json
    import shutil

    from app.inference.card import default_card_path

    copies = []
    for source in weights:
        card_path = default_card_path(source)
        card = json.loads(card_path.read_text())
        card["thresholds"] = {**card.get("thresholds", {}), **thresholds}
        (folder / card_path.name).write_text(json.dumps(card))
        copies.append(Path(shutil.copy(source, folder / source.name)))
    return copies


def defect_cut(weights: Path) -> float:
    """The 90th percentile of the tiny model's foreground confidence on the 64 x 64 board of
    seed 1: a threshold at which it finds several defects there."""
    from app.inference.inferencer import Inferencer
    from tests.helpers.boards import make_board

    inferencer = Inferencer.from_settings(tiny_settings(weights))
    fg = inferencer.forward(make_board(64, 64, seed=1)[None, ..., None])[0]
    return round(float(np.quantile(fg, 0.9)), 6)


def service_state(app: FastAPI) -> ServiceState:
    """The app's ``ServiceState``."""
    state: ServiceState = app.state.service
    return state


def read_png(data: bytes) -> Image.Image:
    """Opens PNG bytes, checking they are a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def png_array(data: bytes) -> np.ndarray:
    """The pixels of PNG bytes."""
    return np.asarray(read_png(data))


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Checks the one error shape ``{"error": {"code", "message"}}``; returns the error."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)
