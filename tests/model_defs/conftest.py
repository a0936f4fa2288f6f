"""Fixtures shared by the model_defs tests."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import pytest


@pytest.fixture
def bfloat16_policy() -> Iterator[None]:
    """Sets the global mixed_bfloat16 policy for one test and always restores float32."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")
