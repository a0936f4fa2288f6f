"""The image limit in force is the service's (``PCB_LIMITS_MAX_IMAGE_PIXELS``), not Pillow's
default, and no image work takes the decode lock on the event loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.core.errors import DOMAIN_ERRORS
from app.inference import imaging
from app.inference.imaging import ImageError, declared_pixels, decode_image
from tests.helpers.app import app_client
from tests.helpers.boards import board_png, encode


@pytest.fixture(autouse=True)
def _pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # A decode raises Pillow's process-wide guard to its max_pixels: restored after each test.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def in_thread(fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """``fn()`` in a thread; fails if it does not return within ``timeout_s``."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"still waiting after {timeout_s} s"
    return out[0]


def test_the_service_limit_wins_over_a_lower_pillow_limit(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's default (89,478,485) stands in scaled down: the service allows more.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    data = encode(np.full((60, 60), 200, np.uint8))  # 3,600 px: past twice Pillow's limit
    decoded = decode_image(data, max_pixels=5_000)
    assert decoded.pixels.shape == (60, 60)


def test_the_service_limit_wins_over_a_higher_pillow_limit() -> None:
    data = encode(np.full((60, 60), 200, np.uint8))
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=3_599)
    assert DOMAIN_ERRORS[caught.value.code].status == 413
    assert caught.value.code == "image_too_large"
    assert "3,600" in caught.value.message and "3,599" in caught.value.message


def test_the_header_is_read_without_the_decode_lock() -> None:
    data = board_png(64, 64)
    with imaging._DECODE_LOCK:  # a long decode elsewhere
        assert in_thread(lambda: declared_pixels(data), 5.0) == 64 * 64


def test_a_board_waiting_for_the_decode_lock_leaves_the_event_loop_free(
    tiny_weights: Path
) -> None:
    data = board_png(64, 64)
    with app_client(tiny_weights, records=False) as client:
        results: list[int] = []
        with imaging._DECODE_LOCK:  # a long decode elsewhere holds the lock
            waiting = threading.Thread(target=lambda: results.append(client.post(
                "/predict", files={"file": ("b.png", data, "image/png")}).status_code))
            waiting.start()
            # The board is admitted and waits for the lock; the loop still answers.
            for _ in range(5):
                time.sleep(0.2)
                assert in_thread(lambda: client.get("/livez").status_code, 5.0) == 200
        waiting.join(60)
        assert results == [200]
