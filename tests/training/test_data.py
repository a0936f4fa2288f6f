"""Tests for training.data: DeepPCB reading, annotation parsing, mask derivation, splitting."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data import (
    VAL_GROUPS,
    Box,
    Sample,
    derive_mask,
    find_list_file,
    group_of,
    load_arrays,
    load_sample,
    parse_annotations,
    read_pair,
    read_split,
    split_by_groups,
    split_train_val,
)
from training.synth import encode, make_board, write_deeppcb_folder

#: The real DeepPCB training split, where a machine has it (never part of the project).
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "deeppcb"

N_PAIRS = 3
SIZE = 160  # make_board cannot fit all six defects on every 128 px board
SEED = 0

SUBSTRATE, COPPER = 255, 0


@pytest.fixture(scope="module")
def deeppcb(tmp_path_factory) -> Path:
    """A synthetic DeepPCB-format folder of N_PAIRS boards."""
    return write_deeppcb_folder(
        tmp_path_factory.mktemp("deeppcb"), n_pairs=N_PAIRS, seed=SEED, size=SIZE
    )


def blank(h: int = 20, w: int = 20) -> np.ndarray:
    return np.full((h, w), SUBSTRATE, dtype=np.uint8)


def iou_with_truth(mask: np.ndarray, truth: np.ndarray) -> float:
    """Pixels with the right class over pixels that either calls a defect."""
    both = np.count_nonzero((mask == truth) & (truth > 0))
    either = np.count_nonzero((mask > 0) | (truth > 0))
    return both / either


def write_pair(folder: Path, key: str, test: np.ndarray, template: np.ndarray,
               boxes: list[Box]) -> Sample:
    """Writes one pair as DeepPCB stores it (JPEG, quality 95) and returns its Sample."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = Sample(folder / f"{key}_test.jpg", folder / f"{key}_temp.jpg", folder / f"{key}.txt")
    sample.test_path.write_bytes(encode(test, "JPEG", quality=95))
    sample.template_path.write_bytes(encode(template, "JPEG", quality=95))
    sample.annotation_path.write_text(
        "".join(f"{b.x1} {b.y1} {b.x2} {b.y2} {b.label}\n" for b in boxes)
    )
    return sample


