"""Tests of ``app.inference.inferencer`` with the tiny real model (never a mock of it)."""

from __future__ import annotations

import asyncio
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.core.config import Settings
from app.inference.batcher import DynamicBatcher, QueueFullError
from app.inference.defects import PostprocessConfig
from app.inference.inferencer import Inferencer
from app.inference.loading import ModelLoadError, load_keras_model
from app.inference.pipeline import InferenceResult
from tests.helpers.boards import make_board
from tests.helpers.probs import split_probs

# Threshold 0: every pixel with any foreground probability is a defect pixel, so the defects'
# areas, classes and confidences (mean fg x class purity) depend on every pixel's output and
# comparisons between paths see every pixel.
CONFIG = PostprocessConfig(threshold=0.0, min_area_px=0, pixels_per_mm=48.0)


def settings_for(weights: Path, **overrides: object) -> Settings:
    return Settings(weights_path=weights, device="cpu", **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def inferencer(tiny_weights: Path) -> Inferencer:
    inf = Inferencer.from_settings(settings_for(tiny_weights, batching_max_size=4))
    inf.warm_up()
    return inf


def assert_same_result(a: InferenceResult, b: InferenceResult) -> None:
    assert (a.width, a.height, a.tiles) == (b.width, b.height, b.tiles)
    np.testing.assert_array_equal(a.class_map, b.class_map)
    assert a.defects == b.defects
    assert a.summary == b.summary


# --- loading --------------------------------------------------------------------------------


def test_loads_through_load_keras_model_with_custom_objects(
    tiny_weights: Path, inferencer: Inferencer
) -> None:
    from model_defs import EdgeEnhancementLayer

    # The custom layer came back as its own class: model_defs' custom objects were used.
    assert any(isinstance(layer, EdgeEnhancementLayer) for layer in inferencer.model.layers)
    assert inferencer.card.name == "tiny-test-unet"
    assert inferencer.tile == 64 and inferencer.tile_overlap == 6
    assert inferencer.device == "cpu" and inferencer.precision == "float32"
    # The same function the service uses loads the file standalone, to the same weights.
    model = load_keras_model(tiny_weights)
    for mine, theirs in zip(model.get_weights(), inferencer.model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


# --- tracing --------------------------------------------------------------------------------


def test_no_retracing_across_image_and_batch_sizes(inferencer: Inferencer) -> None:
    assert inferencer.tracing_count == 1  # the warm-up traced it once
    for i, (h, w) in enumerate([(64, 64), (100, 80), (30, 200), (200, 300), (17, 9)]):
        result = inferencer.predict(make_board(h, w, seed=i), CONFIG)
        assert result.class_map.shape == (h, w)
    for n in (1, 3, 7):
        fg, cls, cls_p = inferencer.forward(np.zeros((n, 64, 64, 1), np.uint8))
        assert fg.shape == cls.shape == cls_p.shape == (n, 64, 64)
    # A fixed input signature: new image sizes and batch sizes reuse the one graph.
    assert inferencer.tracing_count == 1


# --- sync vs async --------------------------------------------------------------------------


def test_predict_sync_equals_async_path_through_the_batcher(inferencer: Inferencer) -> None:
    boards = [make_board(64, 64, seed=1), make_board(150, 130, seed=2)]
    sync = [inferencer.predict(b, CONFIG) for b in boards]

    async def main() -> list[InferenceResult]:
        batcher = DynamicBatcher(inferencer.forward, max_batch_size=8, max_wait_s=0.01,
                                 max_queue=64)
        batcher.start()
        try:
            # Concurrently, so their tiles are mixed in shared batches.
            return list(await asyncio.gather(
                *(inferencer.predict_async(b, CONFIG, batcher.submit) for b in boards)
            ))
        finally:
            await batcher.close()

    for a, b in zip(sync, asyncio.run(main()), strict=True):
        assert_same_result(a, b)
    assert sync[1].tiles > 1  # the second board really was tiled


def test_large_board_is_tiled_and_stitched_to_full_size(inferencer: Inferencer) -> None:
    result = inferencer.predict(make_board(200, 300, seed=3), CONFIG)
    assert result.tiles > 4
    assert (result.height, result.width) == result.class_map.shape == (200, 300)
    assert set(result.timings_ms) >= {"pre_process", "forward", "post_process"}


def test_rejects_a_non_grayscale_array(inferencer: Inferencer) -> None:
    with pytest.raises(ValueError, match="uint8"):
        inferencer.predict(np.zeros((64, 64, 3), np.uint8), CONFIG)


def test_forward_returns_the_three_maps_of_the_softmax(inferencer: Inferencer) -> None:
    tiles = np.stack([make_board(64, 64, seed=s)[..., None] for s in range(2)])

    fg, cls, cls_p = inferencer.forward(tiles)

    assert (fg.dtype, cls.dtype, cls_p.dtype) == (np.float32, np.uint8, np.float16)
    assert fg.shape == cls.shape == cls_p.shape == (2, 64, 64)
    # The graph's reduction is split_probs' (the numpy reference), up to float rounding.
    probs = np.asarray(inferencer.model(tiles.astype(np.float32), training=False))
    want_fg, want_cls, want_cls_p = split_probs(probs)
    np.testing.assert_allclose(fg, want_fg, atol=1e-5)
    assert np.mean(cls != want_cls) < 1e-3  # only near-ties could flip
    np.testing.assert_allclose(cls_p.astype(np.float32), want_cls_p.astype(np.float32), atol=2e-3)
    k = len(inferencer.card.classes)
    assert cls_p.min() >= np.float16(1 / k) and cls_p.max() <= 1


# --- precision ------------------------------------------------------------------------------


def test_bfloat16_runs_and_gives_nearly_the_same_fg_map(inferencer: Inferencer) -> None:
    bf16 = Inferencer(
        inferencer.model, inferencer.card, inferencer.weights_path, inferencer.weights_sha256,
        precision="bfloat16",
    )
    assert bf16.precision == "bfloat16"
    tiles = np.stack([make_board(64, 64, seed=s)[..., None] for s in range(3)])
    fg32, _, _ = inferencer.forward(tiles)
    fg16, cls16, cls_p16 = bf16.forward(tiles)
    assert fg16.dtype == np.float32 and cls16.dtype == np.uint8 and cls_p16.dtype == np.float16
    assert fg16.shape == fg32.shape
    # The clone computes in bfloat16 (all but the float32 softmax).
    dtypes = {layer.name: layer.compute_dtype for layer in bf16.model.layers}
    assert dtypes["probabilities"] == "float32"
    assert sum(d == "bfloat16" for d in dtypes.values()) > len(dtypes) // 2
    diff = np.abs(fg16 - fg32)
    # bfloat16 keeps ~3 significant digits: close, but not bit-equal (else it did not run).
    assert 0 < diff.max() < 0.1 and diff.mean() < 0.02, (diff.mean(), diff.max())
    # The float32 model itself was not changed by cloning under the policy.
    np.testing.assert_array_equal(inferencer.forward(tiles)[0], fg32)


def test_rejects_an_unknown_precision(inferencer: Inferencer) -> None:
    with pytest.raises(ValueError, match="precision"):
        Inferencer(inferencer.model, inferencer.card, inferencer.weights_path, "x",
                   precision="int4")


# --- load errors ----------------------------------------------------------------------------


@pytest.fixture()
def model_dir(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model and card, to damage freely."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_weights, folder / "model.keras")
    shutil.copy(tiny_weights.with_name("model_card.json"), folder / "model_card.json")
    return folder


def load_error(weights: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        Inferencer.from_settings(settings_for(weights))
    message = str(info.value)
    assert message and "\n" not in message, message  # one line, for the startup log
    return message


def test_missing_weights_file(model_dir: Path) -> None:
    missing = model_dir / "nope.keras"
    (model_dir / "model_card.json").rename(model_dir / "x.json")
    shutil.copy(model_dir / "x.json", missing.with_name("model_card.json"))
    message = load_error(missing)
    assert str(missing) in message and "does not exist" in message


def test_truncated_weights_file(model_dir: Path) -> None:
    weights = model_dir / "model.keras"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = load_error(weights)
    assert str(weights) in message and "truncated" in message


def test_text_file_as_weights(model_dir: Path) -> None:
    weights = model_dir / "model.keras"
    weights.write_text("these are not the weights you are looking for\n")
    message = load_error(weights)
    assert str(weights) in message and "not a Keras" in message


def test_zip_without_config_json(model_dir: Path) -> None:
    weights = model_dir / "model.keras"
    with zipfile.ZipFile(weights, "w") as archive:
        archive.writestr("readme.txt", "a zip, but not a Keras model")
    message = load_error(weights)
    assert str(weights) in message and "not a Keras model" in message


def test_keras_archive_with_damaged_weights(model_dir: Path) -> None:
    weights = model_dir / "model.keras"
    with zipfile.ZipFile(weights) as src:
        members = {name: src.read(name) for name in src.namelist()}
    with zipfile.ZipFile(weights, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, b"garbage" if name.endswith(".h5") else data)
    message = load_error(weights)
    assert str(weights) in message and "could not be loaded" in message


def test_missing_model_card(model_dir: Path) -> None:
    (model_dir / "model_card.json").unlink()
    message = load_error(model_dir / "model.keras")
    assert str(model_dir / "model_card.json") in message and "does not exist" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not readable JSON"),
        (json.dumps({"name": "x", "version": "1"}), "invalid at classes"),
        (json.dumps({"name": "x", "version": "1", "classes": ["a"], "pixels_per_mm": -1}),
         "invalid at pixels_per_mm"),
    ],
)
def test_invalid_model_card(model_dir: Path, content: str, expected: str) -> None:
    (model_dir / "model_card.json").write_text(content)
    message = load_error(model_dir / "model.keras")
    assert str(model_dir / "model_card.json") in message and expected in message


def test_tile_overlap_comes_from_the_card(model_dir: Path) -> None:
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card["input"]["tile_overlap"] = 10
    card_path.write_text(json.dumps(card))
    assert Inferencer.from_settings(settings_for(model_dir / "model.keras")).tile_overlap == 10
    # Not below the tile: refused in one line naming the card.
    card["input"]["tile_overlap"] = card["input"]["tile_size"]
    card_path.write_text(json.dumps(card))
    message = load_error(model_dir / "model.keras")
    assert str(card_path) in message and "invalid at input" in message
    assert "tile_overlap must be less than tile_size 64, got 64" in message


def test_class_count_mismatch(model_dir: Path) -> None:
    card_path = model_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card["classes"] = ["open", "short", "spur"]
    card_path.write_text(json.dumps(card))
    message = load_error(model_dir / "model.keras")
    assert "outputs 7 channels" in message and "3 classes" in message
    assert str(model_dir / "model.keras") in message


# --- a large board beside small ones ------------------------------------------------------


def test_large_board_keeps_a_few_chunks_in_flight_and_small_boards_flow(
    inferencer: Inferencer,
) -> None:
    from app.inference.pipeline import CHUNKS_IN_FLIGHT

    big = make_board(400, 400, seed=5)  # 64 px tiles: many chunks of max_batch_size tiles
    smalls = [make_board(64, 64, seed=10 + i) for i in range(6)]
    expected_big = inferencer.predict(big, CONFIG)
    outstanding: list[int] = []
    big_calls = 0

    async def main() -> tuple[InferenceResult, list[float], float]:
        nonlocal big_calls
        # max_queue of one chunk: the big board's later chunks must not be refused for it.
        batcher = DynamicBatcher(inferencer.forward, max_batch_size=inferencer.max_batch_size,
                                 max_wait_s=0.0, max_queue=inferencer.max_batch_size + 1)
        batcher.start()
        live = 0

        async def counted(tiles: np.ndarray, *, admit: bool = True) -> tuple[np.ndarray, ...]:
            nonlocal live, big_calls
            live += 1
            big_calls += 1
            outstanding.append(live)
            try:
                return await batcher.submit(tiles, admit=admit)
            finally:
                live -= 1

        loop = asyncio.get_running_loop()
        try:
            big_task = asyncio.ensure_future(inferencer.predict_async(big, CONFIG, counted))
            small_done: list[float] = []
            for board in smalls:
                await asyncio.sleep(0.01)
                while True:
                    try:
                        await inferencer.predict_async(board, CONFIG, batcher.submit)
                        break
                    except QueueFullError:  # the queue of one chunk is full: retry, as a client
                        await asyncio.sleep(0.005)
                small_done.append(loop.time())
            result = await big_task
            return result, small_done, loop.time()
        finally:
            await batcher.close()

    result, small_done, big_done = asyncio.run(main())
    assert_same_result(result, expected_big)
    assert big_calls == -(-expected_big.tiles // inferencer.max_batch_size) > CHUNKS_IN_FLIGHT
    # Never more than CHUNKS_IN_FLIGHT of the board wait at once, and it did overlap them.
    assert max(outstanding) == CHUNKS_IN_FLIGHT
    # The small boards did not wait for the whole large board.
    assert all(t < big_done for t in small_done)


def test_calibrate_batch_size_picks_the_smallest_batch_near_the_best(
    tiny_weights: Path,
) -> None:
    inf = Inferencer.from_settings(settings_for(tiny_weights, batching_max_size=8))
    inf.warm_up()
    per_tile = inf.calibrate_batch_size(cap=6)
    assert sorted(per_tile) == [1, 2, 4]  # powers of two up to the cap
    best = min(per_tile.values())
    chosen = inf.max_batch_size
    assert per_tile[chosen] <= best * 1.03
    assert all(per_tile[n] > best * 1.03 for n in per_tile if n < chosen)
    with pytest.raises(ValueError, match="Received: cap=0"):
        inf.calibrate_batch_size(cap=0)
