"""DeepPCB-format data: reading the split, deriving pixel masks from boxes, train/val split.

Any folder in DeepPCB's published layout works: a list file of pairs
(``groupG/G/NNNNNNNN.jpg groupG/G_not/NNNNNNNN.txt``), where the ``.jpg`` stands for
``NNNNNNNN_test.jpg`` (the board under test) and ``NNNNNNNN_temp.jpg`` (its defect-free
template), and the ``.txt`` holds one ``x1 y1 x2 y2 type`` line per defect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pcb_inspect.classes import CLASS_NAMES

#: Threshold on |test - template| for "this pixel changed". The scans are binarised (copper
#: near 0, substrate near 255), so a real change is a jump of ~255; JPEG ringing stays < 100.
DIFF_THRESHOLD = 100
#: Opening that tells a real difference from the slivers that JPEG ringing and sub-pixel
#: misalignment leave along copper edges. After registration those slivers are at most ~1 px
#: thick, so a 3x3 cross removes them; the 5x5 ellipse used before registration existed also
#: removed a quarter of the (thin) mousebites.
_SLIVER_KERNEL = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
#: Board groups (board designs) held out for validation: whole designs, since the official
#: test split is mostly made of designs that the training split lacks.
VAL_GROUPS: tuple[str, ...] = ("44000", "50600", "77000")


@dataclasses.dataclass(frozen=True)
class Box:
    """One annotated defect: pixel corners (x2, y2 exclusive) and 1-based DeepPCB type."""

    x1: int
    y1: int
    x2: int
    y2: int
    label: int

    @property
    def class_name(self) -> str:
        """The defect type's name, e.g. ``"short"``."""
        return CLASS_NAMES[self.label - 1]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One DeepPCB pair: the tested image, its template and its annotation file."""

    test_path: Path
    template_path: Path
    annotation_path: Path

    @property
    def key(self) -> str:
        """A stable identifier, e.g. ``"20085000"``."""
        return self.test_path.name.removesuffix("_test.jpg")


def find_list_file(root: Path) -> Path:
    """Finds the pair list of a DeepPCB-format folder.

    Args:
        root: The dataset folder (the one holding ``PCBData`` or the list file itself).

    Returns:
        The path of the list file (``trainval.txt``, ``test.txt`` or the only ``*.txt``).

    Raises:
        FileNotFoundError: When no list file is found.
    """
    root = Path(root)
    if root.is_file():
        return root
    for base in (root, root / "PCBData"):
        for name in ("trainval.txt", "test.txt"):
            if (base / name).is_file():
                return base / name
    raise FileNotFoundError(
        f"No DeepPCB list file (trainval.txt or test.txt) in {root} or {root / 'PCBData'}"
    )


def read_split(root: Path | str) -> list[Sample]:
    """Reads the pairs listed in a DeepPCB-format folder.

    Args:
        root: Dataset folder, or the list file itself.

    Returns:
        The samples, in list order.

    Raises:
        FileNotFoundError: When the list file or a listed image is missing.
        ValueError: When a line of the list file is malformed.
    """
    list_file = find_list_file(Path(root))
    base = list_file.parent
    samples = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"{list_file}:{lineno}: expected 'IMAGE.jpg ANNOTATION.txt', got {line!r}"
            )
        image = base / parts[0]
        stem = image.with_suffix("")
        sample = Sample(
            test_path=stem.with_name(stem.name + "_test.jpg"),
            template_path=stem.with_name(stem.name + "_temp.jpg"),
            annotation_path=base / parts[1],
        )
        for path in (sample.test_path, sample.annotation_path):
            if not path.is_file():
                raise FileNotFoundError(f"{list_file}:{lineno}: {path} does not exist")
        samples.append(sample)
    return samples


def parse_annotations(path: Path | str) -> list[Box]:
    """Parses a DeepPCB annotation file (``x1 y1 x2 y2 type`` a line; commas also accepted).

    Args:
        path: The ``.txt`` file.

    Returns:
        The boxes, with coordinates clipped to be non-negative.

    Raises:
        ValueError: On a malformed line or an unknown type.
    """
    boxes = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}:{lineno}: expected 'x1 y1 x2 y2 type', got {line!r}")
        try:
            x1, y1, x2, y2, label = (int(float(p)) for p in parts)
        except (ValueError, OverflowError):
            raise ValueError(
                f"{path}:{lineno}: expected numbers 'x1 y1 x2 y2 type', got {line!r}"
            ) from None
        if not 1 <= label <= len(CLASS_NAMES):
            raise ValueError(f"{path}:{lineno}: type must be 1..{len(CLASS_NAMES)}, got {label}")
        boxes.append(Box(max(0, x1), max(0, y1), x2, y2, label))
    return boxes


def derive_mask(test: np.ndarray, template: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """Derives a per-pixel class mask from the boxes, the test image and its template.

    The template must already be registered to the test image (:func:`load_sample` does it
    with :func:`app.inference.registration.register`). Inside each box, the defect's pixels are
    the connected components of ``|test - template| > DIFF_THRESHOLD`` that survive a 3x3
    opening somewhere: the opening only decides *which* components are real, and each real
    one is kept whole, so thin parts of a defect (a mousebite's rim, a spur's tip) stay.
    Where nothing survives the opening (a defect thinner than 2 px) the raw difference is
    used; where the images do not differ inside the box at all, the box is filled, so no
    annotation is lost. Overlapping boxes are painted in file order.

    Args:
        test: Grayscale test image, ``(H, W)`` uint8.
        template: Grayscale template registered to it, same shape.
        boxes: The annotated defects.

    Returns:
        ``(H, W)`` uint8 mask: 0 background, k the k-th class (1-based).
    """
    if test.shape != template.shape:
        raise ValueError(
            f"test and template must have the same shape. Received: {test.shape} and "
            f"{template.shape}"
        )
    h, w = test.shape
    mask = np.zeros((h, w), dtype=np.uint8)
    diff = (cv2.absdiff(test, template) > DIFF_THRESHOLD).astype(np.uint8)
    for box in boxes:
        x1, y1 = min(box.x1, w), min(box.y1, h)
        x2, y2 = min(box.x2, w), min(box.y2, h)
        if x2 <= x1 or y2 <= y1:
            continue
        region = diff[y1:y2, x1:x2]
        if not region.any():
            defect = np.ones_like(region, dtype=bool)
        else:
            opened = cv2.morphologyEx(region, cv2.MORPH_OPEN, _SLIVER_KERNEL)
            if opened.any():
                _, labels = cv2.connectedComponents(region, connectivity=8)
                keep = np.unique(labels[opened > 0])
                defect = np.isin(labels, keep[keep > 0])
            else:
                defect = region > 0
        mask[y1:y2, x1:x2][defect] = box.label
    return mask


def group_of(key: str) -> str:
    """The board group (design) of a DeepPCB key: its first five digits."""
    return key[:5]


def split_by_groups(
    samples: Sequence[Sample], val_groups: Sequence[str] = VAL_GROUPS
) -> tuple[list[Sample], list[Sample]]:
    """Splits the samples into training and validation by whole board groups.

    Args:
        samples: All samples.
        val_groups: Groups (first five digits of the key) kept for validation.

    Returns:
        ``(train, val)``, each in input order.

    Raises:
        ValueError: When no sample belongs to the validation groups.
    """
    groups = set(val_groups)
    val = [s for s in samples if group_of(s.key) in groups]
    if not val:
        raise ValueError(f"no sample belongs to the validation groups {sorted(groups)}")
    return [s for s in samples if group_of(s.key) not in groups], val


def read_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Reads a pair's test image and its template, registered to it (both ``(H, W)`` uint8).

    Without a template file, the test image stands in for it (only the boxes are known).

    Raises:
        OSError: When an image cannot be read.
    """
    from app.inference.registration import AlignmentError, register

    test = cv2.imread(str(sample.test_path), cv2.IMREAD_GRAYSCALE)
    if test is None:
        raise OSError(f"cannot read image {sample.test_path}")
    template = cv2.imread(str(sample.template_path), cv2.IMREAD_GRAYSCALE)
    if template is None:
        return test, test.copy()
    try:
        template, _ = register(test, template)
    except AlignmentError:
        # Keep the pair as published rather than dropping its annotations.
        pass
    return test, template


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """Loads one pair and derives its mask (after registering the template).

    Args:
        sample: The pair to load.

    Returns:
        ``(image, mask, boxes)``: the grayscale test image, its class mask, the boxes.

    Raises:
        OSError: When an image cannot be read.
    """
    test, template = read_pair(sample)
    boxes = parse_annotations(sample.annotation_path)
    return test, derive_mask(test, template, boxes), boxes


