"""Tests of ``app.core.config``: the settings that are derived, not just read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.config import AUTO_BATCH_CAP_GPU, AUTO_CPU_TILES_IN_FLIGHT, Settings


@pytest.mark.parametrize(
    ("setting", "device", "calls", "batch_cap"),
    [
        ("auto", "cpu", 2, 1),  # two calls of one tile: the CPU's default
        ("auto", "gpu", 1, AUTO_BATCH_CAP_GPU),  # one call of a large batch
        (1, "cpu", 1, 2),  # one call at a time: batches of up to two tiles
        (4, "cpu", 4, 1),
        (3, "gpu", 3, AUTO_BATCH_CAP_GPU),
    ],
)
def test_model_concurrency_and_the_auto_batch_cap(
    setting: int | str, device: str, calls: int, batch_cap: int
) -> None:
    settings = Settings(model_concurrency=setting)
    assert settings.concurrency_for(device) == calls
    assert settings.auto_batch_cap(device) == batch_cap
    if device == "cpu" and calls <= AUTO_CPU_TILES_IN_FLIGHT:
        # What the memory budget's fixed part assumes: at most this many tiles at once.
        assert calls * batch_cap <= AUTO_CPU_TILES_IN_FLIGHT


def test_model_concurrency_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCB_MODEL_CONCURRENCY", "3")
    assert Settings().model_concurrency == 3
    monkeypatch.setenv("PCB_MODEL_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="model_concurrency"):
        Settings()
