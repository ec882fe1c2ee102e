"""Bounded resources (issue 7): what one peer may cost, and how reaching a cap is told.

Every cap reached has a defined answer (a 503 with Retry-After, a refused or closed
connection, an RPC error) and a log line. The log line is rate-limited per cap by
``CapLog``: a flood that hits a cap ten thousand times a second writes one line every
``interval`` seconds, saying how many more it did not write, instead of ten thousand.

Pieces shared by the stream (TCP, TLS) and WebSocket transports:

* ``ConnectionCaps``: connections open now, overall and per client address, against the
  configured caps;
* ``SendQueue``: how far behind a peer is in reading what we send it. Twisted keeps what
  the socket does not take in user space, without bound; this puts the bound on it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from sipgw.proxy.stats import StatDef, Stats

LOG_INTERVAL = 10.0  # seconds between two lines about the same cap

# Kamailio's tcp: statistics (its WebSocket connections are TCP connections too).
TCP_STATS = (
    StatDef(group="tcp", name="current_opened_connections", help="TCP and TLS connections open now (in and out; WebSocket not included)", gauge=True),  # noqa: E501
    StatDef(group="tcp", name="local_reject", help="TCP and TLS connections refused by limits.tcp_max_connections or limits.tcp_max_connections_per_address"),  # noqa: E501
    StatDef(group="tcp", name="con_timeout", help="TCP and TLS connections closed by sipgw after limits.tcp_first_message_timeout or limits.tcp_idle_timeout"),  # noqa: E501
    StatDef(group="tcp", name="sendq_full", help="TCP, TLS, WS and WSS connections closed because the peer stopped reading (limits.max_write_queue)"),  # noqa: E501
)


class CapLog:
    """One line per key per ``interval`` seconds, however often it comes: a cap reached
    (``reached``, its config key named) or a refusal said at ``level`` (``once``)."""

    def __init__(self, log: Logger, now: Callable[[], float],
                 interval: float = LOG_INTERVAL, level: LogLevel = LogLevel.warn) -> None:
        self.log = log
        self.now = now
        self.interval = interval
        self.level = level
        self._last: dict[str, tuple[float, int]] = {}  # key → (time of the line, unsaid)

    def reached(self, cap: str, format: str, **fields: object) -> None:
        """``cap`` (the config key) was hit; ``format`` says what happened this time."""
        self.once(cap, format + " [{cap}]", cap=cap, **fields)

    def once(self, key: str, format: str, **fields: object) -> None:
        """``format`` logged, unless a line of ``key`` was within ``interval``."""
        now = self.now()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        unsaid = last[1] if last is not None else 0
        more = f" ({unsaid} more since the last line)" if unsaid else ""
        self.log.emit(self.level, format + "{more}", more=more, **fields)
        self._last[key] = (now, 0)


class ConnectionCaps:
    """Connections open now, in total and per client address, against two config keys."""

    def __init__(self, total_key: str, per_address_key: str, *, max_total: int,
                 max_per_address: int) -> None:
        self.total_key = total_key
        self.per_address_key = per_address_key
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self.per_address: dict[str, int] = {}

    def refusal(self, host: str) -> str:
        """Why one more connection from ``host`` is refused ("" when it is not)."""
        if self.total >= self.max_total:
            return f"{self.total} connections open, {self.total_key} = {self.max_total}"
        have = self.per_address.get(host, 0)
        if have >= self.max_per_address:
            return f"{host} has {have} connections open, " \
                   f"{self.per_address_key} = {self.max_per_address}"
        return ""

    def add(self, host: str) -> None:
        self.total += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1

    def remove(self, host: str) -> None:
        self.total -= 1
        left = self.per_address.get(host, 1) - 1
        if left > 0:
            self.per_address[host] = left
        else:
            self.per_address.pop(host, None)


def tell_slow_reader(stats: Stats, cap_log: CapLog, conn) -> None:
    """Count and log a connection about to be dropped for not reading (``conn``: a stream
    or WebSocket connection with ``transport_name``, ``flow_id``, ``source``, ``queue``)."""
    stats.inc("tcp:sendq_full")
    src = conn.source
    cap_log.reached("limits.max_write_queue",
                    "{t} flow {id} to {h}:{p} is not reading ({n} bytes waiting); dropped",
                    t=conn.transport_name, id=conn.flow_id, h=src.host if src else "?",
                    p=src.port if src else 0, n=conn.queue.queued)


@implementer(IPushProducer)
class SendQueue:
    """How many bytes one connection's peer has left unread, beyond the buffers.

    Registered on the transport as a streaming producer: the transport pauses it once
    more than its ``bufferSize`` (64 KiB) waits for the socket, and resumes it when all of
    it went. While paused, every byte written is counted; past ``limit`` the peer is not
    reading (or is gone without a FIN) and the connection is to be closed. So what sipgw
    holds for a peer stays under 64 KiB + ``limit`` + one message.
    """

    __slots__ = ("limit", "paused", "queued")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused = False
        self.queued = 0

    def attach(self, transport) -> None:
        transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.queued = 0

    def resumeProducing(self) -> None:
        self.paused = False
        self.queued = 0

    def stopProducing(self) -> None:
        self.paused = False

    def over(self, written: int) -> bool:
        """Count ``written`` bytes just handed to the transport; True when the peer is
        more than ``limit`` bytes behind."""
        if not self.paused:
            return False
        self.queued += written
        return self.queued > self.limit