def split_train_val(
    samples: Sequence[Sample], val_fraction: float = 0.1, seed: int = 42
) -> tuple[list[Sample], list[Sample]]:
    """Splits the samples into a training and a held-apart validation part.

    The split is a seeded shuffle of the sample keys, so it is the same on every machine and
    does not depend on list order.

    Args:
        samples: All samples.
        val_fraction: Fraction kept for validation, in (0, 1).
        seed: Shuffle seed.

    Returns:
        ``(train, val)``.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"`val_fraction` must be in (0, 1). Received: val_fraction={val_fraction}")
    ordered = sorted(samples, key=lambda s: hashlib.sha256(s.key.encode()).hexdigest())
    random.Random(seed).shuffle(ordered)
    n_val = max(1, round(len(ordered) * val_fraction))
    val_keys = {s.key for s in ordered[:n_val]}
    train = [s for s in samples if s.key not in val_keys]
    val = [s for s in samples if s.key in val_keys]
    return train, val


def load_arrays(
    samples: Sequence[Sample], cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray, list[list[Box]]]:
    """Loads all samples into memory, using an ``.npz`` cache when given.

    Args:
        samples: The samples (all of one image size).
        cache: Optional cache file; reused when its key list matches.

    Returns:
        ``(images, masks, boxes)`` with images and masks ``(N, H, W)`` uint8.
    """
    keys = [s.key for s in samples]
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if list(data["keys"]) == keys:
            boxes = [parse_annotations(s.annotation_path) for s in samples]
            return data["images"], data["masks"], boxes
    loaded = [load_sample(s) for s in samples]
    images = np.stack([x[0] for x in loaded])
    masks = np.stack([x[1] for x in loaded])
    boxes = [x[2] for x in loaded]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, keys=np.array(keys), images=images, masks=masks)
    return images, masks, boxes