def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` moved by ``(dx, dy)`` pixels, borders replicated."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, image.shape[::-1], borderMode=cv2.BORDER_REPLICATE)


def samples_named(*keys: str) -> list[Sample]:
    return [
        Sample(Path(f"{k}_test.jpg"), Path(f"{k}_temp.jpg"), Path(f"{k}.txt")) for k in keys
    ]


# --- reading the folder -----------------------------------------------------------------------


def test_read_split_finds_every_pair(deeppcb):
    samples = read_split(deeppcb)
    assert [s.key for s in samples] == [f"00001{i:03d}" for i in range(N_PAIRS)]
    for s in samples:
        assert s.test_path.is_file() and s.test_path.name.endswith("_test.jpg")
        assert s.template_path.is_file() and s.template_path.name.endswith("_temp.jpg")
        assert s.annotation_path.is_file() and s.annotation_path.parent.name == "00001_not"


def test_read_split_accepts_the_data_folder_or_the_list_file(deeppcb):
    list_file = deeppcb / "PCBData" / "trainval.txt"
    assert find_list_file(deeppcb) == list_file
    expected = read_split(deeppcb)
    assert read_split(deeppcb / "PCBData") == expected
    assert read_split(list_file) == expected


def test_find_list_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="No DeepPCB list file"):
        find_list_file(tmp_path)


@pytest.mark.parametrize("bad_line", ["just-one-field.jpg", "a.jpg b.txt c.txt"])
def test_read_split_malformed_line_names_file_and_line(tmp_path, bad_line):
    list_file = tmp_path / "trainval.txt"
    list_file.write_text(f"\n\n{bad_line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{list_file}:3:")):
        read_split(list_file)


def test_read_split_missing_image_names_file_and_line(tmp_path):
    list_file = tmp_path / "trainval.txt"
    list_file.write_text("g/1/00000001.jpg g/1_not/00000001.txt\n")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{list_file}:1:")):
        read_split(list_file)


def test_annotations_match_the_drawn_defects(deeppcb):
    for i, sample in enumerate(read_split(deeppcb)):
        board = make_board(seed=SEED + i, size=SIZE)
        boxes = parse_annotations(sample.annotation_path)
        assert [(b.x1, b.y1, b.x2, b.y2) for b in boxes] == [d.bbox for d in board.defects]
        assert [b.class_name for b in boxes] == [d.class_name for d in board.defects]


# --- annotations ------------------------------------------------------------------------------


def test_parse_annotations_spaces_commas_floats_and_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("10 20 30 40 1\n\n5,6,7,8,6\n1.0, 2.0, 3.0, 4.0, 3\n-3 -4 9 9 2\n")
    assert parse_annotations(path) == [
        Box(10, 20, 30, 40, 1),
        Box(5, 6, 7, 8, 6),
        Box(1, 2, 3, 4, 3),
        Box(0, 0, 9, 9, 2),  # negative corners clipped to 0
    ]
    assert [b.class_name for b in parse_annotations(path)] == [
        "open", "pin_hole", "mousebite", "short",
    ]


@pytest.mark.parametrize(
    "bad_line",
    [
        "10 20 30 40",
        "10 20 30 40 1 9",
        "10 20 thirty 40 1",
        "1 2 3 4 nan",
        "10 20 30 40 7",
        "10 20 30 40 0",
    ],
)
def test_parse_annotations_malformed_line_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "a.txt"
    path.write_text(f"1 1 5 5 1\n{bad_line}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
        parse_annotations(path)


# --- masks from hand-made arrays --------------------------------------------------------------


def test_a_real_difference_is_kept_whole_corners_included():
    template = blank()
    test = template.copy()
    test[7:13, 8:14] = COPPER  # a 6x6 blob of spurious copper
    mask = derive_mask(test, template, [Box(4, 4, 17, 16, 5)])
    expected = np.zeros((20, 20), dtype=np.uint8)
    expected[7:13, 8:14] = 5  # the opening only picks the component: its corners stay
    np.testing.assert_array_equal(mask, expected)


def test_thin_parts_attached_to_a_real_defect_are_kept():
    template = blank(30, 30)
    test = template.copy()
    test[10:16, 5:11] = COPPER  # the thick part of a spur: 6x6
    test[12, 11:20] = COPPER  # a 1 px wide stretch from it
    test[13:15, 20:25] = COPPER  # then 2 px wide, touching the 1 px stretch diagonally
    defect = test != template
    mask = derive_mask(test, template, [Box(2, 6, 28, 20, 4)])
    np.testing.assert_array_equal(mask, np.where(defect, 4, 0).astype(np.uint8))
    # Opened with a 3x3 cross, only the thick part would be left: the thin parts are really
    # thinner than the opening.
    opened = cv2.morphologyEx(defect.astype(np.uint8), cv2.MORPH_OPEN,
                              cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    assert not opened[:, 13:].any()


def test_a_one_pixel_sliver_beside_a_real_defect_is_dropped():
    template = blank(30, 30)
    template[4:26, 4:12] = COPPER  # a pad
    test = template.copy()
    test[4:26, 12] = COPPER  # its right edge one pixel further out: a sliver, not a defect
    test[8:14, 18:24] = COPPER  # a real 6x6 defect in the same box, apart from the sliver
    mask = derive_mask(test, template, [Box(2, 2, 28, 28, 5)])
    expected = np.zeros((30, 30), dtype=np.uint8)
    expected[8:14, 18:24] = 5
    np.testing.assert_array_equal(mask, expected)


def test_misalignment_slivers_are_removed_and_the_defect_kept():
    template = blank(30, 30)
    template[5:25, 5:15] = COPPER  # a pad
    test = blank(30, 30)
    test[6:26, 6:16] = COPPER  # the same pad, scanned 1 px down and right
    test[10:16, 20:26] = COPPER  # and a real 6x6 defect beside it
    slivers = np.abs(test.astype(int) - template.astype(int)) > 100
    slivers[10:16, 20:26] = False
    assert slivers.sum() > 30  # the slivers really are there
    mask = derive_mask(test, template, [Box(0, 0, 30, 30, 4)])
    expected = np.zeros((30, 30), dtype=np.uint8)
    expected[10:16, 20:26] = 4
    np.testing.assert_array_equal(mask, expected)


def test_a_real_component_is_cut_at_its_box():
    template = blank(20, 20)
    test = template.copy()
    test[4:12, 4:12] = COPPER
    mask = derive_mask(test, template, [Box(0, 0, 8, 20, 2)])
    expected = np.zeros((20, 20), dtype=np.uint8)
    expected[4:12, 4:8] = 2
    np.testing.assert_array_equal(mask, expected)


def test_box_without_difference_is_filled():
    template = blank()
    test = template.copy()
    test[2:6, 2:6] = 200  # a change of 55 gray levels: JPEG-noise sized, not a defect
    mask = derive_mask(test, template, [Box(3, 4, 9, 12, 2)])
    expected = np.zeros((20, 20), dtype=np.uint8)
    expected[4:12, 3:9] = 2  # x2, y2 exclusive
    np.testing.assert_array_equal(mask, expected)


def test_thin_defect_falls_back_to_the_raw_difference():
    template = blank()
    test = template.copy()
    test[9:11, 3:17] = COPPER  # a 2 px wide spur: no opening keeps it
    mask = derive_mask(test, template, [Box(2, 7, 18, 13, 4)])
    expected = np.zeros((20, 20), dtype=np.uint8)
    expected[9:11, 3:17] = 4
    np.testing.assert_array_equal(mask, expected)


def test_boxes_are_clipped_skipped_when_empty_and_painted_in_order():
    template = blank(10, 10)
    mask = derive_mask(
        template, template,
        [Box(6, 6, 50, 50, 1), Box(3, 3, 3, 8, 2), Box(0, 0, 4, 4, 3), Box(2, 2, 5, 5, 6)],
    )
    expected = np.zeros((10, 10), dtype=np.uint8)
    expected[6:, 6:] = 1  # clipped to the image
    expected[0:4, 0:4] = 3
    expected[2:5, 2:5] = 6  # painted after box 3: wins where they overlap
    np.testing.assert_array_equal(mask, expected)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        derive_mask(blank(20, 20), blank(20, 21), [])


def test_synthetic_masks_label_the_defects(deeppcb):
    for i, sample in enumerate(read_split(deeppcb)):
        image, mask, boxes = load_sample(sample)
        truth = make_board(seed=SEED + i, size=SIZE).mask
        assert image.shape == mask.shape == (SIZE, SIZE)
        assert image.dtype == mask.dtype == np.uint8
        inside = np.zeros_like(mask, dtype=bool)
        for b in boxes:
            inside[b.y1 : b.y2, b.x1 : b.x2] = True
            assert np.any(mask[b.y1 : b.y2, b.x1 : b.x2] == b.label)
        assert not mask[~inside].any()
        # The drawn defects are recovered from the JPEG pair, not just their boxes.
        assert iou_with_truth(mask, truth) > 0.85


def test_load_sample_registers_a_shifted_template(tmp_path):
    board = make_board(seed=SEED, size=SIZE)
    boxes = [Box(*d.bbox, d.label) for d in board.defects]
    sample = write_pair(tmp_path, "00001000", board.image, shifted(board.template, 2, 2), boxes)
    image, mask, loaded_boxes = load_sample(sample)
    assert loaded_boxes == boxes
    np.testing.assert_array_equal(image, cv2.imread(str(sample.test_path), cv2.IMREAD_GRAYSCALE))
    assert iou_with_truth(mask, board.mask) > 0.8
    # Without registration the 2 px shift costs: the comparison is not trivially easy.
    unregistered = derive_mask(
        image, cv2.imread(str(sample.template_path), cv2.IMREAD_GRAYSCALE), boxes
    )
    assert iou_with_truth(mask, board.mask) > iou_with_truth(unregistered, board.mask)


def test_read_pair_registers_the_template(tmp_path):
    board = make_board(seed=SEED + 1, size=SIZE)
    sample = write_pair(tmp_path, "00001001", board.image, shifted(board.template, -2, 1), [])
    test, template = read_pair(sample)
    assert test.shape == template.shape == (SIZE, SIZE)
    assert test.dtype == template.dtype == np.uint8
    raw = cv2.imread(str(sample.template_path), cv2.IMREAD_GRAYSCALE)
    # Away from the borders, the registered template sits on the clean template's pixels.
    inner = (slice(8, -8), slice(8, -8))
    after = np.abs(template[inner].astype(int) - board.template[inner]) > 100
    before = np.abs(raw[inner].astype(int) - board.template[inner]) > 100
    assert after.sum() < before.sum() / 10


def test_read_pair_keeps_a_template_that_does_not_align(tmp_path):
    board = make_board(seed=SEED, size=SIZE)
    other = make_board(seed=99, size=SIZE)  # another design: registration refuses it
    sample = write_pair(tmp_path, "00001002", board.image, other.template, [])
    test, template = read_pair(sample)
    np.testing.assert_array_equal(test, cv2.imread(str(sample.test_path), cv2.IMREAD_GRAYSCALE))
    np.testing.assert_array_equal(
        template, cv2.imread(str(sample.template_path), cv2.IMREAD_GRAYSCALE)
    )


def test_missing_template_fills_the_boxes(deeppcb, tmp_path):
    sample = read_split(deeppcb)[0]
    orphan = Sample(sample.test_path, tmp_path / "nowhere_temp.jpg", sample.annotation_path)
    _, mask, boxes = load_sample(orphan)
    assert boxes
    filled = np.zeros_like(mask)
    for b in boxes:  # synthetic boxes never overlap
        filled[b.y1 : b.y2, b.x1 : b.x2] = b.label
    np.testing.assert_array_equal(mask, filled)


# --- splitting and caching --------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_sized():
    samples = samples_named(*(f"{20085000 + i}" for i in range(20)))
    train, val = split_train_val(samples, 0.1, seed=42)
    assert len(val) == 2 and len(train) == 18
    assert {s.key for s in train}.isdisjoint({s.key for s in val})
    assert {s.key for s in train} | {s.key for s in val} == {s.key for s in samples}
    assert split_train_val(samples, 0.1, seed=42) == (train, val)
    # Independent of list order; train keeps list order.
    shuffled_train, shuffled_val = split_train_val(samples[::-1], 0.1, seed=42)
    assert {s.key for s in shuffled_val} == {s.key for s in val}
    assert [s.key for s in train] == sorted(s.key for s in train)
    # Another seed picks another validation part.
    vals = [split_train_val(samples, 0.25, seed=k)[1] for k in range(5)]
    assert len({frozenset(s.key for s in val) for val in vals}) > 1
    assert len(split_train_val(samples, 0.25)[1]) == 5


def test_split_keeps_at_least_one_validation_sample():
    train, val = split_train_val(samples_named("a", "b", "c"), 0.1)
    assert len(val) == 1 and len(train) == 2


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match=re.escape(f"Received: val_fraction={fraction}")):
        split_train_val(samples_named("a", "b"), fraction)


def test_group_of_is_the_first_five_digits():
    assert group_of("20085000") == "20085"
    assert group_of("00041123") == "00041"


def test_split_by_groups_keeps_whole_groups_apart():
    keys = ["20085000", "44000001", "20085001", "13000000", "44000000", "77000005", "13000001"]
    samples = samples_named(*keys)
    train, val = split_by_groups(samples, ["44000", "13000"])
    # Every pair of a validation group is in val, none in train; both keep input order.
    assert [s.key for s in val] == ["44000001", "13000000", "44000000", "13000001"]
    assert [s.key for s in train] == ["20085000", "20085001", "77000005"]
    assert {group_of(s.key) for s in train}.isdisjoint({group_of(s.key) for s in val})
    # The default holds out VAL_GROUPS.
    train, val = split_by_groups(samples)
    assert {group_of(s.key) for s in val} == {"44000", "77000"} <= set(VAL_GROUPS)
    assert not {group_of(s.key) for s in train} & set(VAL_GROUPS)


def test_split_by_groups_raises_without_a_validation_sample():
    samples = samples_named("20085000", "20085001")
    with pytest.raises(ValueError, match=r"no sample belongs to the validation groups \['99999'\]"):
        split_by_groups(samples, ["99999"])
    with pytest.raises(ValueError, match="no sample belongs"):
        split_by_groups(samples)  # none of VAL_GROUPS
    with pytest.raises(ValueError, match="no sample belongs"):
        split_by_groups([], ["20085"])


def test_split_by_groups_on_a_two_group_folder(tmp_path):
    data = write_deeppcb_folder(tmp_path / "data", n_pairs=2, seed=SEED, size=SIZE)
    write_deeppcb_folder(data, n_pairs=1, seed=SEED + 10, size=SIZE, group="00002")
    samples = read_split(data)
    assert [s.key for s in samples] == ["00001000", "00001001", "00002000"]
    train, val = split_by_groups(samples, ["00002"])
    assert [s.key for s in train] == ["00001000", "00001001"]
    assert [s.key for s in val] == ["00002000"]
    assert val[0].annotation_path.parent.name == "00002_not"
    board = make_board(seed=SEED + 10, size=SIZE)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in parse_annotations(val[0].annotation_path)] == [
        d.bbox for d in board.defects
    ]


def test_load_arrays_reuses_the_cache(tmp_path):
    data = write_deeppcb_folder(tmp_path / "data", n_pairs=2, seed=SEED, size=SIZE)
    samples = read_split(data)
    cache = tmp_path / "cache" / "arrays.npz"
    images, masks, boxes = load_arrays(samples, cache=cache)
    assert cache.is_file()
    assert images.shape == masks.shape == (2, SIZE, SIZE)
    assert images.dtype == masks.dtype == np.uint8
    image0, mask0, boxes0 = load_sample(samples[0])
    np.testing.assert_array_equal(images[0], image0)
    np.testing.assert_array_equal(masks[0], mask0)
    assert boxes[0] == boxes0

    # With the images gone, only the cache can supply the pixels.
    for s in samples:
        s.test_path.unlink()
        s.template_path.unlink()
    cached_images, cached_masks, cached_boxes = load_arrays(samples, cache=cache)
    np.testing.assert_array_equal(cached_images, images)
    np.testing.assert_array_equal(cached_masks, masks)
    assert cached_boxes == boxes

    # A cache made for other samples is not used.
    with pytest.raises(OSError, match="cannot read image"):
        load_arrays(samples[:1], cache=cache)


# --- the real data, where present -------------------------------------------------------------


@pytest.mark.data
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"DeepPCB data not present at {REAL_DATA}")
def test_real_split_holds_the_validation_groups_and_their_masks_stay_in_the_boxes():
    samples = read_split(REAL_DATA)
    train, val = split_by_groups(samples)
    assert {group_of(s.key) for s in val} == set(VAL_GROUPS)
    assert {group_of(s.key) for s in train}.isdisjoint(VAL_GROUPS)
    assert len(train) + len(val) == len(samples)
    for sample in val[:: max(1, len(val) // 3)][:3]:
        image, mask, boxes = load_sample(sample)
        assert image.shape == mask.shape
        inside = np.zeros_like(mask, dtype=bool)
        for b in boxes:
            inside[b.y1 : b.y2, b.x1 : b.x2] = True
            assert np.any(mask[b.y1 : b.y2, b.x1 : b.x2] == b.label), (sample.key, b)
        assert not mask[~inside].any(), sample.key
        # Registered: defects are small parts of their boxes, not the filled boxes.
        assert np.count_nonzero(mask) < 0.5 * np.count_nonzero(inside), sample.key
