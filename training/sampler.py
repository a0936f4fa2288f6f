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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        n, h, w = pack.boards.shape
        if not 16 <= crop <= min(h, w) or crop % 16:
            raise ValueError(
                f"`crop` must be a multiple of 16 in [16, {min(h, w)}]. Received: crop={crop}"
            )
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
        probabilities = {"defect_prob": defect_prob, "hard_negative_prob": hard_negative_prob,
                         "jpeg_prob": jpeg_prob, "blur_prob": blur_prob}
        for name, value in probabilities.items():
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value}")
        if not 0 <= defect_prob + hard_negative_prob <= 1:
            raise ValueError(
                "`defect_prob + hard_negative_prob` must be in [0, 1]. Received: "
                f"{defect_prob} + {hard_negative_prob}"
            )
        if not reference_shift_px >= 0:
            raise ValueError(
                "`reference_shift_px` must be >= 0. Received: "
                f"reference_shift_px={reference_shift_px}"
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
        # Boxes by class, as (image, box) index pairs.
        self._by_class: list[np.ndarray] = []
        for label in range(1, _NUM_CLASSES + 1):
            idx = np.argwhere(pack.boxes[..., 4] == label)
            self._by_class.append(idx)
        self._classes = [c for c in range(_NUM_CLASSES) if len(self._by_class[c])]
        # A sample of copper-edge pixels per board, for hard negatives.
        edge_rng = np.random.default_rng(seed)
        self._edges: list[np.ndarray] = []
        for board in pack.boards:
            edges = np.argwhere(cv2.Canny(board, 50, 150) > 0)
            if len(edges) > 512:
                edges = edges[edge_rng.choice(len(edges), 512, replace=False)]
            self._edges.append(edges.astype(np.int32))

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
        _, h, w = self.pack.boards.shape
        c = self.crop
        i, y, x = self._centre(rng)
        jitter = rng.integers(-(c // 3), c // 3 + 1, size=2)
        top = int(np.clip(y - c // 2 + jitter[0], 0, h - c))
        left = int(np.clip(x - c // 2 + jitter[1], 0, w - c))
        window = (slice(top, top + c), slice(left, left + c))
        board = self.pack.boards[i][window]
        ref = self.pack.references[i][window]
        mask = self.pack.masks[i][window]
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
