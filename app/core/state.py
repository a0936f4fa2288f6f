"""What the running service holds: the models, their batchers, the golden-board store and
the life-cycle flags."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from app.core.config import Settings
from app.inference.batcher import DynamicBatcher
from app.inference.inferencer import Inferencer
from app.services.golden_store import GoldenStore


@dataclasses.dataclass
class ServiceState:
    """The service's mutable state, one per app (``app.state.service``)."""

    settings: Settings
    #: The single-image model: every inspection without a reference.
    inferencer: Inferencer | None = None
    batcher: DynamicBatcher | None = None
    #: The golden-board (pair) model and its own batcher (its tiles have two channels, so
    #: they cannot share the single model's batches); ``None`` when not served.
    pair_inferencer: Inferencer | None = None
    pair_batcher: DynamicBatcher | None = None
    #: Why there is no pair model, for the 503 that a reference then gets.
    pair_unavailable_reason: str = "the golden-board model is not loaded yet"
    not_ready_reason: str = "model not loaded yet"
    draining: bool = False
    in_flight: int = 0
    started_at: float = dataclasses.field(default_factory=time.time)
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    golden: GoldenStore = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        # Cheap (nothing is read or created until first used), so it exists before the
        # lifespan runs and golden boards can be managed while the models load.
        self.golden = GoldenStore(
            self.settings.golden_dir, int(self.settings.golden_cache_mb * 2**20)
        )

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and warmed and the service is not shutting down."""
        return self.inferencer is not None and self.batcher is not None and not self.draining

    def begin_drain(self) -> None:
        """Turns readiness off and refuses new work; in-flight work goes on."""
        self.draining = True
        self.not_ready_reason = "shutting down"
