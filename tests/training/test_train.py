"""Tests for training.train: the tf.data pipeline, and run() -> resume -> export end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from app.inference.card import load_card
from app.inference.loading import load_keras_model
from model_defs import EdgeEnhancementLayer, get_custom_objects
from training import export as export_mod
from training.data import Box, read_split, split_train_val
from training.synth import write_deeppcb_folder
from training.train import TrainConfig, build_parser, make_train_dataset, run, run_split

BOARD = 160  # make_board cannot fit all six defects on every 128 px board


def dihedral(a: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations and reflections of a 2D array."""
    rotations = [np.rot90(a, k) for k in range(4)]
    return rotations + [r[:, ::-1] for r in rotations]


def locate(crop: np.ndarray, images: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Every ``(image, variant, y, x)`` where a rotation/reflection of ``crop`` sits."""
    size = crop.shape[0]
    found = []
    for v, variant in enumerate(dihedral(crop)):
        for n, image in enumerate(images):
            windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
            ys, xs = np.nonzero(np.all(windows == variant, axis=(2, 3)))
            found += [(n, v, int(y), int(x)) for y, x in zip(ys, xs, strict=True)]
    return found


def source(n: int = 3, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    masks = rng.integers(0, 7, size=(n, size, size), dtype=np.uint8)
    return images, masks


def first_batches(dataset, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


@pytest.fixture(autouse=True)
def float32_policy():
    """run() sets the global dtype policy from --precision: leave float32 behind."""
    yield
    keras.mixed_precision.set_global_policy("float32")


# --- make_train_dataset -----------------------------------------------------------------------


def test_dataset_shapes_and_dtypes():
    images, masks = source()
    ds = make_train_dataset(images, masks, [[], [], []], crop=16, batch_size=4,
                            defect_crop_prob=0.5, seed=1)
    (x, y), = first_batches(ds, 1)
    assert x.shape == (4, 16, 16, 1) and x.dtype == np.float32
    assert y.shape == (4, 16, 16) and y.dtype == np.int32


def test_dataset_is_deterministic_for_a_seed():
    images, masks = source()
    boxes = [[Box(10, 10, 20, 20, 1)], [], [Box(30, 5, 40, 12, 2)]]

    def batches(seed):
        return first_batches(
            make_train_dataset(images, masks, boxes, 16, 2, 0.5, seed=seed), 3
        )

    a, b, c = batches(7), batches(7), batches(8)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))


def test_crops_are_windows_of_the_data_with_their_own_mask():
    images, masks = source()
    ds = make_train_dataset(images, masks, [[], [], []], crop=16, batch_size=4,
                            defect_crop_prob=0.0, seed=3)
    variants_seen = set()
    for x, y in first_batches(ds, 3):
        for crop, crop_mask in zip(x[..., 0].astype(np.uint8), y, strict=True):
            hits = locate(crop, images)
            assert len(hits) == 1, "a crop must be exactly one window, rotated or flipped"
            n, v, row, col = hits[0]
            variants_seen.add(v)
            window_mask = masks[n, row : row + 16, col : col + 16]
            # The mask went through the same rotation/flip as the image.
            np.testing.assert_array_equal(dihedral(crop_mask)[v], window_mask)
    assert len(variants_seen) > 1  # the augmentation does rotate/flip


def test_defect_crops_contain_the_defect():
    images, masks = source(n=2, size=64, seed=5)
    boxes = [[Box(50, 4, 58, 10, 3)], [Box(2, 40, 8, 52, 6)]]
    centres = [(7, 54), (46, 5)]  # (row, col) as the pipeline computes them
    ds = make_train_dataset(images, masks, boxes, crop=16, batch_size=4,
                            defect_crop_prob=1.0, seed=0)
    for x, _ in first_batches(ds, 4):
        for crop in x[..., 0].astype(np.uint8):
            (n, _, row, col), = locate(crop, images)
            cy, cx = centres[n]
            assert row <= cy < row + 16 and col <= cx < col + 16


def test_crop_larger_than_the_image_is_rejected():
    images, masks = source(size=32)
    with pytest.raises(ValueError, match="Received: crop=48"):
        make_train_dataset(images, masks, [[], [], []], 48, 1, 0.5, seed=0)


# --- run, resume, export ----------------------------------------------------------------------


def train_args(data: Path, out: Path, *extra: str):
    return build_parser().parse_args(
        ["--data", str(data), "--out", str(out), "--encoder-depth", "2", "--crop", "64",
         "--batch-size", "2", "--steps-per-epoch", "2", "--val-images", "1",
         "--max-minutes", "5", "--verbose", "0", *extra]
    )


def history_rows(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def deeppcb(tmp_path_factory) -> Path:
    return write_deeppcb_folder(tmp_path_factory.mktemp("train_data"), n_pairs=4, seed=0,
                                size=BOARD)


@pytest.fixture(scope="module")
def first_run(deeppcb, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("train_run") / "run"
    summary = run(train_args(deeppcb, out, "--epochs", "2"))
    keras.mixed_precision.set_global_policy("float32")
    return {
        "out": out,
        "summary": summary,
        "rows": history_rows(out),
        "best_bytes": (out / "best.keras").read_bytes(),
        "files": sorted(p.name for p in out.iterdir()),
    }


@pytest.fixture(scope="module")
def resumed_run(first_run, deeppcb) -> dict:
    out = first_run["out"]
    summary = run(train_args(deeppcb, out, "--epochs", "3"))
    keras.mixed_precision.set_global_policy("float32")
    return {"out": out, "summary": summary, "rows": history_rows(out)}


@pytest.mark.slow
def test_run_writes_the_run_folder(first_run):
    out = first_run["out"]
    assert {"best.keras", "history.csv", "summary.json", "config.json", "split.json",
            "backup"} <= set(first_run["files"])
    assert [row["epoch"] for row in first_run["rows"]] == ["0", "1"]
    for row in first_run["rows"]:
        assert np.isfinite(float(row["loss"])) and np.isfinite(float(row["val_loss"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary == first_run["summary"]
    assert summary["epochs_run"] == 2
    assert summary["train_images"] == 3 and summary["val_images"] == 1
    assert summary["best_val_loss"] == pytest.approx(
        min(float(r["val_loss"]) for r in first_run["rows"]), rel=1e-6
    )
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["val"]) == 1
    assert set(split["train"]).isdisjoint(split["val"])
    model = keras.models.load_model(out / "best.keras", custom_objects=get_custom_objects())
    assert model.output_shape == (None, None, None, 7)


@pytest.mark.slow
def test_rerun_with_more_epochs_continues_from_the_backup(first_run, resumed_run):
    rows = resumed_run["rows"]
    assert len(rows) == len(first_run["rows"]) + 1  # exactly one more epoch
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert rows[:2] == first_run["rows"]
    assert resumed_run["summary"]["epochs_run"] == 1
    # best.keras is replaced only by a model better than every earlier epoch.
    earlier_best = min(float(r["val_loss"]) for r in first_run["rows"])
    improved = float(rows[2]["val_loss"]) < earlier_best
    replaced = (resumed_run["out"] / "best.keras").read_bytes() != first_run["best_bytes"]
    assert replaced == improved


def export_args(run_dir: Path, out: Path):
    return export_mod.build_parser().parse_args(
        ["--run", str(run_dir), "--out", str(out), "--tile-size", "64", "--name", "tiny-run",
         "--version", "0.0.1"]
    )


@pytest.mark.slow
def test_export_of_the_resumed_run_loads_in_the_service(resumed_run, tmp_path):
    card = export_mod.export(export_args(resumed_run["out"], tmp_path))
    weights = tmp_path / export_mod.WEIGHTS_NAME
    model = load_keras_model(weights)
    assert [layer.name for layer in model.layers if isinstance(layer, EdgeEnhancementLayer)] == [
        "edge_enhancement_s2",
        "edge_enhancement_s1",
    ]
    loaded_card = load_card(tmp_path / "model_card.json")
    assert loaded_card.name == "tiny-run"
    assert loaded_card.input.tile_size == 64 and loaded_card.input.multiple_of == 4
    assert card["architecture"]["edge_enhancement"] is True
    assert card["architecture"]["parameters"] == model.count_params()
    assert card["training"]["summary"] == resumed_run["summary"]
    assert card["annotation_box_margin_px"] >= 0

    # The export carries the checkpoint's weights: same predictions.
    trained = keras.models.load_model(
        resumed_run["out"] / "best.keras", custom_objects=get_custom_objects(), compile=False
    )
    x = np.random.default_rng(0).integers(0, 256, size=(1, 64, 64, 1)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x, training=False)),
        keras.ops.convert_to_numpy(trained(x, training=False)),
        rtol=0, atol=1e-6,
    )


@pytest.mark.slow
def test_no_edge_run_exports_without_the_edge_layer(deeppcb, tmp_path):
    out = tmp_path / "run"
    run(train_args(deeppcb, out, "--no-edge", "--epochs", "1", "--steps-per-epoch", "1"))
    keras.mixed_precision.set_global_policy("float32")
    assert json.loads((out / "config.json").read_text())["no_edge"] is True
    card = export_mod.export(export_args(out, tmp_path / "export"))
    model = load_keras_model(tmp_path / "export" / export_mod.WEIGHTS_NAME)
    assert not any(isinstance(layer, EdgeEnhancementLayer) for layer in model.layers)
    assert card["architecture"]["edge_enhancement"] is False
    assert model.output_shape == (None, None, None, 7)


# --- the typed config and the run's own split --------------------------------------------------


def test_config_is_saved_with_its_types_and_read_back(tmp_path):
    args = train_args(tmp_path / "data", tmp_path / "run", "--seed", "7", "--no-edge")
    config = TrainConfig.from_args(args)
    config.out.mkdir(parents=True)
    config.save()
    saved = json.loads((config.out / "config.json").read_text())
    assert (saved["seed"], saved["no_edge"], saved["cache"]) == (7, True, None)
    assert (saved["learning_rate"], saved["encoder_depth"]) == (1e-3, 2)
    assert TrainConfig.load(config.out) == config


def test_a_config_written_as_strings_by_an_older_run_still_loads(tmp_path):
    config = TrainConfig.from_args(train_args(tmp_path / "data", tmp_path, "--no-edge"))
    old_style = {k: str(v) for k, v in config.model_dump().items()}
    (tmp_path / "config.json").write_text(json.dumps(old_style))
    assert TrainConfig.load(tmp_path) == config


def test_a_misspelled_config_value_is_refused_by_name(tmp_path):
    config = TrainConfig.from_args(train_args(tmp_path / "data", tmp_path)).model_dump(mode="json")
    (tmp_path / "config.json").write_text(json.dumps({**config, "encoder_depth": 7}))
    with pytest.raises(ValueError, match="encoder_depth"):
        TrainConfig.load(tmp_path)


@pytest.fixture(scope="module")
def ten_pairs(tmp_path_factory) -> Path:
    return write_deeppcb_folder(tmp_path_factory.mktemp("ten_pairs"), n_pairs=10, size=BOARD)


def test_the_run_split_is_the_runs_own(ten_pairs, tmp_path):
    config = TrainConfig.from_args(train_args(ten_pairs, tmp_path, "--seed", "7",
                                              "--val-fraction", "0.3"))
    samples = read_split(ten_pairs)
    # Before training wrote split.json: the split of the run's own seed and fraction, which
    # is not the one the defaults give.
    train, val = run_split(config)
    assert [s.key for s in val] == [s.key for s in split_train_val(samples, 0.3, 7)[1]]
    assert [s.key for s in val] != [s.key for s in split_train_val(samples)[1]]
    # Once there, split.json is what counts, whatever a re-split would give.
    keys = [s.key for s in samples]
    (tmp_path / "split.json").write_text(json.dumps({"train": keys[2:], "val": keys[:2]}))
    train, val = run_split(config)
    assert ([s.key for s in train], [s.key for s in val]) == (keys[2:], keys[:2])


def test_export_refuses_a_split_of_boards_the_data_does_not_hold(ten_pairs, tmp_path):
    run_dir = tmp_path / "run"
    config = TrainConfig.from_args(train_args(ten_pairs, run_dir))
    run_dir.mkdir()
    config.save()
    (run_dir / "split.json").write_text(json.dumps({"train": ["99999000"], "val": []}))
    with pytest.raises(ValueError, match=r"split.json lists 1 boards that .* does not hold"):
        export_mod.export(export_args(run_dir, tmp_path / "export"))
