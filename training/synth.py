"""Synthetic boards in DeepPCB's style, for tests, demos, README pictures and benchmarks.

The project's one board generator. The service never imports it, and ``.dockerignore`` leaves
it out of the runtime image.

The real DeepPCB data must never be committed, so everything that needs a board without it
draws one here. The look follows DeepPCB's binarised scans: 640 x 640 8-bit grayscale at about
48 px/mm, copper (traces, pads, vias) dark near 0-30 and substrate light near 230-255.

A board is laid out from *units* (buses of parallel traces with 45/90 degree bends ending in
pads or vias, rows of SMD pads with fan-out traces, vias, large pads) kept a clearance apart,
then up to six kinds of defect are drawn into a copy of it:

====  ===================  =====================================================
type  name                 what is drawn
====  ===================  =====================================================
1     ``open``             a gap cut right through a trace
2     ``short``            a copper bridge from a trace to neighbouring copper
3     ``mousebite``        one to three small bites out of a trace's edge
4     ``spur``             a thin copper protrusion from a trace's edge
5     ``spurious_copper``  an isolated copper blob on bare substrate
6     ``pin_hole``         a small light hole inside copper
====  ===================  =====================================================

Guarantees, for every board: the same arguments give the same bytes; ``mask`` is non-zero
exactly where the copper of ``image`` and ``template`` differ, holding the defect's type
there; each defect's ``bbox`` is the tight box of its mask pixels (exclusive max); and the
boxes of two defects are at least :data:`DEFECT_SPACING` pixels apart.

This module does not import TensorFlow; its :data:`CLASS_NAMES` is the model's, from
:mod:`pcb_inspect.classes`.

Command line, for demos::

    python -m training.synth --out board.png --seed 3 [--size 640] [--mask-out mask.png]
    # a panel of two boards side by side (seeds 3 and 4) and its golden panel
    python -m training.synth --out panel.png --boards 2 --seed 3 --template-out golden.png
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pcb_inspect.classes import CLASS_NAMES

__all__ = [
    "CLASS_NAMES",
    "DEFECT_SPACING",
    "PIXELS_PER_MM",
    "SyntheticBoard",
    "SyntheticDefect",
    "encode",
    "main",
    "make_board",
    "plain_board",
    "write_deeppcb_folder",
]

#: DeepPCB's scan resolution.
PIXELS_PER_MM = 48.0
#: Smallest gap, in pixels, between the boxes of two defects on one board.
DEFECT_SPACING = 8

_MIN_SIDE = 64
_CLEARANCE = 10  # px of substrate kept between separate layout units (~0.2 mm)
_EDGE_MARGIN = 4  # defects keep this far from the image border, so their boxes are whole
_DEFECT_TRIES = 200
_LAYOUT_TRIES = 8
# Edge defects stay this far along a trace from its segment's ends, clear of most bends and
# pads; the checks on each proposal catch the rest.
_SEGMENT_END_MARGIN = 24
_SUBSTRATE = -1  # value of substrate in the owner map


@dataclass(frozen=True)
class SyntheticDefect:
    """One defect drawn on a synthetic board.

    Attributes:
        class_name: One of :data:`CLASS_NAMES`.
        label: Its 1-based type, ``CLASS_NAMES.index(class_name) + 1``.
        bbox: ``(x_min, y_min, x_max, y_max)`` of its mask pixels, maxima exclusive.
    """

    class_name: str
    label: int
    bbox: tuple[int, int, int, int]


# eq=False: a generated __eq__ would compare the arrays and raise ("truth value of an array
# with more than one element is ambiguous").
@dataclass(frozen=True, eq=False)
class SyntheticBoard:
    """A synthetic board, its defect-free template and the ground truth.

    Attributes:
        image: ``(H, W)`` uint8 board with the defects.
        template: ``(H, W)`` uint8 same board without defects.
        mask: ``(H, W)`` uint8 defect type per pixel, 0 where there is none.
        defects: The defects, in the order they were drawn.
    """

    image: np.ndarray
    template: np.ndarray
    mask: np.ndarray
    defects: list[SyntheticDefect]


class _NoRoom(Exception):
    """Raised with a defect's name when a layout has no room for it."""


@dataclass(frozen=True)
class _Segment:
    """A straight stretch of one trace: centreline ends, width and the trace's owner id."""

    p0: np.ndarray
    p1: np.ndarray
    width: int
    owner: int


