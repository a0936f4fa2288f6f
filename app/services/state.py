"""What the running service holds: the models, their batchers, the golden-board store and
the life-cycle flags.

In ``services``, not ``core``: it holds inference objects, and ``core`` imports nothing above it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from app.core.config import Settings
from app.inference.batcher import DynamicBatcher
from app.inference.inferencer import Inferencer
from app.services.admission import PixelBudget
from app.services.golden_store import GoldenStore
from app.services.recipe_store import RecipeStore


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One served model and the batcher that runs its tiles."""

    inferencer: Inferencer
    batcher: DynamicBatcher


@dataclasses.dataclass
class ServiceState:
    """The service's mutable state, one per app (``app.state.service``)."""

    settings: Settings
    #: The single-image model: every inspection without a golden board.
    inferencer: Inferencer | None = None
    batcher: DynamicBatcher | None = None
    #: The golden-board (pair) model and its own batcher (its tiles have two channels, so
    #: they cannot share the single model's batches); ``None`` when not served.
    pair_inferencer: Inferencer | None = None
    pair_batcher: DynamicBatcher | None = None
    #: Why there is no pair model, for the 503 that a golden board then gets.
    pair_unavailable_reason: str = "the golden-board model is not loaded yet"
    not_ready_reason: str = "model not loaded yet"
    #: Why startup failed, in one line (``pcb-inspect serve`` prints it); ``None`` otherwise.
    startup_error: str | None = None
    draining: bool = False
    #: When the shutdown grace ends (``time.monotonic()``), set by the first drain signal:
    #: the signal handler, uvicorn's connection wait and the lifespan all count down to this
    #: one deadline, so the grace is spent once, not once per stage.
    drain_deadline: float | None = None
    #: Inspection requests (HTTP, not boards: a batch is one) being handled; the drain waits
    #: for ``idle``, which is set whenever this is 0.
    in_flight: int = 0
    started_at: float = dataclasses.field(default_factory=time.time)
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    golden: GoldenStore = dataclasses.field(init=False)
    #: The products' recipes, beside the golden boards on the shared volume.
    recipes: RecipeStore = dataclasses.field(init=False)
    #: The memory budget: pixels of the boards being inspected (PCB_LIMITS_MAX_INFLIGHT_PIXELS).
    budget: PixelBudget = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.budget = PixelBudget(self.settings.limits.max_inflight_pixels)
        # Cheap (nothing is read or created until first used), so it exists before the
        # lifespan runs and golden boards can be managed while the models load.
        self.golden = GoldenStore(
            self.settings.golden_dir, int(self.settings.golden_cache_mb * 2**20)
        )
        self.recipes = RecipeStore(self.settings.data_dir / "recipes")

    @property
    def model(self) -> ServedModel | None:
        """The single-image model, or ``None`` until it is loaded and its batcher runs."""
        if self.inferencer is None or self.batcher is None:
            return None
        return ServedModel(self.inferencer, self.batcher)

    @property
    def pair_model(self) -> ServedModel | None:
        """The golden-board (pair) model, or ``None`` when it is not served."""
        if self.pair_inferencer is None or self.pair_batcher is None:
            return None
        return ServedModel(self.pair_inferencer, self.pair_batcher)

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and warmed and the service is not shutting down."""
        return self.inferencer is not None and self.batcher is not None and not self.draining

    def begin_drain(self, grace_s: float | None = None) -> None:
        """Turns readiness off and refuses new work; in-flight work goes on.

        The first call fixes the drain deadline, ``grace_s`` (default: the settings') from now.
        """
        if self.drain_deadline is None:
            grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
            self.drain_deadline = time.monotonic() + grace
        self.draining = True
        self.not_ready_reason = "shutting down"

    def drain_remaining(self) -> float:
        """Seconds left of the shutdown grace (0 before a drain began or once it is over)."""
        if self.drain_deadline is None:
            return 0.0
        return max(0.0, self.drain_deadline - time.monotonic())
