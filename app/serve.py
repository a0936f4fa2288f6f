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
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.network import is_loopback

logger = logging.getLogger("pcb_inspect.serve")

#: Exit status of every startup failure (as uvicorn's own), with one line naming the cause.
STARTUP_FAILURE = 3


class StartupError(Exception):
    """A startup check failed; the message is one line naming the setting or file."""


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


class _QuietStartupFailure:
    """Passes the app through, but drops the traceback text that Starlette sends uvicorn with
    a failed lifespan startup: the lifespan has logged the cause in one line already, and
    :func:`run` prints it. (uvicorn logs nothing else for a failure that was reported.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_quietly(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, send_quietly)


def _settings_error(exc: Any) -> str:
    """One line for a pydantic ``ValidationError`` of the settings: the variable, the value
    received (never for the API keys) and what was expected."""
    errors = exc.errors()
    first = errors[0]
    # A group's field is PCB_<GROUP>_<FIELD>: loc ("cfx", "broker_url").
    field = "_".join(str(p) for p in first["loc"][:2])
    name = f"PCB_{field.upper()}" if field else "the settings"
    # A check of several settings (no field) would show them all, the API keys among them.
    shown = bool(field) and first["loc"][0] != "api_keys" and first["type"] != "missing" \
        and "input" in first
    value = f"={first['input']!r}" if shown else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    what = f"setting {name}{value}" if field else "settings"
    return f"invalid {what}: {first['msg'].removeprefix('Value error, ')}{more}"


def _check_pair_model(settings: Any) -> Any:
    """The cheap checks of the golden-board model's files, when one is configured.

    The default path may be absent (the service then inspects boards alone); a path that
    was set on purpose must exist.

    Returns:
        The pair model's card, or ``None`` when no pair model will be loaded.
    """
    from app.inference.card import ModelCardError, load_card
    from app.inference.loading import ModelLoadError, check_weights_file

    path = settings.pair_weights
    if path is None or (settings.pair_weights_is_default and not path.exists()):
        return None
    try:
        check_weights_file(path)
        return load_card(settings.pair_model_card_path)
    except (ModelLoadError, ModelCardError) as exc:
        raise type(exc)(f"golden-board model (PCB_PAIR_WEIGHTS_PATH): {exc}") from None


def _check_data_dir(data_dir: Path) -> None:
    # Nothing is created until the first golden board is stored, so a data dir that can never
    # be one would otherwise show only as a 500 on that first PUT.
    path = data_dir / "golden"
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        raise StartupError(
            f"PCB_DATA_DIR {data_dir} cannot hold golden boards: {path} is not a directory"
        )


def _check_records(settings: Any) -> None:
    # A records database that another version migrated (or nobody did) is said at once, not
    # after the models have loaded. The embedded default is migrated by the lifespan, and a
    # database that does not answer yet is the lifespan's to judge (it spools meanwhile).
    if not settings.records or settings.database_url is None:
        return
    from sqlalchemy.exc import SQLAlchemyError

    from app.records import SchemaError, check_schema, make_engine

    try:
        engine = make_engine(settings.database_url)
    except (ValueError, ImportError, SQLAlchemyError) as exc:
        raise StartupError(f"invalid setting PCB_DATABASE_URL: {exc}") from None
    try:
        check_schema(engine)
    except SchemaError as exc:
        raise StartupError(str(exc)) from None
    except SQLAlchemyError:
        pass
    finally:
        engine.dispose()


def _check_cfx(settings: Any) -> None:
    # A broker URL that cannot be one, or a password file that cannot be read, is said at
    # once; a broker that does not answer is not a startup error (the outbox waits for it).
    if not settings.cfx_enabled:
        return
    from app.services.cfx_publisher import AmqpTarget

    try:
        AmqpTarget.from_settings(settings)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def _check_listen(host: str, port: int) -> None:
    # uvicorn binds only after the models have loaded, which takes a while: a port that is
    # taken is better said at once. (Bound as uvicorn binds it, then let go.)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port} (PCB_HOST, PCB_PORT): {exc.strerror or exc}"
            ) from None


def preflight(settings: Any) -> None:
    """The cheap checks, before TensorFlow starts, so the usual mistakes fail in one line.

    Raises:
        StartupError: Naming the setting or file and what is wrong with it.
    """
    from app.inference.card import ModelCardError, load_card
    from app.inference.loading import ModelLoadError, check_weights_file

    try:
        check_weights_file(settings.weights_path)
        load_card(settings.model_card_path)
        _check_pair_model(settings)
    except (ModelLoadError, ModelCardError) as exc:
        raise StartupError(str(exc)) from None
    _check_data_dir(settings.data_dir)
    _check_records(settings)
    _check_cfx(settings)
    _check_listen(settings.host, settings.port)


def run(args: argparse.Namespace) -> int:
    """Serves the app until a signal stops it.

    Returns:
        0 after a clean shutdown, 3 when startup failed (the reason is logged on one line).
    """
    from pydantic import ValidationError

    from app.core.config import Settings
    from app.core.logging import setup_logging

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
        return _startup_failed(_settings_error(exc))
    refusal = open_bind_refusal(settings)
    if refusal:
        # Before the logs are set up and anything is loaded: the one line is all there is.
        return _startup_failed(refusal)
    setup_logging(settings.log_level)
    try:
        preflight(settings)
    except StartupError as exc:
        logger.error("startup failed: %s", exc)
        return _startup_failed(str(exc))
    from app.main import create_app

    app = create_app(settings)
    config = uvicorn_config(_QuietStartupFailure(app), settings)
    state = app.state.service
    server = GracefulServer(config, settings.shutdown_grace_s, state)
    metrics_server = None
    if settings.metrics.port is not None:
        from app.core.metrics import start_metrics_server

        try:
            metrics_server = start_metrics_server(settings.metrics.host, settings.metrics.port)
        except OSError as exc:
            return _startup_failed(
                f"cannot listen on {settings.metrics.host}:{settings.metrics.port} "
                f"(PCB_METRICS_HOST, PCB_METRICS_PORT): {exc.strerror or exc}"
            )
    try:
        server.run()
    except SystemExit:
        # uvicorn exits on its own startup failures (binding the socket), having logged why.
        if server.started:
            raise
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    if server.started:
        return 0
    return _startup_failed(state.startup_error or "the server did not start (see the log)")


def open_bind_refusal(settings: Any) -> str:
    """Why the service must not start, or ``""``: with no API keys it serves loopback only,
    unless ``PCB_AUTH=off`` says that no keys on a reachable address is meant."""
    if settings.auth_enabled or settings.auth == "off" or is_loopback(settings.host):
        return ""
    return (
        f"PCB_HOST={settings.host} is reachable from other machines and no API keys are set: "
        "set PCB_API_KEYS (e.g. 'station-1:inspect:KEY,ops:admin:KEY'), bind 127.0.0.1, or "
        "set PCB_AUTH=off to serve without keys on purpose"
    )


def uvicorn_config(app: ASGIApp, settings: Any) -> uvicorn.Config:
    """uvicorn's config for ``settings``: proxy headers (X-Forwarded-For, -Proto) are trusted
    only from the proxies in ``PCB_FORWARDED_ALLOW_IPS``, from none when it is empty (uvicorn
    would otherwise trust any loopback client)."""
    trusted = settings.forwarded_allow_ips.strip()
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
        lifespan="on",
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )


def _startup_failed(reason: str) -> int:
    """Prints the one plain line an operator reads first; returns the exit status."""
    print(f"pcb-inspect: startup failed: {reason}", file=sys.stderr)
    return STARTUP_FAILURE


def main() -> int:
    """``python -m app.serve``."""
    return run(build_parser().parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
