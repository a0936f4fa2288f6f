"""Tests of ``training.synth``, the synthetic DeepPCB-style board generator."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from training.synth import (
    CLASS_NAMES,
    DEFECT_SPACING,
    SyntheticBoard,
    SyntheticDefect,
    encode,
    make_board,
    plain_board,
    write_deeppcb_folder,
)

ROOT = Path(__file__).resolve().parents[2]
# Kinds that take copper away (the rest add it).
REMOVES_COPPER = {"open", "mousebite", "pin_hole"}


@pytest.fixture(scope="module")
def board() -> SyntheticBoard:
    """The default board: 640 x 640, one defect of each kind."""
    return make_board(seed=0)


def _copper(image: np.ndarray) -> np.ndarray:
    return (image < 128).astype(np.uint8)


def _components(binary: np.ndarray) -> np.ndarray:
    return cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)[1]


def _box_slice(defect: SyntheticDefect) -> tuple[slice, slice]:
    x0, y0, x1, y1 = defect.bbox
    return slice(y0, y1), slice(x0, x1)


def test_class_names_are_the_shared_list() -> None:
    # One list for synth, the data reader and the model, so they cannot drift apart.
    import pcb_inspect.classes

    assert CLASS_NAMES is pcb_inspect.classes.CLASS_NAMES


def test_module_does_not_import_tensorflow() -> None:
    code = (
        "import sys, training.synth; "
        "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shapes_and_dtypes(board: SyntheticBoard) -> None:
    for array in (board.image, board.template, board.mask):
        assert array.shape == (640, 640) and array.dtype == np.uint8
    assert int(board.mask.max()) == 6
    board_rect = make_board(seed=1, size=(200, 320), n_defects=2)
    assert board_rect.image.shape == board_rect.mask.shape == (200, 320)


def test_same_seed_same_bytes_and_different_seeds_differ() -> None:
    a, b = make_board(seed=5, size=256), make_board(seed=5, size=256)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.template.tobytes() == b.template.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()
    assert a.defects == b.defects
    assert encode(a.image) == encode(b.image)
    c = make_board(seed=6, size=256)
    assert c.template.tobytes() != a.template.tobytes()
    assert c.defects != a.defects


def test_binarised_dark_copper_on_light_substrate(board: SyntheticBoard) -> None:
    for image in (board.image, board.template):
        assert np.mean((image < 40) | (image > 215)) > 0.95
        copper_share = float(np.mean(image < 128))
        # DeepPCB crops show roughly 10-30 % copper; substrate dominates.
        assert 0.08 < copper_share < 0.45, copper_share
    assert int(board.template[board.template < 128].max()) <= 30
    assert int(board.template[board.template >= 128].min()) >= 230


def test_every_class_present_once_with_a_tight_box(board: SyntheticBoard) -> None:
    assert sorted(d.class_name for d in board.defects) == sorted(CLASS_NAMES)
    for defect in board.defects:
        assert defect.label == CLASS_NAMES.index(defect.class_name) + 1
        ys, xs = np.nonzero(board.mask == defect.label)
        assert defect.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_mask_marks_exactly_the_changed_pixels(board: SyntheticBoard) -> None:
    changed = board.image != board.template
    np.testing.assert_array_equal(changed, board.mask > 0)
    assert not board.mask[board.image == board.template].any()
    for defect in board.defects:
        box = _box_slice(defect)
        np.testing.assert_array_equal(board.mask[box] == defect.label, changed[box])
        # Copper went the way the kind says: gone for open/mousebite/pin hole, added otherwise.
        was_copper = board.template[box][changed[box]] < 128
        assert was_copper.all() if defect.class_name in REMOVES_COPPER else not was_copper.any()


def test_defects_do_not_overlap_and_stay_on_the_board(board: SyntheticBoard) -> None:
    boxes = [d.bbox for d in board.defects]
    for i, (ax0, ay0, ax1, ay1) in enumerate(boxes):
        assert 0 < ax0 < ax1 < 640 and 0 < ay0 < ay1 < 640
        for bx0, by0, bx1, by1 in boxes[i + 1 :]:
            apart_x = ax1 + DEFECT_SPACING <= bx0 or bx1 + DEFECT_SPACING <= ax0
            apart_y = ay1 + DEFECT_SPACING <= by0 or by1 + DEFECT_SPACING <= ay0
            assert apart_x or apart_y


def test_each_kind_looks_like_its_name(board: SyntheticBoard) -> None:
    before = _copper(board.template)
    comp_before = _components(before)
    for defect in board.defects:
        pixels = board.mask == defect.label
        # Judge each defect alone: another defect on the same trace (an open elsewhere, a
        # short to a neighbour) would otherwise change the connectivity being checked.
        after = before ^ pixels.astype(np.uint8)
        comp_after = _components(after)
        if defect.class_name in ("open", "mousebite"):
            # The template trace under the defect, and how many pieces of it are left.
            trace = comp_before[pixels][0]
            pieces = len(np.unique(comp_after[(comp_before == trace) & (after > 0)]))
            assert pieces == (2 if defect.class_name == "open" else 1), defect
        elif defect.class_name in ("short", "spur"):
            # A short joins two separate pieces of the template's copper; a spur hangs off one.
            grown = comp_after[pixels][0]
            joined = len(np.unique(comp_before[(comp_after == grown) & (before > 0)]))
            assert joined >= 2 if defect.class_name == "short" else joined == 1, defect
        elif defect.class_name == "spurious_copper":
            # An island: its piece of copper is exactly the new pixels.
            np.testing.assert_array_equal(comp_after == comp_after[pixels][0], pixels)
        else:
            # A pin hole is enclosed by copper: its piece of substrate is exactly the hole.
            holes = _components(1 - after)
            np.testing.assert_array_equal(holes == holes[pixels][0], pixels)


def test_chosen_classes_are_cycled_to_n_defects() -> None:
    result = make_board(seed=2, size=320, n_defects=4, defect_classes=["short", "pin_hole"])
    assert [d.class_name for d in result.defects] == ["short", "pin_hole"] * 2
    for defect in result.defects:
        box = _box_slice(defect)
        assert (result.mask[box] == defect.label).any()
    assert set(np.unique(result.mask)) == {0, 2, 6}


def test_no_defects_gives_the_template() -> None:
    clean = make_board(seed=3, size=256, n_defects=0)
    assert clean.defects == []
    np.testing.assert_array_equal(clean.image, clean.template)
    assert not clean.mask.any()


def test_jpeg_quality_compresses_but_keeps_the_truth() -> None:
    exact = make_board(seed=4, size=256)
    lossy = make_board(seed=4, size=256, jpeg_quality=75)
    np.testing.assert_array_equal(lossy.mask, exact.mask)
    assert lossy.defects == exact.defects
    assert not np.array_equal(lossy.image, exact.image)
    assert np.mean((lossy.image < 40) | (lossy.image > 215)) > 0.95
    assert np.mean(np.abs(lossy.image.astype(int) - exact.image) > 100) < 0.001


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 32}, "got 32"),
        ({"size": (64, 64, 1)}, r"got \(64, 64, 1\)"),
        ({"n_defects": -1}, "got -1"),
        ({"defect_classes": ["open", "scratch"]}, "scratch"),
        ({"defect_classes": "open"}, "got 'open'"),
        ({"jpeg_quality": 0}, "got 0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_board(**kwargs)  # type: ignore[arg-type]


def test_encode_round_trips() -> None:
    image = make_board(seed=0, size=128, n_defects=0).image
    for fmt in ("PNG", "BMP", "TIFF"):
        with Image.open(io.BytesIO(encode(image, fmt))) as decoded:
            assert decoded.format == fmt
            np.testing.assert_array_equal(np.asarray(decoded), image)
    assert encode(image, "JPEG", quality=90)[:3] == b"\xff\xd8\xff"


def test_write_deeppcb_folder_layout(tmp_path: Path) -> None:
    root = write_deeppcb_folder(tmp_path / "deeppcb", n_pairs=2, seed=7, size=256)
    assert root == tmp_path / "deeppcb"
    data = root / "PCBData"
    lines = (data / "trainval.txt").read_text().splitlines()
    assert lines == [
        "group00001/00001/00001000.jpg group00001/00001_not/00001000.txt",
        "group00001/00001/00001001.jpg group00001/00001_not/00001001.txt",
    ]
    for i, line in enumerate(lines):
        image_rel, note_rel = line.split()
        stem = data / image_rel.removesuffix(".jpg")
        images = {}
        for kind in ("test", "temp"):
            with Image.open(f"{stem}_{kind}.jpg") as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "L", (256, 256))
                images[kind] = np.asarray(im)
        expected = make_board(seed=7 + i, size=256)
        rows = [line.split() for line in (data / note_rel).read_text().splitlines()]
        assert [tuple(int(v) for v in row) for row in rows] == [(*d.bbox, d.label) for d in
                                                                 expected.defects]
        # The JPEGs still show each defect: test and template differ strongly inside its box.
        for x0, y0, x1, y1, _ in ([int(v) for v in row] for row in rows):
            diff = np.abs(images["test"][y0:y1, x0:x1].astype(int) - images["temp"][y0:y1, x0:x1])
            assert diff.max() > 150


def test_command_line(tmp_path: Path) -> None:
    out, mask_out = tmp_path / "board.png", tmp_path / "mask.png"
    result = subprocess.run(
        [sys.executable, "-m", "training.synth", "--out", str(out), "--seed", "3",
         "--size", "256", "--mask-out", str(mask_out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    expected = make_board(seed=3, size=256)
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im), expected.image)
    with Image.open(mask_out) as im:
        np.testing.assert_array_equal(np.asarray(im), expected.mask)
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(p["class"], p["label"], tuple(p["bbox"])) for p in printed] == [
        (d.class_name, d.label, d.bbox) for d in expected.defects
    ]


def test_command_line_draws_a_panel(tmp_path: Path) -> None:
    out, golden = tmp_path / "panel.png", tmp_path / "golden.png"
    result = subprocess.run(
        [sys.executable, "-m", "training.synth", "--out", str(out), "--seed", "3",
         "--size", "128", "--boards", "2", "--n-defects", "2,1", "--template-out", str(golden)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    left, right = make_board(seed=3, size=128, n_defects=2), make_board(seed=4, size=128,
                                                                        n_defects=1)
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im), np.hstack([left.image, right.image]))
    with Image.open(golden) as im:
        np.testing.assert_array_equal(np.asarray(im), np.hstack([left.template, right.template]))
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    # The right board's boxes are shifted by the left board's width.
    assert [(p["board"], p["class"], p["bbox"]) for p in printed] == [
        *((1, d.class_name, list(d.bbox)) for d in left.defects),
        *((2, d.class_name, [d.bbox[0] + 128, d.bbox[1], d.bbox[2] + 128, d.bbox[3]])
          for d in right.defects),
    ]


def test_command_line_reports_a_bad_size(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training.synth", "--out", str(tmp_path / "b.png"),
         "--size", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "got 10" in result.stderr


# --- plain boards (what the service tests upload) ---------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(64, 72), (17, 9), (1, 1), (300, 200)])
def test_plain_board_is_a_defect_free_board_of_any_size(height: int, width: int) -> None:
    pixels = plain_board(height, width, seed=3)
    assert (pixels.shape, pixels.dtype) == ((height, width), np.uint8)
    assert pixels.flags.c_contiguous
    if min(height, width) >= 64:
        # The template of the same layout: no defects drawn.
        drawn = make_board(seed=3, size=(height, width), n_defects=0)
        np.testing.assert_array_equal(pixels, drawn.template)
        assert 0 < _copper(pixels).mean() < 0.6


def test_plain_boards_of_other_seeds_differ_and_a_seed_repeats() -> None:
    boards = [plain_board(64, 64, seed) for seed in (1, 2, 3, 99)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(boards) for b in boards[i + 1:])
    np.testing.assert_array_equal(plain_board(64, 64, 2), boards[1])


def test_plain_board_refuses_an_empty_size() -> None:
    with pytest.raises(ValueError, match="got 0 x 5"):
        plain_board(0, 5)


def test_encode_keeps_the_mode_of_a_pillow_image() -> None:
    palette = Image.fromarray(plain_board(32, 32)).convert("P")
    decoded = Image.open(io.BytesIO(encode(palette, "PNG", transparency=0)))
    assert decoded.mode == "P" and decoded.info.get("transparency") == 0
