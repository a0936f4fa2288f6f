"""A real RabbitMQ broker for the tests: Debian's ``rabbitmq-server`` with its AMQP 1.0 plugin,
started as a node of its own in a temporary folder, on free loopback ports.

Nothing is shared with a system broker or with other test runs: the node has a unique name,
its own database, logs, enabled-plugins file, configuration and Erlang cookie (in a temporary
``HOME``), and runs without epmd (``-start_epmd false -erl_epmd_port``: the distribution
port is fixed, so no name server on the shared port 4369 is needed). As root it runs as the
``rabbitmq`` user (``runuser``), as Debian's own wrapper would. A broker stopped and started
again keeps its folder, ports and durable queues, as a restarted production broker does.

RabbitMQ 3.x declares the queue of an AMQP 1.0 ``/queue/NAME`` address as a transient one, which
a restart deletes with its messages; the durable queues the tests publish to are declared at
boot from a definitions file (``queues``) and addressed as ``/amq/queue/NAME``, as a production
broker's would be (see the README).

Ports (the policy of :mod:`.ports`): a new node whose AMQP or distribution port was taken before
it bound it starts again on new ones. A node started again keeps its ports, as clients must
reconnect to the same address: it waits until they can be bound again (a client's ephemeral
port may hold one for a moment), and says so if one stays taken.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .ports import free_port, start_retrying, wait_bindable

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
INSTALL_HINT = "install it with: apt-get install -y rabbitmq-server"
START_TIMEOUT_S = 120.0
#: How long a node started again waits for its ports to be free.
RESTART_PORT_WAIT_S = 30.0


def server_or_skip() -> str:
    """The server script; skips the test (with the reason) where it is not installed."""
    if not os.path.exists(SERVER):
        pytest.skip(f"rabbitmq-server not installed (no {SERVER}); {INSTALL_HINT}")
    return SERVER


class RabbitBroker:
    """One RabbitMQ node: :meth:`start`, :meth:`stop`, :attr:`url` (with credentials)."""

    def __init__(self, folder: Path | None = None, queues: tuple[str, ...] = ()) -> None:
        self.server = server_or_skip()
        self.queues = queues
        self.folder = Path(folder or tempfile.mkdtemp(prefix="pcb-rabbitmq-"))
        self.user, self.password = "cfx", secrets.token_hex(12)
        self.port, self.dist_port = _two_ports()
        #: Whether the node has run: it then keeps its ports.
        self.booted = False
        self.node = f"pcb-test-{secrets.token_hex(4)}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self._runas: list[str] = []
        self._prepare()

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "server.out"

    def _prepare(self) -> None:
        home = self.folder / "home"
        for sub in ("home", "mnesia", "log", "gen"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "enabled_plugins").write_text("[rabbitmq_amqp1_0].\n")
        self._write_conf()
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "definitions.json").write_text(json.dumps(self._definitions()))
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("rabbitmq")
            except KeyError:
                return  # no such user: run as root, which the server allows
            runuser = shutil.which("runuser")
            if runuser is None:
                return
            for path in [self.folder, *self.folder.rglob("*")]:
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self._runas = [runuser, "-u", "rabbitmq", "--"]

    def _write_conf(self) -> None:
        # Rewritten in place on new ports: the file keeps its owner.
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"default_user = {self.user}\ndefault_pass = {self.password}\n"
            "loopback_users = none\n"
            f"load_definitions = {self.folder / 'definitions.json'}\n"
            # A test machine's disk may be nearly full: the default alarm (50 MB) would block
            # publishers, which is not what these tests are about.
            "disk_free_limit.absolute = 1MB\n"
        )

    def _definitions(self) -> dict[str, object]:
        # Definitions imported at boot replace the default user: the user is defined here too,
        # with RabbitMQ's salted SHA-256 password hash.
        salt = secrets.token_bytes(4)
        digest = hashlib.sha256(salt + self.password.encode()).digest()
        return {
            "users": [{"name": self.user, "tags": ["administrator"],
                       "password_hash": base64.b64encode(salt + digest).decode(),
                       "hashing_algorithm": "rabbit_password_hashing_sha256"}],
            "vhosts": [{"name": "/"}],
            "permissions": [{"user": self.user, "vhost": "/", "configure": ".*",
                             "write": ".*", "read": ".*"}],
            "queues": [{"name": q, "vhost": "/", "durable": True, "auto_delete": False,
                        "arguments": {}} for q in self.queues],
        }

    def _env(self) -> dict[str, str]:
        f = self.folder
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(f / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(f / "mnesia"),
            "RABBITMQ_LOG_BASE": str(f / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(f / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(f / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(f / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(f / "rabbitmq-env.conf"),
            "RABBITMQ_GENERATED_CONFIG_DIR": str(f / "gen"),
            "RABBITMQ_PID_FILE": str(f / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ERL_ARGS": (
                f"-start_epmd false -erl_epmd_port {self.dist_port} "
                "-kernel inet_dist_use_interface {127,0,0,1}"),
        }

    def start(self) -> None:
        """Starts the node and waits until it accepts AMQP 1.0 connections.

        Raises:
            RuntimeError: It did not start (after the retries, when a port was taken); with
                the end of its log.
        """
        assert self.proc is None, "already running"
        if not self.booted:
            attempts = 0

            def fresh() -> None:
                nonlocal attempts
                if attempts:
                    self.port, self.dist_port = _two_ports()
                    self._write_conf()
                attempts += 1
                self._boot()

            start_retrying(fresh, lambda exc: isinstance(exc, _PortTaken))
            self.booted = True
            return

        def again() -> None:
            for port in (self.port, self.dist_port):
                if not wait_bindable(port, RESTART_PORT_WAIT_S):
                    raise RuntimeError(
                        f"rabbitmq-server cannot be started again: its port 127.0.0.1:{port} is "
                        f"still in use {RESTART_PORT_WAIT_S} s after it stopped, and it must "
                        "listen on the same ports again (clients reconnect to the same address)")
            self._boot()

        try:
            start_retrying(again, lambda exc: isinstance(exc, _PortTaken))
        except _PortTaken as exc:
            raise RuntimeError(f"rabbitmq-server could not be started again on its ports "
                               f"(127.0.0.1:{self.port}, distribution {self.dist_port}): "
                               f"something took one between the check and its bind. {exc}"
                               ) from exc

    def _boot(self) -> None:
        """Runs the server on the current ports until it accepts AMQP 1.0 connections."""
        env = self._env()
        cmd = [*self._runas, "env", *(f"{k}={v}" for k, v in env.items()), self.server]
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=self.folder)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                # Whatever of the failed node outlived its shell must not hold a port.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc = None
                with open(self.log, "rb") as log:
                    log.seek(offset)
                    text = log.read().decode(errors="replace")
                error = _PortTaken if self._port_taken(text) else RuntimeError
                raise error(f"rabbitmq-server exited at startup:\n{text[-3000:]}")
            if self.accepts_amqp10():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rabbitmq-server did not accept AMQP 1.0 within "
                                   f"{START_TIMEOUT_S} s; see {self.log}")
            time.sleep(0.5)

    def _port_taken(self, log: str) -> bool:
        """Whether a boot's log says its AMQP listener or its distribution port was in use."""
        return ((f'could_not_start_listener,"127.0.0.1",{self.port},' in log
                 and "eaddrinuse" in log)
                or f"dist_port_already_used,{self.dist_port}," in log)

    def accepts_amqp10(self) -> bool:
        from proton.utils import BlockingConnection

        try:
            conn = BlockingConnection(f"amqp://127.0.0.1:{self.port}", timeout=2,
                                      user=self.user, password=self.password,
                                      allowed_mechs="PLAIN", allow_insecure_mechs=True)
        except Exception:
            return False
        with contextlib.suppress(Exception):
            conn.close()
        return True

    def stop(self, *, kill: bool = False) -> None:
        """Stops the node (gracefully, or ``kill``: SIGKILL, as a crash)."""
        if self.proc is None:
            return
        sig = signal.SIGKILL if kill else signal.SIGTERM
        pid_file = self.folder / "rabbitmq.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        # The beam may outlive the shell that started it for a moment.
        with contextlib.suppress(OSError, ValueError):
            beam = int(pid_file.read_text().strip())
            for _ in range(120):
                os.kill(beam, 0)
                time.sleep(0.25)
            os.kill(beam, signal.SIGKILL)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class _PortTaken(RuntimeError):
    """A boot failed because a port it was to listen on was in use."""


