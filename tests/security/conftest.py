"""The hostile suite's shared app: the tiny real models, one key per role, SQLite records in
a fresh folder, and a confidence cut at which the tiny model finds defects on the test board."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import ROLE_KEYS, app_client, defect_cut, with_thresholds


@pytest.fixture(scope="module")
def cut(tiny_weights: Path) -> float:
    return defect_cut(tiny_weights)


@pytest.fixture(scope="module")
def client(tiny_weights: Path, tiny_pair_weights: Path, cut: float,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    single, pair = with_thresholds(tmp_path_factory.mktemp("models"), tiny_weights,
                                   tiny_pair_weights, confidence=cut)
    with app_client(single, pair_weights_path=pair, api_keys=ROLE_KEYS,
                    data_dir=tmp_path_factory.mktemp("data")) as c:
        yield c

