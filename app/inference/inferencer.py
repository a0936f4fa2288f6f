"""The inferencer: the one object that owns the model.

``pre_process`` (decoded board -> tiles) -> ``forward`` (tiles -> per-pixel maps, one
``tf.function`` with a fixed input signature) -> ``post_process`` (maps -> typed defects,
summary and mask). It returns typed results, never raw tensors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.inference.card import ModelCard
from app.inference.defects import PostprocessConfig
from app.inference.forward import build_forward, seconds_per_tile
from app.inference.gating import Gate, blank_tiles, candidate_cells, gate_tiles
from app.inference.loading import (
    POLICIES,
    configure_tensorflow,
    load_model_and_card,
    sha256_of,
    with_policy,
)
from app.inference.pipeline import BoardRun, InferenceResult, RunTiles, run_chunks
from app.inference.postprocess import postprocess
from app.inference.precision import read_cpu_flags, resolve_precision
from app.inference.registration import Alignment
from app.inference.registration import register as register_golden
from app.inference.tiling import (
    Stitcher,
    Tile,
    chunk_tiles,
    extract_tiles,
    plan_tiles,
)

__all__ = ["Inferencer"]

logger = logging.getLogger("pcb_inspect.inferencer")


class Inferencer:
    """Owns the model and runs boards through it.

    Args:
        model: A loaded Keras model: raw grayscale pixels in, softmax over classes out.
        card: Its model card.
        weights_path: Where the weights came from.
        weights_sha256: The weights file's sha256.
        device: ``"cpu"`` or ``"gpu"``.
        precision: ``"float32"``, ``"bfloat16"`` or ``"float16"``: what runs.
        precision_requested: What was asked for (``"auto"`` or a precision); default:
            ``precision``.
        tile_overlap: Overlap of neighbouring tiles in pixels; ``None``: the card's
            ``input.tile_overlap``, else a tenth of the tile.
        max_batch_size: Tiles per model call in the synchronous path.
    """

    def __init__(
        self,
        model: Any,
        card: ModelCard,
        weights_path: Path,
        weights_sha256: str,
        device: str = "cpu",
        precision: str = "float32",
        tile_overlap: int | None = None,
        max_batch_size: int = 8,
        precision_requested: str | None = None,
    ) -> None:
        if precision not in POLICIES:
            raise ValueError(f"precision must be one of {list(POLICIES)}. Received: {precision}")
        policy = POLICIES[precision]
        self.model = with_policy(model, policy) if policy else model
        self.card = card
        self.weights_path = Path(weights_path)
        self.weights_sha256 = weights_sha256
        self.device = device
        #: The precision that runs; ``precision_requested``: what the settings asked for.
        self.precision = precision
        self.precision_requested = precision_requested or precision
        self.tile = card.input.tile_size
        if tile_overlap is None:
            tile_overlap = card.input.tile_overlap
        if tile_overlap is None:
            tile_overlap = self.tile // 10
        if not 0 <= tile_overlap < self.tile:
            raise ValueError(
                f"tile_overlap must be in [0, {self.tile}). Received: tile_overlap={tile_overlap}"
            )
        self.tile_overlap = tile_overlap
        self.max_batch_size = max_batch_size
        # The golden-board (pair) model has two inputs, the board and its registered
        # golden board; its tiles carry them as two channels of one array.
        self.pair = len(self.model.inputs) == 2
        self.channels = 2 if self.pair else 1
        self._forward = build_forward(self._call_model, self.tile, self.channels)

    def _call_model(self, x: Any) -> Any:
        if self.pair:
            return self.model([x[..., :1], x[..., 1:]], training=False)
        return self.model(x, training=False)

    @property
    def mode(self) -> str:
        """``"pair"`` (board + golden board) or ``"single"`` (the board alone)."""
        return "pair" if self.pair else "single"

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        weights_path: Path,
        card_path: Path | None = None,
        *,
        device: str = "cpu",
        precision: str = "float32",
        tile_overlap: int | None = None,
        max_batch_size: int = 8,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        cpu_flags: frozenset[str] | None = None,
    ) -> Inferencer:
        """Configures TensorFlow, loads card and weights, and builds the inferencer.

        Everything is passed in: evaluation and benchmarks call this, so no ``PCB_``
        environment variable can change what they measure.

        Args:
            weights_path: The ``.keras`` file.
            card_path: Its model card; ``None``: :func:`default_card_path`.
            device, tile_overlap, max_batch_size: As for the constructor.
            precision: As for the constructor, or ``"auto"``: resolved for this model by
                :func:`~app.inference.precision.resolve_precision` (its card's recorded
                parity, the device and the CPU's flags).
            intra_op_threads, inter_op_threads: TensorFlow thread pools (0: default).
            cpu_flags: The CPU's flags for ``auto``; ``None``: read from ``/proc/cpuinfo``.

        Raises:
            ModelLoadError: One line naming the file and what is wrong with it.
        """
        device = configure_tensorflow(device, intra_op_threads, inter_op_threads)
        weights_path = Path(weights_path)
        model, card = load_model_and_card(weights_path, card_path)
        resolved = resolve_precision(
            precision, device, card, read_cpu_flags() if cpu_flags is None else cpu_flags
        )
        if resolved != precision:
            logger.info(
                "%s model %s: precision %s resolves to %s",
                card.mode,
                card.name,
                precision,
                resolved,
            )
        return cls(
            model,
            card,
            weights_path,
            sha256_of(weights_path),
            device=device,
            precision=resolved,
            tile_overlap=tile_overlap,
            max_batch_size=max_batch_size,
            precision_requested=precision,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Inferencer:
        """:meth:`load` with the service's settings (the single-image model), its batch size
        resolved for the device it runs on."""
        inferencer = cls.load(
            settings.weights_path,
            settings.model_card_path,
            device=settings.device,
            precision=settings.precision,
            intra_op_threads=settings.effective_intra_op_threads(),
            inter_op_threads=settings.inter_op_threads,
        )
        inferencer.max_batch_size = settings.batching.resolve(inferencer.device).batch_size
        return inferencer

    @property
    def tracing_count(self) -> int:
        """How often the model function has been traced (1 after warm-up, and it stays 1)."""
        return int(self._forward.experimental_get_tracing_count())

    def warm_up(self) -> float:
        """Runs one tile through the model (traces the graph); returns the seconds it took."""
        started = time.perf_counter()
        self.forward(np.full((1, self.tile, self.tile, self.channels), 255, dtype=np.uint8))
        return time.perf_counter() - started

    def calibrate_batch_size(self, cap: int, tolerance: float = 0.03) -> dict[int, float]:
        """Picks ``max_batch_size`` by measurement: the smallest batch within ``tolerance`` of
        the best time per tile, among 1, 2, 4, ... up to ``cap``.

        The best batch depends on the machine: on a 2-core CPU one 640 px tile already keeps
        both cores busy, so a larger batch gains little while every tile of it holds hundreds
        of megabytes of activations at once (README "Benchmarks"); on a GPU the
        larger batch pays. The smallest batch that is as fast keeps memory and the wait for
        company low. Call after :meth:`warm_up`.

        Returns:
            Seconds per tile of each candidate batch size.
        """
        per_tile = seconds_per_tile(self.forward, self.tile, self.channels, cap)
        best = min(per_tile.values())
        self.max_batch_size = min(n for n, t in per_tile.items() if t <= best * (1 + tolerance))
        return per_tile

    # --------------------------------------------------------------------------- the stages
    def pre_process(self, pixels: np.ndarray) -> list[Tile]:
        """Plans the tiles of a ``(H, W)`` uint8 board (large boards: overlapping tiles)."""
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise ValueError(
                f"expected a (H, W) uint8 image. Received: shape={pixels.shape}, "
                f"dtype={pixels.dtype}"
            )
        return plan_tiles(pixels.shape[0], pixels.shape[1], self.tile, self.tile_overlap)

    def tile_chunks(
        self, pixels: np.ndarray, tiles: list[Tile], golden: np.ndarray | None = None
    ) -> Iterator[tuple[list[Tile], np.ndarray]]:
        """:func:`~app.inference.tiling.chunk_tiles` at this model's tile and batch size."""
        return chunk_tiles(pixels, tiles, self.tile, self.max_batch_size, golden)

    def register(
        self, pixels: np.ndarray, golden: np.ndarray | None
    ) -> tuple[np.ndarray | None, Alignment | None]:
        """Aligns ``golden`` to the board (pair model); ``(None, None)`` for the single model.

        Raises:
            ValueError: The pair model got no golden board, or the single model got one.
            AlignmentError: The golden board is not the same design (or side, or orientation).
        """
        if not self.pair:
            if golden is not None:
                raise ValueError("this model inspects a board alone; it takes no golden board")
            return None, None
        if golden is None:
            raise ValueError("the golden-board model needs a golden board image")
        if golden.ndim != 2 or golden.dtype != np.uint8:
            raise ValueError(
                f"expected a (H, W) uint8 golden board. Received: shape={golden.shape}, "
                f"dtype={golden.dtype}"
            )
        warped, alignment = register_golden(pixels, golden)
        return warped, alignment

    def forward(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs ``(n, T, T, C)`` uint8 tiles; returns ``(fg, cls, cls_p)``, each ``(n, T, T)``.

        ``fg`` (float32): P(defect) = ``1 - p_background``. ``cls`` (uint8, ``1..K``): the most
        likely defect class. ``cls_p`` (float16, ``[1/K, 1]``): P(``cls`` | defect), the
        class's probability over the sum of the K defect classes' probabilities.
        """
        fg, cls, cls_p = self._forward(tiles)
        return fg.numpy(), cls.numpy(), cls_p.numpy()

    def post_process(
        self, stitcher: Stitcher, config: PostprocessConfig, n_tiles: int, timings: dict[str, float]
    ) -> InferenceResult:
        """Turns the stitched maps into typed defects, summary and class map. The maps are
        released once the defect pixels are gathered, before the labelling's own maps."""
        started = time.perf_counter()
        result = postprocess(stitcher, self.card.classes, config)
        timings["post_process"] = (time.perf_counter() - started) * 1e3
        h, w = result.class_map.shape
        return InferenceResult(
            width=w,
            height=h,
            defects=result.defects,
            summary=result.summary,
            class_map=result.class_map,
            tiles=n_tiles,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
        )

    # -------------------------------------------------------------------------- full paths
    def predict(
        self,
        pixels: np.ndarray,
        config: PostprocessConfig,
        golden: np.ndarray | None = None,
        *,
        gating: bool = False,
    ) -> InferenceResult:
        """Inspects one board synchronously (evaluation, benchmarks, scripts).

        ``golden``: the golden board, for the pair model (registered here). ``gating``:
        compute only the tiles :mod:`app.inference.gating` finds work in (pair: a difference
        from the golden board; single: some copper edge); ``False`` (the default here, so
        evaluation and scripts measure the full path unless asked): every tile.
        """
        board = self._begin(pixels, golden, gating)
        started = time.perf_counter()
        for chunk, arrays in self.board_chunks(pixels, board):
            board.stitch(chunk, self.forward(arrays))
        board.timings["forward"] = (time.perf_counter() - started) * 1e3
        return self._finish(board, config)

    async def predict_async(
        self,
        pixels: np.ndarray,
        config: PostprocessConfig,
        run_tiles: RunTiles,
        golden: np.ndarray | None = None,
        *,
        gating: bool = False,
        on_plan: Callable[[int, int], None] | None = None,
    ) -> InferenceResult:
        """Inspects one board, sending its tiles through ``run_tiles`` (the batcher).

        The chunks go through :func:`~app.inference.pipeline.run_chunks` (a few in flight at
        once, only the first refusable). Registration, the candidate search, tile extraction,
        stitching and post-processing run in worker threads, not on the event loop: on a large
        board they take seconds, and health probes must not wait. ``on_plan`` is called with
        the number of tiles that will go through the model once that is known (before any
        does), and the board pixels of the registered golden board freed then (gating keeps
        only its windows of those tiles), so the caller can bound the request by what will be
        computed.
        """
        board = await asyncio.to_thread(self._begin, pixels, golden, gating)
        if on_plan is not None:
            on_plan(len(board.to_compute), board.freed_px)
        started = time.perf_counter()
        await run_chunks(board, self.board_chunks(pixels, board), run_tiles)
        board.timings["forward"] = (time.perf_counter() - started) * 1e3
        return await asyncio.to_thread(self._finish, board, config)

    def board_chunks(
        self, pixels: np.ndarray, board: BoardRun
    ) -> Iterator[tuple[list[Tile], np.ndarray]]:
        """The chunks of ``board``'s tiles to compute, with their golden-board channel (pair)."""
        windows = board.golden_windows
        if windows is None:
            yield from self.tile_chunks(pixels, board.to_compute, board.warped)
            return
        for chunk, arrays in self.tile_chunks(pixels, board.to_compute):
            golden = np.stack([windows.pop((t.y0, t.x0)) for t in chunk])
            yield chunk, np.concatenate([arrays, golden], axis=-1)

    def gate(self, pixels: np.ndarray, warped: np.ndarray | None, tiles: list[Tile]) -> Gate:
        """The tiles worth computing: pair model, those near a difference from the registered
        golden board ``warped``; single model, those with some copper edge."""
        if warped is not None:
            return gate_tiles(tiles, candidate_cells(pixels, warped))
        return blank_tiles(pixels, tiles, self.tile)

    def _begin(
        self, pixels: np.ndarray, golden: np.ndarray | None, gating: bool = False
    ) -> BoardRun:
        """Plans the tiles, registers the golden board (pair model), finds the tiles worth
        computing (with ``gating``), allocates the stitcher."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        tiles = self.pre_process(pixels)
        registered = time.perf_counter()
        warped, alignment = self.register(pixels, golden)
        if alignment is not None:
            timings["register"] = (time.perf_counter() - registered) * 1e3
        computed = None
        windows = None
        freed = 0
        searching = 0.0
        if gating:
            searched = time.perf_counter()
            computed = self.gate(pixels, warped, tiles).computed
            kept = len(computed) * self.tile**2
            if warped is not None and kept < warped.size:
                # Only the computed tiles read the registered golden board: keep their windows
                # and free the rest of it now, before the forward passes.
                windows = {(t.y0, t.x0): w for t, w in
                           zip(computed, extract_tiles(warped, computed, self.tile), strict=True)}
                freed, warped = warped.size - kept, None
            searching = (time.perf_counter() - searched) * 1e3
        stitcher = Stitcher(pixels.shape[0], pixels.shape[1])
        timings["pre_process"] = (time.perf_counter() - started) * 1e3 - timings.get(
            "register", 0.0
        ) - searching
        if gating:
            timings["candidates"] = searching
        return BoardRun(tiles, warped, alignment, stitcher, timings, computed=computed,
                        gated=gating, golden_windows=windows, freed_px=freed)

    def _finish(self, board: BoardRun, config: PostprocessConfig) -> InferenceResult:
        # Every tile ran: the registered golden board goes before post-processing's own peak.
        board.warped = None
        result = self.post_process(board.stitcher, config, len(board.tiles), board.timings)
        computed = {(t.y0, t.x0) for t in board.to_compute}
        skipped = [t for t in board.tiles if (t.y0, t.x0) not in computed]
        return dataclasses.replace(
            result,
            alignment=board.alignment,
            skipped_tiles=len(skipped),
            skipped_px=Gate([], skipped).skipped_px,
            gated=board.gated,
        )
