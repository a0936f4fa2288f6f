"""Tests of ``app.core.config``: the settings that are derived, grouped or retired."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import (
    AUTO_BATCH_CAP_GPU,
    AUTO_CPU_TILES_IN_FLIGHT,
    REMOVED,
    RENAMED,
    ModelCalls,
    Settings,
    retired_setting_error,
    setting_names,
)
from app.serve import STARTUP_FAILURE

README = Path(__file__).resolve().parents[3] / "README.md"

#: Settings at the top level, at most: few enough to read at once; the rest sit in groups.
MAX_TOP_LEVEL_SETTINGS = 28


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
def test_concurrency_and_the_auto_batch_cap(
    setting: int | str, device: str, calls: int, batch_cap: int
) -> None:
    resolved = Settings(batching_concurrency=setting).batching.resolve(device)
    assert resolved == ModelCalls(min(batch_cap, 2), batch_cap, calls)
    if device == "cpu" and calls <= AUTO_CPU_TILES_IN_FLIGHT:
        # What the memory budget's fixed part assumes: at most this many tiles at once.
        assert calls * batch_cap <= AUTO_CPU_TILES_IN_FLIGHT


def test_a_fixed_batch_size_is_not_measured() -> None:
    assert Settings(batching_max_size=4).batching.resolve("gpu") == ModelCalls(4, 1, 1)


def test_concurrency_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCB_BATCHING_CONCURRENCY", "3")
    assert Settings().batching.concurrency == 3
    monkeypatch.setenv("PCB_BATCHING_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="concurrency"):
        Settings()


def test_few_settings_at_the_top() -> None:
    assert len(Settings.model_fields) <= MAX_TOP_LEVEL_SETTINGS


def test_a_group_field_is_its_flat_name_in_the_environment_and_as_a_keyword(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PCB_CFX_BROKER_URL", "amqp://broker.example")
    monkeypatch.setenv("PCB_CFX_PASSWORD", "compose's, not a setting")
    monkeypatch.setenv("PCB_LIMITS_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("PCB_FAIL_RULE", "area")
    settings = Settings(cfx_handle="line-3", images_keep="all")
    assert settings.cfx.broker_url == "amqp://broker.example" and settings.cfx.handle == "line-3"
    assert settings.limits.max_body_bytes == 4096 and settings.fail.rule == "area"
    assert settings.images.keep == "all"
    # A flat keyword wins over the environment, as any keyword does.
    assert Settings(limits_max_body_bytes=2048).limits.max_body_bytes == 2048
    # The nested form works too, and a flat keyword adds to it.
    nested = Settings(cfx={"address": "/q"}, cfx_handle="h")
    assert (nested.cfx.address, nested.cfx.handle) == ("/q", "h")


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("PCB_MAX_BATCH_SIZE", "4", "PCB_MAX_BATCH_SIZE was renamed PCB_BATCHING_MAX_SIZE"),
    ("PCB_KEEP_IMAGES", "all", "PCB_KEEP_IMAGES was renamed PCB_IMAGES_KEEP"),
    ("pcb_threshold", "0.3", "PCB_THRESHOLD was removed: the model card's "
                             "thresholds.confidence, or per request ?threshold="),
    ("PCB_TILE_OVERLAP", "32", "PCB_TILE_OVERLAP was removed: the model card's "
                               "input.tile_overlap"),
    ("PCB_MODEL_CARD_PATH", "/m/card.json", "PCB_MODEL_CARD_PATH was removed: the card is "
                                            "<stem>.card.json beside PCB_WEIGHTS_PATH"),
])
def test_a_retired_setting_in_the_environment_is_refused_naming_its_replacement(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert len(err.value.errors()) == 1
    message = err.value.errors()[0]["msg"]
    assert expected in message and "\n" not in message


@pytest.mark.parametrize(("name", "value", "line"), [
    ("PCB_TILE_OVERLAP", "32", "PCB_TILE_OVERLAP was removed: the model card's "
                               "input.tile_overlap; unset it"),
    ("PCB_KEEP_IMAGES", "all", "PCB_KEEP_IMAGES was renamed PCB_IMAGES_KEEP; set that instead"),
])
def test_serve_stops_at_a_retired_setting_with_one_line(name: str, value: str, line: str) -> None:
    # Before anything is loaded: the process exits 3 with one line naming the replacement.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PCB_")}
    result = subprocess.run(
        [sys.executable, "-m", "pcb_inspect.cli", "serve"], cwd=README.parent,
        env={**clean, name: value}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == STARTUP_FAILURE, result
    assert result.stderr.strip() == f"pcb-inspect: startup failed: invalid settings: {line}"


def test_a_retired_keyword_is_refused_too() -> None:
    with pytest.raises(ValidationError, match="PCB_MAX_FORM_FIELDS was removed: fixed at 16"):
        Settings(max_form_fields=3)


def test_every_renamed_setting_exists_under_its_new_name() -> None:
    for old, new in RENAMED.items():
        group, _, field = new.partition("_")
        assert field in Settings.model_fields[group].annotation.model_fields, (old, new)  # type: ignore[union-attr]
        assert old not in Settings.model_fields and old not in REMOVED


def test_the_cards_are_found_beside_the_weights_by_one_rule(tmp_path: Path) -> None:
    single, pair = tmp_path / "a.keras", tmp_path / "pcb_pair_unet.keras"
    settings = Settings(weights_path=single)
    # No <stem>.card.json: model_card.json, for either model.
    assert settings.model_card_path == tmp_path / "model_card.json"
    assert settings.pair_model_card_path == tmp_path / "model_card.json"
    (tmp_path / "pcb_pair_unet.card.json").write_text("{}")
    (tmp_path / "a.card.json").write_text("{}")
    assert settings.model_card_path == tmp_path / "a.card.json"
    assert settings.pair_model_card_path == tmp_path / "pcb_pair_unet.card.json"
    assert settings.pair_weights == pair and settings.pair_weights_is_default
    off = Settings(weights_path=single, pair_weights_path="")
    assert off.pair_weights is None and off.pair_model_card_path is None


def test_every_setting_is_in_the_readme_table_and_no_retired_one_is() -> None:
    section = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    table, _, retired = section.partition("### Renamed and removed settings")
    for name in setting_names():
        assert f"`PCB_{name.upper()}`" in table, name
    for old in (*RENAMED, *REMOVED):
        assert f"`PCB_{old.upper()}`" in retired, old
        assert f"`PCB_{old.upper()}`" not in table, old
    assert retired_setting_error("PCB_WEIGHTS_PATH") is None
