"""Fixtures shared by the inference tests."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

import app.inference.registration as registration


@pytest.fixture
def ecc_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The image sizes every ECC call of registration ran on (the real ECC runs)."""
    sizes: list[tuple[int, ...]] = []
    real = cv2.findTransformECC

    def counted(board: np.ndarray, *args: Any) -> Any:
        sizes.append(board.shape)
        return real(board, *args)

    monkeypatch.setattr(registration.cv2, "findTransformECC", counted)
    return sizes
