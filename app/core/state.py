"""What the running service holds: the inferencer, the batcher and its life-cycle flags."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from app.core.config import Settings
from app.inference.batcher import DynamicBatcher
from app.inference.inferencer import Inferencer


@dataclasses.dataclass
class ServiceState:
    """The service's mutable state, one per app (``app.state.service``)."""

    settings: Settings
    inferencer: Inferencer | None = None
    batcher: DynamicBatcher | None = None
    not_ready_reason: str = "model not loaded yet"
    draining: bool = False
    in_flight: int = 0
    started_at: float = dataclasses.field(default_factory=time.time)
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and warmed and the service is not shutting down."""
        return self.inferencer is not None and self.batcher is not None and not self.draining

    def begin_drain(self) -> None:
        """Turns readiness off and refuses new work; in-flight work goes on."""
        self.draining = True
        self.not_ready_reason = "shutting down"