def make_board(
    seed: int = 0,
    size: int | tuple[int, int] = 640,
    n_defects: int = 6,
    defect_classes: Sequence[str] | None = None,
    jpeg_quality: int | None = None,
) -> SyntheticBoard:
    """Draws a synthetic board with defects, deterministically from ``seed``.

    Args:
        seed: Seed of the numpy random generator; the same arguments give the same bytes.
        size: Side of a square board, or ``(height, width)``; each at least 64 px.
        n_defects: How many defects to draw; 0 gives ``image == template``.
        defect_classes: Which kinds to draw, cycled in the given order until ``n_defects``
            are placed; ``None`` means all of :data:`CLASS_NAMES`. With the defaults every
            kind appears once.
        jpeg_quality: If given, ``image`` and ``template`` are each passed through JPEG at
            this quality (1-100), as DeepPCB's files are. ``mask`` and the boxes still
            describe the copper that changed, not the compression noise.

    Returns:
        The board.

    Raises:
        ValueError: If an argument is out of range, or the defects do not all fit (a board
            too small or too many defects).
    """
    height, width = _check_size(size)
    if isinstance(n_defects, bool) or not isinstance(n_defects, int) or n_defects < 0:
        raise ValueError(f"n_defects must be a non-negative int, got {n_defects!r}")
    classes = tuple(CLASS_NAMES if defect_classes is None else defect_classes)
    if isinstance(defect_classes, str):
        raise ValueError(f"defect_classes must be a sequence of names, got {defect_classes!r}")
    unknown = [c for c in classes if c not in CLASS_NAMES]
    if unknown or (n_defects and not classes):
        raise ValueError(
            f"defect_classes must be names from {CLASS_NAMES}, got {list(classes)!r}"
        )
    if jpeg_quality is not None and not (
        isinstance(jpeg_quality, int) and 1 <= jpeg_quality <= 100
    ):
        raise ValueError(f"jpeg_quality must be None or an int in 1..100, got {jpeg_quality!r}")

    rng = np.random.default_rng(seed)
    plan = [classes[i % len(classes)] for i in range(n_defects)]
    # A layout can leave no room for some defect (no parallel traces for a short, say); a new
    # layout from the same generator usually has it, and keeps the result deterministic.
    for _ in range(_LAYOUT_TRIES):
        layout = _Layout(height, width, rng)
        layout.generate()
        template_copper = layout.owner != _SUBSTRATE
        mask = np.zeros((height, width), np.uint8)
        try:
            defects = [layout.add_defect(name, mask) for name in plan]
        except _NoRoom as exc:
            missing = exc.args[0]
            continue
        break
    else:
        raise ValueError(
            f"could not place a {missing!r} defect on a {height}x{width} board (seed {seed}) "
            f"in {_LAYOUT_TRIES} layouts; expected a larger size or fewer defects"
        )
    copper = layout.owner != _SUBSTRATE

    dark, light = _shading(height, width, rng)
    template = np.where(template_copper, dark, light)
    image = np.where(copper, dark, light)
    if jpeg_quality is not None:
        template = _jpeg_round_trip(template, jpeg_quality)
        image = _jpeg_round_trip(image, jpeg_quality)
    return SyntheticBoard(image=image, template=template, mask=mask, defects=defects)