def _two_ports() -> tuple[int, int]:
    """The AMQP and the distribution port: two free ports, never the same one twice."""
    port = free_port()
    while (dist := free_port()) == port:
        pass
    return port, dist


@contextlib.contextmanager
def running_broker(queues: tuple[str, ...] = ()) -> Iterator[RabbitBroker]:
    """A started broker with durable ``queues``, stopped and removed at the end."""
    broker = RabbitBroker(queues=queues)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def receive(url: str, address: str, count: int, *, timeout_s: float = 30.0,
            idle_s: float = 0.0) -> list[tuple[str, bytes]]:
    """Consumes (and accepts) ``count`` messages from ``address`` over AMQP 1.0: their
    message ids and bodies, in arrival order. Fails if fewer arrive within ``timeout_s``;
    with ``idle_s``, then keeps reading until nothing arrives for that long (to see repeats).
    """
    from urllib.parse import urlsplit

    from proton import Timeout
    from proton.utils import BlockingConnection

    parts = urlsplit(url)
    conn = BlockingConnection(f"amqp://{parts.hostname}:{parts.port}", timeout=10,
                              user=parts.username, password=parts.password,
                              allowed_mechs="PLAIN", allow_insecure_mechs=True)
    got: list[tuple[str, bytes]] = []
    try:
        receiver = conn.create_receiver(address, credit=500)
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(got)} of {count} messages arrived from {address} "
                                     f"within {timeout_s} s")
            try:
                msg = receiver.receive(timeout=left)
            except Timeout:
                continue
            receiver.accept()
            got.append((str(msg.id), _body_bytes(msg.body)))
        while idle_s > 0:
            try:
                msg = receiver.receive(timeout=idle_s)
            except Timeout:
                break
            receiver.accept()
            got.append((str(msg.id), _body_bytes(msg.body)))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return got


def _body_bytes(body: object) -> bytes:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    return str(body).encode()


def has_messages(broker: RabbitBroker, address: str) -> bool:
    """Whether a message waits at ``address``: one is taken and released back, unread."""
    from urllib.parse import urlsplit

    from proton import Timeout
    from proton.utils import BlockingConnection

    parts = urlsplit(broker.url)
    conn = BlockingConnection(f"amqp://{parts.hostname}:{parts.port}", timeout=10,
                              user=parts.username, password=parts.password,
                              allowed_mechs="PLAIN", allow_insecure_mechs=True)
    try:
        receiver = conn.create_receiver(address, credit=1)
        try:
            receiver.receive(timeout=0.2)
        except Timeout:
            return False
        receiver.release(delivered=False)
        return True
    finally:
        conn.close()
