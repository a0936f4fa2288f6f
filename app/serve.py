"""``pcb-inspect serve``: uvicorn with a graceful, probe-friendly shutdown.

On the first SIGTERM or SIGINT the service first turns ``/readyz`` to 503 and refuses new
inspections (503 + Retry-After), lets the work in flight finish for up to
``PCB_SHUTDOWN_GRACE_S``, and only then stops uvicorn, which exits 0. A second signal stops at
once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from types import FrameType
from typing import Any

import uvicorn

logger = logging.getLogger("pcb_inspect.serve")

#: Exit status when the model could not be loaded (as uvicorn's own startup failure).
STARTUP_FAILURE = 3


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Adds the ``serve`` arguments (each overrides its ``PCB_*`` setting)."""
    p = parser or argparse.ArgumentParser(prog="pcb-inspect serve")
    p.add_argument("--host", help="bind address (PCB_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (PCB_PORT, default 8000)")
    p.add_argument("--weights", help="weights file (PCB_WEIGHTS_PATH)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), help="PCB_DEVICE")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"),
                   help="PCB_PRECISION (default auto)")
    return p


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains the service before stopping."""

    def __init__(self, config: uvicorn.Config, grace_s: float, state: Any) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        #: The app's ``ServiceState``, handed in (not found again through a module global).
        self.state = state
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))  # type: ignore[union-attr]

    async def _drain(self) -> None:
        state = self.state
        state.begin_drain(self.grace_s)
        logger.info("signal received: draining (%d in flight, grace %.0f s)", state.in_flight,
                    self.grace_s)
        if state.in_flight:
            try:
                await asyncio.wait_for(state.idle.wait(), state.drain_remaining())
            except TimeoutError:
                logger.warning("grace period over with %d requests in flight", state.in_flight)
        # uvicorn then waits for open connections, and the lifespan for in-flight work: both
        # only for what is left of the one grace period.
        # (uvicorn passes it to asyncio.wait_for, which takes fractions of a second.)
        self.config.timeout_graceful_shutdown = max(0.1, state.drain_remaining())  # type: ignore[assignment]
        self.should_exit = True


def _check_pair_model(settings: Any) -> None:
    """The cheap checks of the golden-board model's files, when one is configured.

    The default path may be absent (the service then inspects boards alone); a path that
    was set on purpose must exist.
    """
    from app.inference.card import ModelCardError, load_card
    from app.inference.inferencer import ModelLoadError, check_weights_file

    path = settings.pair_weights
    if path is None or (settings.pair_weights_is_default and not path.exists()):
        return
    try:
        check_weights_file(path)
        load_card(settings.pair_model_card_path)
    except (ModelLoadError, ModelCardError) as exc:
        raise type(exc)(f"golden-board model (PCB_PAIR_WEIGHTS_PATH): {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Serves the app until a signal stops it.

    Returns:
        0 after a clean shutdown, 3 when startup failed (the reason is logged on one line).
    """
    from pydantic import ValidationError

    from app.core.config import Settings
    from app.core.logging import setup_logging
    from app.inference.card import ModelCardError, load_card
    from app.inference.inferencer import ModelLoadError, check_weights_file

    # The flags override their PCB_* variables by being passed to the one Settings, which
    # is then handed to the app: nothing goes back through os.environ.
    overrides = {
        field: getattr(args, flag)
        for flag, field in (("host", "host"), ("port", "port"), ("weights", "weights_path"),
                            ("device", "device"), ("precision", "precision"))
        if getattr(args, flag, None) is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        print(f"pcb-inspect: startup failed: invalid setting {where}: {first['msg']}",
              file=sys.stderr)
        return STARTUP_FAILURE
    setup_logging(settings.log_level)
    # Cheap checks first, so the usual mistakes fail in one clear line, before TF starts.
    try:
        check_weights_file(settings.weights_path)
        assert settings.model_card_path is not None
        load_card(settings.model_card_path)
        _check_pair_model(settings)
    except (ModelLoadError, ModelCardError) as exc:
        logger.error("startup failed: %s", exc)
        print(f"pcb-inspect: startup failed: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    from app.main import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
        lifespan="on",
    )
    server = GracefulServer(config, settings.shutdown_grace_s, app.state.service)
    server.run()
    return 0 if server.started else STARTUP_FAILURE


def main() -> int:
    """``python -m app.serve``."""
    return run(build_parser().parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