def plain_board(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A defect-free board of any size, as a ``(height, width)`` uint8 array.

    The template of :func:`make_board` with no defects; a side under 64 px (what the layout
    needs) is cut from a 64 px board. For tests that need a plausible board of a given size
    and never what is on it: it is cheap and PNG-compresses well.

    Raises:
        ValueError: A side below 1.
    """
    if min(height, width) < 1:
        raise ValueError(f"height and width must be >= 1; got {height} x {width}")
    size = (max(height, _MIN_SIDE), max(width, _MIN_SIDE))
    board = make_board(seed=seed, size=size, n_defects=0).image
    return np.ascontiguousarray(board[:height, :width])


def moved(image: np.ndarray, dx: float, dy: float, degrees: float) -> np.ndarray:
    """``image`` moved as a scanner would place it: ``moved(M @ p) = image(p)``, with M the
    rotation by ``degrees`` about the origin plus the shift ``(dx, dy)``; edges replicated.

    What registration must undo: for a template moved so, it reports ``(dx, dy, degrees)``.
    """
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    matrix = np.array([[c, -s, dx], [s, c, dy]], dtype=np.float32)
    h, w = image.shape
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def encode(image: np.ndarray | Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    """Encodes an array or a Pillow image as an image file in memory, with Pillow.

    Args:
        image: ``(H, W)`` uint8 grayscale (or anything ``Image.fromarray`` takes), or a Pillow
            image, whose mode (palette, CMYK, ...) is kept.
        fmt: Pillow format name: ``"PNG"``, ``"JPEG"``, ``"BMP"``, ``"TIFF"``, ...
        **kwargs: Passed to ``Image.save``, e.g. ``quality=90``.

    Returns:
        The file's bytes.
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.ascontiguousarray(image))
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_deeppcb_folder(
    root: Path, n_pairs: int = 4, seed: int = 0, size: int = 640, group: str = "00001"
) -> Path:
    """Writes a tiny dataset in DeepPCB's exact layout.

    Files written, for group ``00001`` (the default ``group``) and pair ``i`` (stem
    ``00001{i:03d}``)::

        root/PCBData/group00001/00001/00001000_test.jpg    board under test
        root/PCBData/group00001/00001/00001000_temp.jpg    its defect-free template
        root/PCBData/group00001/00001_not/00001000.txt     'x1 y1 x2 y2 type' per defect
        root/PCBData/trainval.txt                          one line per pair:
            'group00001/00001/00001000.jpg group00001/00001_not/00001000.txt'

    Boxes are the boards' tight boxes (x2, y2 exclusive); pair ``i`` is
    ``make_board(seed + i, size)``, so it carries one defect of each type. Used to test the
    training and evaluation loaders without the real data.

    Calling it again on the same ``root`` with another ``group`` adds that group: the list
    file keeps the lines of the other groups and lists this group's pairs after them (use
    another ``seed`` for other boards).

    Args:
        root: Folder to write into; created if missing.
        n_pairs: Number of pairs, 1..1000.
        seed: Seed of the first pair.
        size: Side of the square images.
        group: The board group: five digits, the first five of each pair's key.

    Returns:
        ``root``.

    Raises:
        ValueError: If ``n_pairs`` is out of range or ``group`` is not five digits.
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or not 1 <= n_pairs <= 1000:
        raise ValueError(f"n_pairs must be an int in 1..1000, got {n_pairs!r}")
    if not (isinstance(group, str) and len(group) == 5 and group.isascii() and group.isdigit()):
        raise ValueError(f"group must be five digits, got {group!r}")
    root = Path(root)
    data_dir = root / "PCBData"
    image_dir = data_dir / f"group{group}" / group
    note_dir = data_dir / f"group{group}" / f"{group}_not"
    image_dir.mkdir(parents=True, exist_ok=True)
    note_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_pairs):
        stem = f"{group}{i:03d}"
        board = make_board(seed=seed + i, size=size)
        # DeepPCB ships JPEGs; quality 95 keeps the binarised look the loaders rely on.
        (image_dir / f"{stem}_test.jpg").write_bytes(encode(board.image, "JPEG", quality=95))
        (image_dir / f"{stem}_temp.jpg").write_bytes(encode(board.template, "JPEG", quality=95))
        boxes = "".join(
            f"{d.bbox[0]} {d.bbox[1]} {d.bbox[2]} {d.bbox[3]} {d.label}\n" for d in board.defects
        )
        (note_dir / f"{stem}.txt").write_text(boxes)
        lines.append(f"group{group}/{group}/{stem}.jpg group{group}/{group}_not/{stem}.txt\n")
    list_file = data_dir / "trainval.txt"
    if list_file.is_file():
        # Keep the other groups' pairs; this group's are listed afresh.
        others = [
            line + "\n"
            for line in list_file.read_text().splitlines()
            if line.strip() and not line.startswith(f"group{group}/")
        ]
        lines = others + lines
    list_file.write_text("".join(lines))
    return root


# --- layout ----------------------------------------------------------------------------------


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    dims = (size, size) if isinstance(size, int) else size
    if (
        not isinstance(dims, tuple)
        or len(dims) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        or min(dims) < _MIN_SIDE
    ):
        raise ValueError(
            f"size must be an int or a (height, width) tuple of ints, each >= {_MIN_SIDE}; "
            f"got {size!r}"
        )
    return int(dims[0]), int(dims[1])


def _direction(index: int) -> np.ndarray:
    """Unit vector of compass direction ``index`` (0: +x, 2: +y, in 45 degree steps)."""
    angle = (index % 8) * math.pi / 4
    return np.array([math.cos(angle), math.sin(angle)])


def _normal(d: np.ndarray) -> np.ndarray:
    return np.array([-d[1], d[0]])


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _offset_polyline(points: list[np.ndarray], offset: float) -> list[np.ndarray] | None:
    """The polyline shifted ``offset`` px to its left, with mitred corners.

    Returns None where a segment would turn back on itself (too short for the offset), so
    parallel traces of a bus keep their spacing through 45 and 90 degree bends.
    """
    dirs = [(b - a) / np.linalg.norm(b - a) for a, b in zip(points, points[1:], strict=False)]
    normals = [_normal(d) for d in dirs]
    out = [points[0] + offset * normals[0]]
    for i in range(1, len(points) - 1):
        n1, n2 = normals[i - 1], normals[i]
        out.append(points[i] + offset * (n1 + n2) / (1.0 + float(n1 @ n2)))
    out.append(points[-1] + offset * normals[-1])
    for a, b, d in zip(out, out[1:], dirs, strict=False):
        if float((b - a) @ d) < 10.0:
            return None
    return out


class _Layout:
    """The copper of one board as an owner map: -1 substrate, else the id of its feature."""

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.height = height
        self.width = width
        self.rng = rng
        self.owner = np.full((height, width), _SUBSTRATE, np.int32)
        self.segments: list[_Segment] = []
        self.boxes: list[tuple[int, int, int, int]] = []
        self.next_id = 0
        # Pixels within the clearance of any copper, grown as each unit is placed.
        self.keep_out = np.zeros((height, width), bool)
        self.copper_pixels = 0
        # Units are drawn here with small per-unit ids (1, 2, ...; 0 is substrate), then only
        # the unit's bounding box is examined and wiped: far cheaper than full-frame passes.
        self._scratch = np.zeros((height, width), np.uint8)
        self._n_local = 0

    # - units -

    def generate(self) -> None:
        """Lays out units until the copper covers a DeepPCB-like share of the board."""
        target = float(self.rng.uniform(0.14, 0.26))
        # The first few kinds are fixed so every board has parallel traces (for shorts and
        # opens) and wide copper (for pin holes), whatever the dice do later.
        plan = ["bus", "big_pad", "bus", "footprint"]
        failures = 0
        for _ in range(160):
            if not plan and self.copper_pixels >= target * self.height * self.width:
                break
            kind = plan[0] if plan else str(
                self.rng.choice(["bus", "footprint", "via", "big_pad"], p=[0.5, 0.2, 0.15, 0.15])
            )
            placed = self._try_unit(kind)
            if plan:
                failures = 0 if placed else failures + 1
                if placed or failures >= 12:  # after 12 misses, this kind does not fit here
                    plan.pop(0)
                    failures = 0

    def _try_unit(self, kind: str) -> bool:
        canvas = self._scratch
        self._n_local = 0
        segments = {
            "bus": self._draw_bus,
            "footprint": self._draw_footprint,
            "via": self._draw_vias,
            "big_pad": self._draw_big_pad,
        }[kind](canvas)
        x, y, w, h = cv2.boundingRect(canvas)
        local = canvas[y:y + h, x:x + w].copy()
        canvas[y:y + h, x:x + w] = 0
        drawn = local > 0
        # Separate units must not touch: nothing new within the clearance of existing copper.
        if segments is None or drawn.sum() < 150 or np.any(drawn & self.keep_out[y:y + h, x:x + w]):
            return False
        first_id = self.next_id
        self.next_id += self._n_local
        self.owner[y:y + h, x:x + w][drawn] = first_id + local[drawn].astype(np.int32) - 1
        self.copper_pixels += int(drawn.sum())
        c = _CLEARANCE
        grown = cv2.dilate(np.pad(drawn.astype(np.uint8), c), _disk(c)).astype(bool)
        # The grown box may hang over the border; keep the part that is on the board.
        gx0, gy0 = x - c, y - c
        ys, xs = slice(max(0, gy0), min(self.height, y + h + c)), slice(
            max(0, gx0), min(self.width, x + w + c)
        )
        self.keep_out[ys, xs] |= grown[ys.start - gy0:ys.stop - gy0, xs.start - gx0:xs.stop - gx0]
        for seg in segments:
            # Segments were drawn with local ids; give them their board-wide owner.
            self.segments.append(_Segment(seg.p0, seg.p1, seg.width, first_id + seg.owner - 1))
        return True

    def _new_id(self) -> int:
        """A fresh owner id for a defect's added copper."""
        self.next_id += 1
        return self.next_id - 1

    def _local(self) -> int:
        """A fresh per-unit id for the feature about to be drawn (1-based, at most 255)."""
        self._n_local += 1
        return self._n_local

    def _draw_bus(self, canvas: np.ndarray) -> list[_Segment] | None:
        """Parallel traces along a shared route, with staggered pads or vias at the ends."""
        rng = self.rng
        side = min(self.height, self.width)
        # Up to five traces on a full-size board; fewer where a wide bus could not fit.
        k = int(rng.integers(2, 3 + min(3, side // 160))) if rng.random() < 0.8 else 1
        width = int(rng.integers(8, 21))
        gap = int(rng.integers(10, 27))
        pitch = width + gap
        heading = int(rng.integers(0, 4)) * 2 + (1 if rng.random() < 0.2 else 0)
        start = np.array([rng.uniform(0, self.width), rng.uniform(0, self.height)])
        route = [start]
        for s in range(int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))):
            if s:
                heading += int(rng.choice([-2, -1, 1, 2]))
            route.append(route[-1] + rng.uniform(0.15, 0.45) * max(side, 200) * _direction(heading))

        ends = [str(rng.choice(["round", "square", "via", "none"])) for _ in range(2)]
        radius = width // 2 + int(rng.integers(3, max(4, gap - 3)))
        segments = []
        for i in range(k):
            points = _offset_polyline(route, (i - (k - 1) / 2) * pitch)
            if points is None:
                return None
            owner = self._local()
            for end, (tip, prev) in enumerate(((0, 1), (-1, -2))):
                tangent = points[tip] - points[prev]
                tangent /= np.linalg.norm(tangent)
                # Neighbouring pads wider than the pitch would merge: push every other one out.
                if ends[end] != "none" and 2 * radius + 6 > pitch and i % 2:
                    points[tip] = points[tip] + (2 * radius + 8) * tangent
            ipoints = np.array([_pt(p) for p in points], np.int32)
            cv2.polylines(canvas, [ipoints], False, owner, width, cv2.LINE_8)
            for end, tip in enumerate((0, -1)):
                self._draw_end(canvas, ends[end], points[tip], radius, owner)
            segments += [
                _Segment(a, b, width, owner) for a, b in zip(points, points[1:], strict=False)
            ]
        return segments

    def _draw_end(
        self, canvas: np.ndarray, kind: str, centre: np.ndarray, radius: int, owner: int
    ) -> None:
        c = _pt(centre)
        if kind == "round":
            cv2.circle(canvas, c, radius, owner, -1, cv2.LINE_8)
        elif kind == "square":
            cv2.rectangle(
                canvas, (c[0] - radius, c[1] - radius), (c[0] + radius, c[1] + radius), owner, -1
            )
        elif kind == "via":
            cv2.circle(canvas, c, radius, owner, -1, cv2.LINE_8)
            cv2.circle(canvas, c, max(3, radius - 6), 0, -1, cv2.LINE_8)

    def _draw_footprint(self, canvas: np.ndarray) -> list[_Segment] | None:
        """One or two facing rows of SMD pads, each with a fan-out trace."""
        rng = self.rng
        n = int(rng.integers(3, 9))
        along = int(rng.integers(12, 25))  # pad size along the row
        across = int(rng.integers(20, 45))
        pitch = along + int(rng.integers(10, 21))
        body = across + int(rng.integers(30, 120))
        horizontal = rng.random() < 0.5
        u = np.array([1.0, 0.0]) if horizontal else np.array([0.0, 1.0])
        v = _normal(u)
        origin = np.array([rng.uniform(0, self.width), rng.uniform(0, self.height)])
        rows = [(origin, -1.0)] + ([(origin + body * v, 1.0)] if rng.random() < 0.6 else [])
        stub_width = int(rng.integers(8, min(20, along) + 1))
        segments = []
        for row_origin, outward in rows:
            stub = float(rng.uniform(30, 150)) if rng.random() < 0.8 else 0.0
            for j in range(n):
                owner = self._local()
                centre = row_origin + j * pitch * u
                half = (np.abs(u) * along + np.abs(v) * across) / 2
                top_left, bottom_right = _pt(centre - half), _pt(centre + half)
                cv2.rectangle(canvas, top_left, bottom_right, owner, -1)
                if stub:
                    a = centre + outward * (across / 2) * v
                    b = a + outward * stub * v
                    cv2.line(canvas, _pt(a), _pt(b), owner, stub_width, cv2.LINE_8)
                    segments.append(_Segment(a, b, stub_width, owner))
        return segments

    def _draw_vias(self, canvas: np.ndarray) -> list[_Segment]:
        rng = self.rng
        radius = int(rng.integers(10, 19))
        step = 2 * radius + int(rng.integers(12, 30))
        d = _direction(int(rng.integers(0, 8)))
        origin = np.array([rng.uniform(0, self.width), rng.uniform(0, self.height)])
        for j in range(int(rng.integers(1, 5))):
            self._draw_end(canvas, "via", origin + j * step * d, radius, self._local())
        return []

    def _draw_big_pad(self, canvas: np.ndarray) -> list[_Segment]:
        rng = self.rng
        side = min(self.height, self.width)
        owner = self._local()
        centre = np.array([rng.uniform(0, self.width), rng.uniform(0, self.height)])
        c = _pt(centre)
        if rng.random() < 0.5:
            radius = int(rng.integers(25, max(26, min(71, side // 6))))
            cv2.circle(canvas, c, radius, owner, -1, cv2.LINE_8)
            if rng.random() < 0.5:
                cv2.circle(canvas, c, int(rng.integers(8, radius // 2 + 1)), 0, -1)
        else:
            half_w, half_h = (int(x) for x in rng.integers(25, max(26, min(80, side // 5)), 2))
            cv2.rectangle(canvas, (c[0] - half_w, c[1] - half_h), (c[0] + half_w, c[1] + half_h),
                          owner, -1)
        return []

    # - defects -

    def add_defect(self, name: str, mask: np.ndarray) -> SyntheticDefect:
        """Draws one defect of kind ``name``, marks it in ``mask`` and returns it."""
        propose = {
            "open": self._propose_open,
            "short": self._propose_short,
            "mousebite": self._propose_mousebite,
            "spur": self._propose_spur,
            "spurious_copper": self._propose_spurious_copper,
            "pin_hole": self._propose_pin_hole,
        }[name]
        label = CLASS_NAMES.index(name) + 1
        copper = self.owner != _SUBSTRATE
        for _ in range(_DEFECT_TRIES):
            proposal = propose(copper)
            if proposal is None:
                continue
            shape, add = proposal
            changed = shape & (~copper if add else copper)
            ys, xs = np.nonzero(changed)
            if len(xs) < 4:
                continue
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if not self._box_is_free(box):
                continue
            self.owner[changed] = self._new_id() if add else _SUBSTRATE
            mask[changed] = label
            self.boxes.append(box)
            return SyntheticDefect(class_name=name, label=label, bbox=box)
        raise _NoRoom(name)

    def _box_is_free(self, box: tuple[int, int, int, int]) -> bool:
        x0, y0, x1, y1 = box
        if x0 < _EDGE_MARGIN or y0 < _EDGE_MARGIN:
            return False
        if x1 > self.width - _EDGE_MARGIN or y1 > self.height - _EDGE_MARGIN:
            return False
        m = DEFECT_SPACING
        return all(
            x1 + m <= bx0 or bx1 + m <= x0 or y1 + m <= by0 or by1 + m <= y0
            for bx0, by0, bx1, by1 in self.boxes
        )

    def _trace_point(
        self, end_margin: float
    ) -> tuple[_Segment, np.ndarray, np.ndarray, np.ndarray] | None:
        """A random point on a trace's centreline, away from the segment's ends and the border.

        Returns the segment, the point, the unit direction along it and a unit normal (random
        side), or None when there is no segment long enough.
        """
        rng = self.rng
        edge = _EDGE_MARGIN + 8
        inner = (edge, edge, self.width - 2 * edge, self.height - 2 * edge)
        choices = []
        for seg in self.segments:
            ok, c0, c1 = cv2.clipLine(inner, _pt(seg.p0), _pt(seg.p1))
            length = math.dist(c0, c1) if ok else 0.0
            if length > 2 * end_margin + 4:
                choices.append((seg, np.array(c0, float), np.array(c1, float), length))
        if not choices:
            return None
        weights = np.array([c[3] for c in choices])
        seg, a, b, length = choices[int(rng.choice(len(choices), p=weights / weights.sum()))]
        # Clipping moves the ends only along the line, but the true ends (pads, bends) may lie
        # inside the clip box, so keep the margin from the segment's real ends as well.
        d = (seg.p1 - seg.p0) / np.linalg.norm(seg.p1 - seg.p0)
        t = float(rng.uniform(end_margin, length - end_margin))
        point = a + t * (b - a) / length
        if min(np.linalg.norm(point - seg.p0), np.linalg.norm(point - seg.p1)) < end_margin:
            return None
        n = _normal(d) * (1 if rng.random() < 0.5 else -1)
        return seg, point, d, n

    def _canvas(self) -> np.ndarray:
        return np.zeros((self.height, self.width), np.uint8)

    def _only_owner(self, shape: np.ndarray, copper: np.ndarray, owner: int) -> bool:
        """True when the copper under ``shape`` all belongs to ``owner``."""
        return not np.any(shape & copper & (self.owner != owner))

    def _propose_open(self, copper: np.ndarray) -> tuple[np.ndarray, bool] | None:
        gap = int(self.rng.integers(4, 16))
        found = self._trace_point(end_margin=gap + 20)
        if found is None:
            return None
        seg, p, d, n = found
        half_across = seg.width / 2 + 3
        corners = [p + sa * gap / 2 * d + sb * half_across * n for sa, sb in
                   ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        shape = self._canvas()
        cv2.fillPoly(shape, [np.array([_pt(c) for c in corners], np.int32)], 1, cv2.LINE_8)
        band = shape.astype(bool)
        if not self._only_owner(band, copper, seg.owner):
            return None
        # The cut must sever the trace: the centreline just before and after the gap must end
        # up in different pieces of copper, looked at in a window around the cut.
        r = gap + seg.width + 12
        x, y = _pt(p)
        y0, x0 = max(0, y - r), max(0, x - r)
        window = (copper & ~band)[y0:y + r + 1, x0:x + r + 1].astype(np.uint8)
        _, labels = cv2.connectedComponents(window, connectivity=8)
        before, after = (_pt(p + s * (gap / 2 + 3) * d) for s in (-1, 1))
        lb = labels[before[1] - y0, before[0] - x0]
        la = labels[after[1] - y0, after[0] - x0]
        if lb == 0 or la == 0 or lb == la:
            return None
        return band, False

    def _propose_short(self, copper: np.ndarray) -> tuple[np.ndarray, bool] | None:
        found = self._trace_point(end_margin=_SEGMENT_END_MARGIN)
        if found is None:
            return None
        seg, p, d, n = found
        # Walk out along the normal, across this trace's own edge and the substrate beyond,
        # to the first copper; it must belong to something else and lie a real gap away.
        hit = None
        left_trace_at = None
        for dist in range(1, seg.width // 2 + 41):
            x, y = _pt(p + dist * n)
            if not (0 <= x < self.width and 0 <= y < self.height):
                return None
            if not copper[y, x]:
                left_trace_at = dist if left_trace_at is None else left_trace_at
            elif left_trace_at is not None:
                hit = (dist, int(self.owner[y, x]))
                break
        if hit is None or left_trace_at is None or hit[1] == seg.owner:
            return None
        if hit[0] - left_trace_at < 4:
            return None
        thickness = int(self.rng.integers(3, 9))
        a = p + (seg.width / 2 - 2) * n
        b = p + (hit[0] + 3) * n + float(self.rng.integers(-4, 5)) * d
        shape = self._canvas()
        cv2.line(shape, _pt(a), _pt(b), 1, thickness, cv2.LINE_8)
        bridge = shape.astype(bool)
        if not np.any(bridge & (self.owner == hit[1])):
            return None
        return bridge, True

    def _propose_mousebite(self, copper: np.ndarray) -> tuple[np.ndarray, bool] | None:
        found = self._trace_point(end_margin=_SEGMENT_END_MARGIN)
        if found is None:
            return None
        seg, p, d, n = found
        # Bites no deeper than just under half the width, so the trace stays connected.
        radius = int(self.rng.integers(3, max(3, min(6, seg.width // 2 - 1)) + 1))
        shape = self._canvas()
        for j in range(int(self.rng.integers(1, 4))):
            centre = p + (seg.width / 2) * n + j * 1.7 * radius * d
            cv2.circle(shape, _pt(centre), radius, 1, -1, cv2.LINE_8)
        bites = shape.astype(bool)
        if not self._only_owner(bites, copper, seg.owner):
            return None
        return bites, False

    def _propose_spur(self, copper: np.ndarray) -> tuple[np.ndarray, bool] | None:
        found = self._trace_point(end_margin=_SEGMENT_END_MARGIN)
        if found is None:
            return None
        seg, p, d, n = found
        length = float(self.rng.integers(6, 21))
        tilt = float(self.rng.uniform(-0.6, 0.6))  # up to ~35 degrees off the normal
        u = math.cos(tilt) * n + math.sin(tilt) * d
        a = p + (seg.width / 2 - 1) * n
        b = a + (length + 1) * u
        shape = self._canvas()
        cv2.line(shape, _pt(a), _pt(b), 1, int(self.rng.integers(2, 5)), cv2.LINE_8)
        spur = shape.astype(bool)
        # A spur that reaches other copper would be a short: keep a few pixels clear of it.
        grown = cv2.dilate(shape, _disk(4)).astype(bool)
        if not self._only_owner(grown, copper, seg.owner):
            return None
        return spur, True

    def _propose_spurious_copper(self, copper: np.ndarray) -> tuple[np.ndarray, bool] | None:
        rng = self.rng
        axes = (int(rng.integers(3, 11)), int(rng.integers(2, 8)))
        x = int(rng.integers(_EDGE_MARGIN + 12, self.width - _EDGE_MARGIN - 12))
        y = int(rng.integers(_EDGE_MARGIN + 12, self.height - _EDGE_MARGIN - 12))
        shape = self._canvas()
        cv2.ellipse(shape, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1, cv2.LINE_8)
        if rng.random() < 0.5:  # a second lobe makes the blob irregular, like real splatter
            dx, dy = (int(v) for v in rng.integers(-axes[0], axes[0] + 1, size=2))
            cv2.circle(shape, (x + dx, y + dy), max(2, axes[1] - 1), 1, -1, cv2.LINE_8)
        # Isolated: at least 8 px of substrate all around.
        r = max(axes) + 12
        window = copper[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
        grown = cv2.dilate(shape[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1], _disk(8))
        if np.any(grown.astype(bool) & window):
            return None
        return shape.astype(bool), True

    def _propose_pin_hole(self, copper: np.ndarray) -> tuple[np.ndarray, bool] | None:
        rng = self.rng
        radius = int(rng.integers(2, 6))
        # Candidates: centres whose disk of radius + 3 is all copper, so the hole is enclosed.
        solid = cv2.erode(copper.astype(np.uint8), _disk(radius + 3))
        lo = _EDGE_MARGIN + radius + 1
        solid[:lo] = 0
        solid[:, :lo] = 0
        solid[self.height - lo:] = 0
        solid[:, self.width - lo:] = 0
        ys, xs = np.nonzero(solid)
        if len(xs) == 0:
            return None
        i = int(rng.integers(0, len(xs)))
        shape = self._canvas()
        cv2.circle(shape, (int(xs[i]), int(ys[i])), radius, 1, -1, cv2.LINE_8)
        return shape.astype(bool), False


# --- pixels ---------------------------------------------------------------------------------


def _shading(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gray levels for copper (0-25) and substrate (235-255) with a scanner's slow unevenness.

    The variation is smooth rather than per-pixel noise, so PNGs of a board stay small; both
    the board and its template use the same levels, so they differ only where copper does.
    """

    def field() -> np.ndarray:
        coarse = rng.uniform(0.0, 1.0, size=(4, 4)).astype(np.float32)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(smooth, 0.0, 1.0)

    dark = np.rint(field() * 25).astype(np.uint8)
    light = (255 - np.rint(field() * 20)).astype(np.uint8)
    return dark, light


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    with Image.open(io.BytesIO(encode(image, "JPEG", quality=quality))) as decoded:
        return np.array(decoded.convert("L"), dtype=np.uint8)


# --- command line ---------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers (e.g. 3,0), got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Writes one synthetic board (and optionally its mask) and prints its defects as JSON.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The exit status, 0 on success.
    """
    parser = argparse.ArgumentParser(
        prog="python -m training.synth",
        description="Draw a synthetic PCB board in DeepPCB's style, with defects.",
    )
    parser.add_argument("--out", type=Path, required=True, help="image file to write (.png, .jpg)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, default=640, help="side in pixels (default 640)")
    parser.add_argument("--n-defects", type=_counts, default=[6],
                        help="defects to draw per board: one number for every board, or one "
                             "per board, comma-separated (e.g. 3,0; default 6)")
    parser.add_argument("--boards", type=int, default=1,
                        help="a panel of this many boards side by side, seeds seed, seed+1, ... "
                             "(default 1); each defect line says its board's position")
    parser.add_argument("--template-out", type=Path, help="also write the defect-free board")
    parser.add_argument(
        "--mask-out", type=Path, help="also write the mask: a PNG of defect types 0..6 per pixel"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.boards <= 16:
        parser.error(f"--boards must be 1 to 16, got {args.boards}")
    counts = args.n_defects * args.boards if len(args.n_defects) == 1 else args.n_defects
    if len(counts) != args.boards:
        parser.error(f"--n-defects: expected one number or {args.boards} (one per board), "
                     f"got {len(counts)}")
    try:
        boards = [make_board(seed=args.seed + i, size=args.size, n_defects=n)
                  for i, n in enumerate(counts)]
    except ValueError as exc:
        parser.error(str(exc))
    Image.fromarray(np.hstack([b.image for b in boards])).save(args.out)
    if args.template_out:
        Image.fromarray(np.hstack([b.template for b in boards])).save(args.template_out)
    if args.mask_out:
        # PNG, whatever the suffix says: a lossy format would corrupt the class ids.
        Image.fromarray(np.hstack([b.mask for b in boards])).save(args.mask_out, format="PNG")
    for position, board in enumerate(boards, start=1):
        dx = (position - 1) * board.image.shape[1]
        for defect in board.defects:
            x0, y0, x1, y1 = defect.bbox
            line = {"class": defect.class_name, "label": defect.label,
                    "bbox": [x0 + dx, y0, x1 + dx, y1]}
            if args.boards > 1:
                line["board"] = position
            print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
