"""Tests for training.pack: build_pack -> .npz -> load_pack keeps the pairs, masks and boxes."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data import load_sample, read_pair, read_split
from training.pack import BINARY_THRESHOLD, PairPack, build_pack, load_pack
from training.pack import main as pack_main
from training.synth import make_board, write_deeppcb_folder

SIZE = 160  # make_board cannot fit all six defects on every 128 px board
N_PAIRS = 3


@pytest.fixture(scope="module")
def deeppcb(tmp_path_factory) -> Path:
    return write_deeppcb_folder(tmp_path_factory.mktemp("pack_data"), n_pairs=N_PAIRS, seed=0,
                                size=SIZE)


@pytest.fixture(scope="module")
def packed(deeppcb, tmp_path_factory) -> tuple[dict[str, np.ndarray], Path]:
    arrays = build_pack(deeppcb, "all", workers=2)
    path = tmp_path_factory.mktemp("pack") / "all.npz"
    np.savez_compressed(path, **arrays)
    return arrays, path


def test_build_pack_arrays(packed):
    arrays, _ = packed
    assert list(arrays["keys"]) == [f"00001{i:03d}" for i in range(N_PAIRS)]
    assert list(arrays["groups"]) == ["00001"] * N_PAIRS
    # One bit per pixel: a 160 px row is 20 bytes.
    assert arrays["boards"].shape == arrays["references"].shape == (N_PAIRS, SIZE, SIZE // 8)
    assert arrays["boards"].dtype == np.uint8
    assert arrays["masks"].shape == (N_PAIRS, SIZE, SIZE)
    assert int(arrays["width"]) == SIZE


def test_round_trip_through_savez_compressed(deeppcb, packed):
    _, path = packed
    pack = load_pack(path)
    samples = read_split(deeppcb)
    assert isinstance(pack, PairPack)
    assert pack.keys == [s.key for s in samples]
    assert pack.groups == ["00001"] * N_PAIRS
    for array in (pack.boards, pack.references, pack.masks):
        assert array.shape == (N_PAIRS, SIZE, SIZE) and array.dtype == np.uint8
    # Binarised: copper 0, substrate 255, nothing between.
    assert set(np.unique(pack.boards)) == {0, 255}
    assert set(np.unique(pack.references)) == {0, 255}
    assert pack.boxes.dtype == np.int32 and pack.counts.dtype == np.int32
    assert pack.boxes.shape == (N_PAIRS, 6, 5)  # six defects a synthetic board
    np.testing.assert_array_equal(pack.counts, [6] * N_PAIRS)
    for i, sample in enumerate(samples):
        image, mask, boxes = load_sample(sample)
        # The mask is load_sample's: registered template, same derivation.
        np.testing.assert_array_equal(pack.masks[i], mask)
        assert pack.boxes[i, : pack.counts[i]].tolist() == [
            [b.x1, b.y1, b.x2, b.y2, b.label] for b in boxes
        ]
        board = make_board(seed=i, size=SIZE)
        assert [tuple(row[:4]) for row in pack.boxes[i].tolist()] == [
            d.bbox for d in board.defects
        ]
        # The images are the JPEGs binarised, the reference registered to the board.
        test, reference = read_pair(sample)
        np.testing.assert_array_equal(pack.boards[i], np.where(test >= BINARY_THRESHOLD, 255, 0))
        np.testing.assert_array_equal(
            pack.references[i], np.where(reference >= BINARY_THRESHOLD, 255, 0)
        )
        assert np.array_equal(pack.boards[i] == 0, board.image < 128)


def test_boxes_are_padded_to_the_most_annotated_pair(tmp_path):
    data = write_deeppcb_folder(tmp_path / "data", n_pairs=2, seed=0, size=SIZE)
    note = data / "PCBData" / "group00001" / "00001_not" / "00001001.txt"
    first_two = note.read_text().splitlines()[:2]
    note.write_text("\n".join(first_two) + "\n")
    pack_file = tmp_path / "pack.npz"
    assert pack_main(["--data", str(data), "--out", str(pack_file), "--part", "all",
                      "--workers", "1"]) == 0
    pack = load_pack(pack_file)
    np.testing.assert_array_equal(pack.counts, [6, 2])
    assert pack.boxes.shape == (2, 6, 5)
    assert not pack.boxes[1, 2:].any()  # zero padding: label 0, never a class
    assert pack.boxes[1, :2].tolist() == [[int(v) for v in line.split()] for line in first_two]


def test_parts_follow_the_validation_groups(tmp_path):
    data = write_deeppcb_folder(tmp_path / "data", n_pairs=1, seed=0, size=SIZE)
    write_deeppcb_folder(data, n_pairs=1, seed=5, size=SIZE, group="44000")  # in VAL_GROUPS
    train = build_pack(data, "train", workers=1)
    val = build_pack(data, "val", workers=1)
    assert list(train["keys"]) == ["00001000"] and list(val["keys"]) == ["44000000"]
    assert list(val["groups"]) == ["44000"]


def test_a_part_without_pairs_raises(tmp_path):
    data = write_deeppcb_folder(tmp_path / "data", n_pairs=1, seed=0, size=SIZE, group="44000")
    with pytest.raises(ValueError, match=re.escape("no pairs in part 'train'")):
        build_pack(data, "train", workers=1)


def test_select_keeps_everything_in_step(packed):
    _, path = packed
    pack = load_pack(path)
    sub = pack.select([2, 0])
    assert sub.keys == [pack.keys[2], pack.keys[0]]
    assert sub.groups == [pack.groups[2], pack.groups[0]]
    for name in ("boards", "references", "masks", "boxes", "counts"):
        np.testing.assert_array_equal(getattr(sub, name), getattr(pack, name)[[2, 0]])


def test_bit_packing_keeps_a_width_that_is_not_a_multiple_of_eight(tmp_path):
    # The unpacked width comes from the pack, not from the padded bytes.
    board = make_board(seed=1, size=(SIZE, SIZE + 4))
    rows = np.where(board.image < 128, 0, 255).astype(np.uint8)
    folder = tmp_path / "PCBData" / "group00001"
    (folder / "00001").mkdir(parents=True)
    (folder / "00001_not").mkdir()
    for kind, image in (("test", board.image), ("temp", board.template)):
        # DeepPCB names .jpg files; PNG bytes under that name keep the pixels exact.
        ok, png = cv2.imencode(".png", image)
        assert ok
        (folder / "00001" / f"00001000_{kind}.jpg").write_bytes(png.tobytes())
    (folder / "00001_not" / "00001000.txt").write_text(
        "".join(f"{d.bbox[0]} {d.bbox[1]} {d.bbox[2]} {d.bbox[3]} {d.label}\n"
                for d in board.defects)
    )
    (tmp_path / "PCBData" / "trainval.txt").write_text(
        "group00001/00001/00001000.jpg group00001/00001_not/00001000.txt\n"
    )
    path = tmp_path / "pack.npz"
    np.savez_compressed(path, **build_pack(tmp_path, "all", workers=1))
    pack = load_pack(path)
    assert pack.boards.shape == (1, SIZE, SIZE + 4)
    np.testing.assert_array_equal(pack.boards[0], rows)
    np.testing.assert_array_equal(pack.masks[0], board.mask)


def test_groups_choose_board_groups(tmp_path):
    data = write_deeppcb_folder(tmp_path / "data", n_pairs=1, seed=0, size=SIZE, group="00041")
    write_deeppcb_folder(data, n_pairs=2, seed=5, size=SIZE, group="44000")
    only = build_pack(data, "all", workers=1, groups=("44000",))
    assert set(only["groups"].tolist()) == {"44000"} and len(only["keys"]) == 2
    without = build_pack(data, "all", workers=1, exclude_groups=("44000",))
    assert without["groups"].tolist() == ["00041"]
    with pytest.raises(ValueError, match=r"board groups \['12345'\] are not in the data"):
        build_pack(data, "all", workers=1, exclude_groups=("12345",))
    out = tmp_path / "no44000.npz"
    assert pack_main(["--data", str(data), "--out", str(out), "--part", "all",
                      "--exclude-groups", "44000", "--workers", "1"]) == 0
    assert load_pack(out).groups == ["00041"]


@pytest.mark.parametrize("value", ["4400", "44000,abc"])
def test_groups_must_be_five_digits(tmp_path, value, capsys):
    with pytest.raises(SystemExit):
        pack_main(["--data", str(tmp_path), "--out", str(tmp_path / "x.npz"),
                   "--groups", value])
    assert "board groups are five digits" in capsys.readouterr().err
