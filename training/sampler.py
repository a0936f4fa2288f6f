"""Training crops from a :class:`training.pack.PairPack`, in numpy and OpenCV only.

No TensorFlow: the same sampler feeds training under Keras' JAX backend on a GPU machine
that has no TensorFlow, and under TensorFlow here. It is a ``keras.utils.PyDataset``.

Every batch is a pure function of ``(seed, batch index)``, so a resumed run that starts at
step ``s`` draws new crops (batch ``s``, ``s + 1``, ...) instead of replaying the first ones,
and a run is reproducible whatever the number of worker threads.

What a crop is:

* **class-balanced, defect-centred** with probability ``defect_prob``: a class is drawn
  uniformly among the six, then one of its annotated boxes, and the crop is placed around it
  with a random offset, so rare classes (spurious copper, pin holes) are seen as often as
  opens;
* a **hard negative** with probability ``hard_negative_prob``: centred on a random copper
  edge (trace edges, pads, vias), where single-image false positives come from;
* anywhere on the board otherwise.

Two more sources, off by default:

* **template negatives** (single-image model, ``template_negative_prob``): the crop is cut,
  at a point chosen as above, from the pair's defect-free template instead of the board,
  with an empty mask. Around a defect's place it shows the same copper without the defect,
  the closest negative there is to a positive;
* **synthetic boards** (``synthetic_prob``): the crop comes from one of ``synthetic_boards``
  boards drawn once by :func:`training.synth.make_board` (binarised like the pack), with
  their masks, for designs the dataset lacks.

Augmentations, the same on every array of a crop: a random multiple of 90 degrees and a
flip (layouts have no preferred orientation). Then, per image: the reference is shifted by a
random sub-pixel amount up to ``reference_shift_px`` and turned by up to 0.1 degree, so a
residual misalignment does not read as a defect; each image goes through JPEG at a random
quality with probability ``jpeg_prob`` (the pack's images are binarised; DeepPCB's and a
line's images are JPEG), and a slight blur with probability ``blur_prob``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import keras
import numpy as np

from training.pack import PairPack

_NUM_CLASSES = 6


class CropSampler(keras.utils.PyDataset):
    """Batches of augmented training crops.

    ``batch(i)`` (and ``self[i]``) returns ``(inputs, masks)``: ``inputs`` is the board
    crops ``(B, crop, crop, 1)`` float32, or for ``pair=True`` a list ``[boards,
    references]``; ``masks`` is ``(B, crop, crop)`` int32.

    Args:
        pack: The registered pairs.
        crop: Crop side in pixels (a multiple of 16 for the model).
        batch_size: Crops per batch.
        pair: Also return the registered reference (the golden-board model).
        seed: Base seed; with the batch index it fixes every random choice.
        steps: ``len()`` of the dataset (for ``model.fit``); batches are drawn at
            ``start + index``.
        start: Index of the first batch (a resumed run's step).
        defect_prob: Share of class-balanced defect-centred crops.
        hard_negative_prob: Share of crops centred on a copper edge.
        reference_shift_px: Largest random shift of the reference, per axis.
        jpeg_prob: Probability that an image goes through JPEG (quality 50-95).
        blur_prob: Probability of a slight Gaussian blur per image.
        template_negative_prob: Share of crops cut from the template with an empty mask
            (single-image model only).
        synthetic_prob: Share of crops cut from synthetic boards.
        synthetic_boards: How many synthetic boards to draw (once) for those crops.
    """

    def __init__(
        self,
        pack: PairPack,
        crop: int,
        batch_size: int,
        pair: bool,
        seed: int = 0,
        steps: int = 1000,
        start: int = 0,
        defect_prob: float = 0.6,
        hard_negative_prob: float = 0.25,
        reference_shift_px: float = 1.5,
        jpeg_prob: float = 0.8,
        blur_prob: float = 0.2,
        template_negative_prob: float = 0.0,
        synthetic_prob: float = 0.0,
        synthetic_boards: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _, h, w = pack.boards.shape
        _check_options(
            crop=crop, size=min(h, w), batch_size=batch_size, pair=pair,
            defect_prob=defect_prob, hard_negative_prob=hard_negative_prob,
            reference_shift_px=reference_shift_px, jpeg_prob=jpeg_prob, blur_prob=blur_prob,
            template_negative_prob=template_negative_prob, synthetic_prob=synthetic_prob,
            synthetic_boards=synthetic_boards,
        )
        self.pack = pack
        self.crop = crop
        self.batch_size = batch_size
        self.pair = pair
        self.seed = seed
        self.steps = steps
        self.start = start
        self.defect_prob = defect_prob
        self.hard_negative_prob = hard_negative_prob
        self.reference_shift_px = reference_shift_px
        self.jpeg_prob = jpeg_prob
        self.blur_prob = blur_prob
        self.template_negative_prob = template_negative_prob
        self.synthetic_prob = synthetic_prob
        self._synthetic = _synthetic_boards(synthetic_boards, max(h, w, crop), crop, seed)
        # Boxes by class, as (image, box) index pairs.
        self._by_class: list[np.ndarray] = []
        for label in range(1, _NUM_CLASSES + 1):
            idx = np.argwhere(pack.boxes[..., 4] == label)
            self._by_class.append(idx)
        self._classes = [c for c in range(_NUM_CLASSES) if len(self._by_class[c])]
        self._edges = _edge_samples(pack.boards, seed)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        return self.batch(self.start + index)

    def _centre(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """Picks ``(image, y, x)``: the point the crop is placed around."""
        n, h, w = self.pack.boards.shape
        u = rng.random()
        if u < self.defect_prob and self._classes:
            cls = self._classes[rng.integers(len(self._classes))]
            i, j = self._by_class[cls][rng.integers(len(self._by_class[cls]))]
            x1, y1, x2, y2, _ = self.pack.boxes[i, j]
            return int(i), int((y1 + y2) // 2), int((x1 + x2) // 2)
        i = int(rng.integers(n))
        if u < self.defect_prob + self.hard_negative_prob and len(self._edges[i]):
            y, x = self._edges[i][rng.integers(len(self._edges[i]))]
            return i, int(y), int(x)
        return i, int(rng.integers(h)), int(rng.integers(w))

    def _degrade(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.blur_prob:
            image = cv2.GaussianBlur(image, (3, 3), float(rng.uniform(0.3, 0.8)))
        if rng.random() < self.jpeg_prob:
            quality = int(rng.integers(50, 96))
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                image = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        return image

    def _shift(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.reference_shift_px
        dx, dy = rng.uniform(-s, s, size=2)
        angle = math.radians(float(rng.uniform(-0.1, 0.1)))
        c, sn = math.cos(angle), math.sin(angle)
        cy, cx = (image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2
        matrix = np.array(
            [[c, -sn, cx - c * cx + sn * cy + dx], [sn, c, cy - sn * cx - c * cy + dy]],
            dtype=np.float32,
        )
        return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented crop: ``(board, reference, mask)``, each ``(crop, crop)`` uint8."""
        c = self.crop
        source = rng.random()
        if source < self.synthetic_prob:
            board, ref, mask = self._synthetic_crop(rng)
        else:
            _, h, w = self.pack.boards.shape
            i, y, x = self._centre(rng)
            jitter = rng.integers(-(c // 3), c // 3 + 1, size=2)
            top = int(np.clip(y - c // 2 + jitter[0], 0, h - c))
            left = int(np.clip(x - c // 2 + jitter[1], 0, w - c))
            window = (slice(top, top + c), slice(left, left + c))
            board = self.pack.boards[i][window]
            ref = self.pack.references[i][window]
            mask = self.pack.masks[i][window]
            if source < self.synthetic_prob + self.template_negative_prob:
                board, mask = ref, np.zeros_like(mask)
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        arrays = []
        for a in (board, ref, mask):
            a = np.rot90(a, k)
            arrays.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
        board, ref, mask = arrays
        board = self._degrade(board, rng)
        if self.pair:
            ref = self._degrade(self._shift(ref, rng), rng)
        return board, ref, mask

    def _synthetic_crop(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """A crop of a synthetic board, around one of its defects or anywhere."""
        boards, refs, masks = self._synthetic
        i = int(rng.integers(len(boards)))
        _, h, w = boards.shape
        c = self.crop
        ys, xs = np.nonzero(masks[i])
        if len(ys) and rng.random() < self.defect_prob:
            k = int(rng.integers(len(ys)))
            y, x = int(ys[k]), int(xs[k])
        else:
            y, x = int(rng.integers(h)), int(rng.integers(w))
        top = int(np.clip(y - c // 2 + rng.integers(-(c // 3), c // 3 + 1), 0, h - c))
        left = int(np.clip(x - c // 2 + rng.integers(-(c // 3), c // 3 + 1), 0, w - c))
        window = (slice(top, top + c), slice(left, left + c))
        return boards[i][window], refs[i][window], masks[i][window]

    def batch(self, index: int) -> tuple[Any, np.ndarray]:
        """Batch number ``index`` (absolute: resumed runs pass their step)."""
        rng = np.random.default_rng([self.seed, index])
        crops = [self.sample(rng) for _ in range(self.batch_size)]
        boards = np.stack([b for b, _, _ in crops])[..., None].astype(np.float32)
        masks = np.stack([m for _, _, m in crops]).astype(np.int32)
        if self.pair:
            refs = np.stack([r for _, r, _ in crops])[..., None].astype(np.float32)
            return [boards, refs], masks
        return boards, masks


def _synthetic_boards(count: int, size: int, crop: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` synthetic boards of ``size`` px, binarised as the pack's are, with their
    templates and masks; empty arrays for ``count == 0``."""
    if count < 1:
        empty = np.zeros((0, crop, crop), np.uint8)
        return empty, empty, empty
    from training.pack import BINARY_THRESHOLD
    from training.synth import make_board

    boards, refs, masks = [], [], []
    for k in range(count):
        # Seeds apart from any test's or demo's boards; fewer defects where six do not fit.
        for n_defects in (6, 3, 1):
            try:
                board = make_board(seed=1_000_003 * (seed + 1) + k, size=size,
                                   n_defects=n_defects)
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"cannot draw a synthetic board of {size} px with defects")
        boards.append(np.where(board.image >= BINARY_THRESHOLD, 255, 0).astype(np.uint8))
        refs.append(np.where(board.template >= BINARY_THRESHOLD, 255, 0).astype(np.uint8))
        masks.append(board.mask)
    return np.stack(boards), np.stack(refs), np.stack(masks)


def prefetch(sampler: CropSampler, start: int, workers: int = 4,
             depth: int = 8) -> Iterator[tuple[Any, np.ndarray]]:
    """Yields ``sampler.batch(start)``, ``batch(start + 1)``, ... computed ahead by threads.

    OpenCV and numpy release the GIL in their heavy calls, so threads scale here; processes
    would have to fork a JAX process, which JAX does not support.
    """
    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(sampler.batch, start + k) for k in range(depth)]
        index = start + depth
        while True:
            result = pending.pop(0).result()
            pending.append(pool.submit(sampler.batch, index))
            index += 1
            yield result


def _check_options(
    *, crop: int, size: int, batch_size: int, pair: bool, defect_prob: float,
    hard_negative_prob: float, reference_shift_px: float, jpeg_prob: float, blur_prob: float,
    template_negative_prob: float, synthetic_prob: float, synthetic_boards: int,
) -> None:
    """Refuses :class:`CropSampler` options that cannot work together (``size``: the boards'
    shorter side)."""
    if not 16 <= crop <= size or crop % 16:
        raise ValueError(
            f"`crop` must be a multiple of 16 in [16, {size}]. Received: crop={crop}"
        )
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    probabilities = {"defect_prob": defect_prob, "hard_negative_prob": hard_negative_prob,
                     "jpeg_prob": jpeg_prob, "blur_prob": blur_prob,
                     "template_negative_prob": template_negative_prob,
                     "synthetic_prob": synthetic_prob}
    for name, value in probabilities.items():
        if not 0 <= value <= 1:
            raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value}")
    if not 0 <= defect_prob + hard_negative_prob <= 1:
        raise ValueError(
            "`defect_prob + hard_negative_prob` must be in [0, 1]. Received: "
            f"{defect_prob} + {hard_negative_prob}"
        )
    if template_negative_prob + synthetic_prob > 1:
        raise ValueError(
            "`template_negative_prob + synthetic_prob` must be in [0, 1]. Received: "
            f"{template_negative_prob} + {synthetic_prob}"
        )
    if template_negative_prob and pair:
        raise ValueError(
            "`template_negative_prob` is for the single-image model: the pair model sees "
            f"the template as its reference. Received: template_negative_prob="
            f"{template_negative_prob} with pair=True"
        )
    if synthetic_prob and synthetic_boards < 1:
        raise ValueError(
            "`synthetic_prob` > 0 needs `synthetic_boards` >= 1. Received: "
            f"synthetic_prob={synthetic_prob}, synthetic_boards={synthetic_boards}"
        )
    if not reference_shift_px >= 0:
        raise ValueError(
            "`reference_shift_px` must be >= 0. Received: "
            f"reference_shift_px={reference_shift_px}"
        )


def _edge_samples(boards: np.ndarray, seed: int) -> list[np.ndarray]:
    """A sample of copper-edge pixels per board (at most 512, ``(y, x)`` int32), for hard
    negatives."""
    edge_rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    for board in boards:
        edges = np.argwhere(cv2.Canny(board, 50, 150) > 0)
        if len(edges) > 512:
            edges = edges[edge_rng.choice(len(edges), 512, replace=False)]
        samples.append(edges.astype(np.int32))
    return samples
