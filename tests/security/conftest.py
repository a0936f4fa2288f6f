"""The hostile suite's shared app: the tiny real models, one key per role, SQLite records in
a fresh folder, and a confidence cut at which the tiny model finds defects on the test board."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import ROLE_KEYS, app_client, defect_cut


@pytest.fixture(scope="module")
def cut(tiny_weights: Path) -> float:
    return defect_cut(tiny_weights)


@pytest.fixture(scope="module")
def client(tiny_weights: Path, tiny_pair_weights: Path, cut: float,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(tiny_weights, pair_weights_path=tiny_pair_weights, api_keys=ROLE_KEYS,
                    rules_threshold=cut, data_dir=tmp_path_factory.mktemp("data")) as c:
        yield c

