"""Publishes the CFX outbox to an AMQP 1.0 broker, in order, from a background thread.

Inspections never wait for the broker: they only write their message to the outbox (in their
own database transaction). This thread claims the oldest unsent messages
(:meth:`app.records.outbox.Outbox.claim`), sends them over one AMQP 1.0 link (Apache Qpid
Proton), waits for the broker's dispositions and marks sent only the messages the broker
*accepted*, in order; a message that is not accepted, and every one after it, is tried again
later with the same UniqueID (the AMQP message-id too), so consumers can deduplicate the rare
repeat (a publisher killed between the broker's acceptance and its own commit). When the
broker is unreachable the outbox grows and the thread reconnects with exponential backoff
(capped at :data:`MAX_BACKOFF_S`, so a broker that comes back is used within seconds).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from proton import Delivery, Message, SSLDomain
from proton.utils import BlockingConnection

from app.core.config import Settings
from app.core.metrics import CFX_PENDING, CFX_PUBLISH_ERRORS, CFX_PUBLISHED
from app.records.outbox import Outbox, PendingMessage

__all__ = ["AmqpTarget", "CfxPublisher", "PublisherStatus"]

logger = logging.getLogger("pcb_inspect.cfx")
# Proton logs every socket error of a lost broker at ERROR, on each retry; the publisher says
# once per distinct failure what happened (and the admin route and metrics show it).
logging.getLogger("proton").setLevel(logging.CRITICAL)

#: Messages claimed and sent per round trip of dispositions.
BATCH = 200
#: How often an idle publisher looks at the outbox (s).
POLL_S = 0.2
#: Reconnection backoff: first wait and cap (s).
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
#: How long to wait for a connection, or for the broker to settle a batch (s).
BROKER_TIMEOUT_S = 10.0
#: Sent messages are deleted from the outbox after this long.
KEEP_SENT = dt.timedelta(days=7)
PRUNE_INTERVAL_S = 3600.0
GAUGE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class AmqpTarget:
    """Where and how to connect: from ``PCB_CFX_*`` (:meth:`from_settings`)."""

    url: str  # without credentials
    address: str
    user: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AmqpTarget:
        """Raises ``ValueError`` (naming the setting) for a URL that is not amqp[s]://host."""
        raw = settings.cfx.broker_url or ""
        parts = urlsplit(raw)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError(f"PCB_CFX_BROKER_URL must be amqp://host[:port] or "
                             f"amqps://host[:port], received {display(raw)!r}")
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        password = unquote(parts.password) if parts.password else None
        if settings.cfx.password_file is not None:
            try:
                password = settings.cfx.password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"PCB_CFX_PASSWORD_FILE {settings.cfx.password_file} cannot "
                                 f"be read: {exc.strerror}") from None
        return cls(f"{parts.scheme}://{parts.hostname}:{port}", settings.cfx.address,
                   unquote(parts.username) if parts.username else None, password,
                   settings.cfx.ca_file, settings.cfx.cert_file, settings.cfx.key_file)

    @property
    def tls(self) -> bool:
        return self.url.startswith("amqps:")

    def connect(self) -> BlockingConnection:
        kwargs: dict[str, Any] = {}
        if self.user:
            kwargs.update(user=self.user, password=self.password or "", allowed_mechs="PLAIN",
                          # PLAIN over amqp:// sends the password in clear: the operator chose
                          # it (a broker on the same host or network); amqps:// encrypts it.
                          allow_insecure_mechs=not self.tls)
        elif self.cert_file is not None:
            kwargs.update(allowed_mechs="EXTERNAL")
        else:
            kwargs.update(allowed_mechs="ANONYMOUS")
        ssl = None
        if self.tls:
            ssl = SSLDomain(SSLDomain.MODE_CLIENT)
            if self.ca_file is not None:
                ssl.set_trusted_ca_db(str(self.ca_file))
            ssl.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME,
                                        None if self.ca_file is None else str(self.ca_file))
            if self.cert_file is not None and self.key_file is not None:
                ssl.set_credentials(str(self.cert_file), str(self.key_file), None)
        return BlockingConnection(self.url, timeout=BROKER_TIMEOUT_S, ssl_domain=ssl, **kwargs)


def display(url: str) -> str:
    """``url`` with its password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


@dataclass(frozen=True)
class PublisherStatus:
    """The publisher's side of the admin route (this process)."""

    broker: str
    address: str
    connected: bool
    published: int
    last_sent_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None


