"""Tests of ``app.inference.precision``: ``PCB_PRECISION=auto`` resolved per model.

The resolution is checked on hand-given CPU flags and cards; the service and the inferencer
are the real ones with the tiny model (never a mock of it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.inference.card import ModelCard, load_card
from app.inference.inferencer import Inferencer
from app.inference.precision import (
    PARITY_TOLERANCE,
    cpu_has_bfloat16,
    read_cpu_flags,
    resolve_precision,
)
from tests.helpers.app import app_client

AVX512_BF16 = frozenset({"sse4_2", "avx2", "avx512f", "avx512_bf16"})
AMX = frozenset({"avx512f", "amx_tile", "amx_bf16", "amx_int8"})
PLAIN_AVX512 = frozenset({"sse4_2", "avx2", "avx512f", "avx512bw"})


def parity(delta: float, boards: int = 200) -> dict[str, Any]:
    return {"map_float32": 0.9, "map": 0.9 + delta, "delta_map": delta, "boards": boards,
            "protocol": "README, held-out groups"}


def card(**parities: dict[str, Any]) -> ModelCard:
    return ModelCard.model_validate(
        {"name": "m", "version": "1", "classes": ["open", "short"], "precision_parity": parities}
    )


# --- resolution on given flags and cards ------------------------------------------------------


def test_cpu_bfloat16_flags() -> None:
    assert cpu_has_bfloat16(AVX512_BF16) and cpu_has_bfloat16(AMX)
    assert not cpu_has_bfloat16(PLAIN_AVX512) and not cpu_has_bfloat16(frozenset())


@pytest.mark.parametrize("flags", [AVX512_BF16, AMX])
def test_auto_picks_bfloat16_on_a_bf16_cpu_when_the_card_records_parity(
    flags: frozenset[str],
) -> None:
    assert resolve_precision("auto", "cpu", card(bfloat16=parity(-0.002)), flags) == "bfloat16"
    # The tolerance itself still counts as parity, either sign.
    edge = card(bfloat16=parity(-PARITY_TOLERANCE))
    assert resolve_precision("auto", "cpu", edge, flags) == "bfloat16"


def test_auto_stays_float32_without_recorded_parity() -> None:
    assert resolve_precision("auto", "cpu", card(), AVX512_BF16) == "float32"
    # Parity for another precision does not count.
    assert resolve_precision("auto", "cpu", card(float16=parity(0.0)), AVX512_BF16) == "float32"


@pytest.mark.parametrize("delta", [0.006, -0.02])
def test_auto_stays_float32_when_the_recorded_delta_is_too_large(delta: float) -> None:
    assert resolve_precision("auto", "cpu", card(bfloat16=parity(delta)), AMX) == "float32"


def test_auto_stays_float32_on_a_cpu_without_bfloat16() -> None:
    recorded = card(bfloat16=parity(0.0), float16=parity(0.0))
    assert resolve_precision("auto", "cpu", recorded, PLAIN_AVX512) == "float32"
    assert resolve_precision("auto", "cpu", recorded, frozenset()) == "float32"


def test_auto_picks_float16_on_a_gpu_when_the_card_records_parity() -> None:
    assert resolve_precision("auto", "gpu", card(float16=parity(0.001)), frozenset()) == "float16"
    # On a GPU the CPU's bfloat16 does not matter, and float16 needs its own parity.
    assert resolve_precision("auto", "gpu", card(bfloat16=parity(0.0)), AMX) == "float32"
    assert resolve_precision("auto", "gpu", card(float16=parity(0.01)), AMX) == "float32"


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_an_explicit_precision_is_used_as_given(precision: str) -> None:
    for device in ("cpu", "gpu"):
        assert resolve_precision(precision, device, card(), frozenset()) == precision


def test_rejects_an_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int4", "cpu", card(), AMX)


def test_reads_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 "
                       "avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_shipped_cards_record_parity() -> None:
    weights = Path(__file__).resolve().parents[3] / "weights"
    for name in ("model_card.json", "pcb_pair_unet.card.json"):
        recorded = load_card(weights / name).precision_parity["bfloat16"]
        assert recorded.boards > 0 and recorded.protocol
        assert recorded.delta_map == pytest.approx(recorded.map - recorded.map_float32, abs=1e-9)


# --- the inferencer and the service -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_with_parity(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model whose card records bfloat16 parity."""
    folder = tmp_path_factory.mktemp("tiny_parity")
    shutil.copy(tiny_weights, folder / "model.keras")
    raw = json.loads((tiny_weights.parent / "model_card.json").read_text())
    raw["precision_parity"] = {"bfloat16": parity(0.001)}
    (folder / "model_card.json").write_text(json.dumps(raw))
    return folder / "model.keras"


def test_load_resolves_auto_per_card(tiny_weights: Path, tiny_with_parity: Path) -> None:
    with_parity = Inferencer.load(tiny_with_parity, precision="auto", cpu_flags=AVX512_BF16)
    assert (with_parity.precision, with_parity.precision_requested) == ("bfloat16", "auto")
    # The model really runs in bfloat16 (all but the float32 softmax).
    dtypes = {layer.name: layer.compute_dtype for layer in with_parity.model.layers}
    assert dtypes["probabilities"] == "float32"
    assert sum(d == "bfloat16" for d in dtypes.values()) > len(dtypes) // 2
    without = Inferencer.load(tiny_weights, precision="auto", cpu_flags=AVX512_BF16)
    assert (without.precision, without.precision_requested) == ("float32", "auto")
    assert all(layer.compute_dtype == "float32" for layer in without.model.layers)
    no_bf16 = Inferencer.load(tiny_with_parity, precision="auto", cpu_flags=PLAIN_AVX512)
    assert no_bf16.precision == "float32"


def test_default_settings_ask_for_auto() -> None:
    assert Settings().precision == "auto"


def model_entry(client: TestClient) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    response = client.get("/v1/model")
    assert response.status_code == 200
    info = response.json()
    return info, info["models"]


def test_service_with_default_settings_reports_what_runs(
    tiny_with_parity: Path, tiny_pair_weights: Path
) -> None:
    # Default PCB_PRECISION (auto), on this machine's CPU: each model resolves by its card.
    # The single model's card records bfloat16 parity, the tiny pair model's records none.
    flags = read_cpu_flags()
    single_card = load_card(tiny_with_parity.parent / "model_card.json")
    want_single = resolve_precision("auto", "cpu", single_card, flags)
    assert want_single == ("bfloat16" if cpu_has_bfloat16(flags) else "float32")
    with app_client(tiny_with_parity, pair_weights_path=tiny_pair_weights) as client:
        info, models = model_entry(client)
        assert (info["precision"], info["precision_requested"]) == (want_single, "auto")
        assert [(m["mode"], m["precision"], m["precision_requested"]) for m in models] == [
            ("single", want_single, "auto"), ("pair", "float32", "auto")
        ]
        metrics = client.get("/metrics").text
    assert f'precision="{want_single}",precision_requested="auto"' in metrics
    pair_line = next(line for line in metrics.splitlines()
                     if line.startswith("pcb_pair_model_info{"))
    assert 'precision="float32",precision_requested="auto"' in pair_line


def test_explicit_float32_forces_float32(tiny_with_parity: Path) -> None:
    with app_client(tiny_with_parity, precision="float32") as client:
        info, models = model_entry(client)
    assert (info["precision"], info["precision_requested"]) == ("float32", "float32")
    assert models[0]["precision"] == "float32"