class _Link:
    """One connection and sender link; closed on any error and opened anew."""

    def __init__(self, target: AmqpTarget) -> None:
        self.conn = target.connect()
        try:
            self.sender = self.conn.create_sender(target.address)
        except Exception:
            self.close()
            raise

    def send(self, messages: list[PendingMessage]) -> tuple[list[int], str | None]:
        """Sends ``messages``; returns the seqs accepted (a prefix) and why the next one was
        not. Raises on a connection or link failure, or when the broker does not settle
        within :data:`BROKER_TIMEOUT_S`."""
        deliveries: list[Delivery] = []
        for m in messages:
            msg = Message(body=m.body.encode(), id=m.unique_id, durable=True,
                          content_type="application/json", subject=m.message_name)
            msg.inferred = True  # bytes as an AMQP data section, not an amqp-value
            delivery = self.sender.link.send(msg)
            assert isinstance(delivery, Delivery)  # a Sender's send() of a Message
            deliveries.append(delivery)
        self.conn.wait(lambda: all(d.settled for d in deliveries), timeout=BROKER_TIMEOUT_S,
                       msg="waiting for the broker to accept the messages")
        accepted: list[int] = []
        for m, d in zip(messages, deliveries, strict=True):
            if d.remote_state != Delivery.ACCEPTED:
                return accepted, (f"message {m.unique_id} not accepted by the broker "
                                  f"({d.remote_state})")
            accepted.append(m.seq)
        return accepted, None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing a broken connection may fail too; it is gone either way
            logger.debug("closing the AMQP connection failed", exc_info=True)


class CfxPublisher:
    """The background publisher of one outbox.

    Args:
        outbox: The outbox of the records database.
        target: The broker and address.
    """

    def __init__(self, outbox: Outbox, target: AmqpTarget, *, batch: int = BATCH,
                 poll_s: float = POLL_S) -> None:
        self.outbox = outbox
        self.target = target
        self.batch = batch
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: _Link | None = None
        self._lock = threading.Lock()
        self._published = 0
        self._last_sent_at: dt.datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: dt.datetime | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the CFX publisher is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pcb-cfx-publisher",
                                        daemon=True)
        self._thread.start()
        logger.info("publishing CFX messages to %s %s", self.target.url, self.target.address)

    def close(self, timeout_s: float = 15.0) -> None:
        """Stops the thread (after the batch in flight) and closes the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._disconnect()

    def status(self) -> PublisherStatus:
        with self._lock:
            return PublisherStatus(self.target.url, self.target.address,
                                   self._link is not None, self._published, self._last_sent_at,
                                   self._last_error, self._last_error_at)

    # --- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = MIN_BACKOFF_S
        next_gauge = next_prune = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_gauge:
                    next_gauge = now + GAUGE_INTERVAL_S
                    CFX_PENDING.set(self.outbox.pending())
                if now >= next_prune:
                    next_prune = now + PRUNE_INTERVAL_S
                    self.outbox.prune(KEEP_SENT)
                sent = self.publish_once()
            except Exception as exc:  # the loop outlives any broker or database failure
                self._failed(exc)
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            backoff = MIN_BACKOFF_S
            if not sent:
                self._stop.wait(self.poll_s)

    def publish_once(self) -> int:
        """Claims and sends one batch; returns how many the broker accepted (0: none waiting,
        or another replica holds them). Raises when the broker or the database fails, after
        marking what was accepted."""
        with self.outbox.claim(self.batch) as claim:
            if not claim.messages:
                return 0
            if self._link is None:
                link = _Link(self.target)
                with self._lock:
                    self._link = link
                    logger.info("connected to the CFX broker %s", self.target.url)
            try:
                claim.sent, claim.error = self._link.send(claim.messages)
            except Exception as exc:
                # The deliveries settled before the failure were accepted or not: unknown
                # here, so all of them are sent again (same UniqueIDs).
                claim.error = _describe(exc)
                self._disconnect()
                raise
        if claim.sent:
            with self._lock:
                self._published += len(claim.sent)
                self._last_sent_at = dt.datetime.now(dt.UTC)
            CFX_PUBLISHED.inc(len(claim.sent))
        if claim.error is not None:
            raise RuntimeError(claim.error)
        return len(claim.sent)

    def _failed(self, exc: BaseException) -> None:
        CFX_PUBLISH_ERRORS.inc()
        text = _describe(exc)
        with self._lock:
            first = self._last_error is None or self._last_error != text
            self._last_error, self._last_error_at = text, dt.datetime.now(dt.UTC)
        # Once per distinct error, not once per retry: a broker down for an hour would
        # otherwise fill the log.
        if first:
            logger.warning("CFX publishing to %s failed (%s): messages wait in the outbox; "
                           "retrying with backoff", self.target.url, text)

    def _disconnect(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
