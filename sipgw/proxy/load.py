"""The load signal: how long work waits before sipgw gets to it.

Three measures, published as ``load:`` statistics on every tick (every ``TICK`` seconds):

- UDP queueing delay: how long a datagram sat in the kernel's receive queue before sipgw
  read it, from the kernel's receive timestamp (``transport/udp.py`` reports each one to
  ``LoadMonitor.udp.observe``). Past capacity this is where a UDP proxy's backlog hides.
- Reactor lag: how late the tick itself runs. Work queued inside sipgw (timers, reads of
  every socket, the control socket) waits as long as the tick does.
- Stream backlog: bytes TCP, TLS and WebSocket peers sent that sit unread in the kernel
  (``FIONREAD`` of each connection's socket), sampled once a ``WINDOW``.

Each delay is kept as an exponentially weighted mean and the largest value of the last
``WINDOW`` seconds, in microseconds (statistics are integers).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Callable, Iterable

from twisted.logger import Logger

from sipgw.proxy.stats import StatDef, Stats

log = Logger(namespace="sipgw.load")

TICK = 0.1  # seconds between ticks: the lag's resolution, and how fresh the statistics are
WINDOW = 1.0  # seconds: the "recent" of a recent max, and the stream sampling period
WEIGHT = 1 / 8  # of a new sample in the weighted mean (as TCP's smoothed RTT)
_NONE = float("inf")  # the least delay of a tick with no sample yet

LOAD_STATS = (
    StatDef(group="load", name="udp_queue_delay_us", gauge=True,
            help="how long datagrams waited in the kernel before sipgw read them, weighted "
                 "mean in microseconds (kernel receive timestamps; 0 when none arrive)"),
    StatDef(group="load", name="udp_queue_delay_max_us", gauge=True,
            help="the longest wait of a datagram in the kernel in the last second, "
                 "microseconds"),
    StatDef(group="load", name="reactor_lag_us", gauge=True,
            help="how late sipgw's event loop runs a timer, weighted mean in microseconds "
                 "(work waiting inside sipgw)"),
    StatDef(group="load", name="reactor_lag_max_us", gauge=True,
            help="the latest a timer ran in the last second, microseconds"),
    StatDef(group="load", name="stream_backlog_bytes", gauge=True,
            help="bytes received on TCP, TLS and WebSocket connections that sipgw has not "
                 "read yet, all connections together (sampled each second)"),
    StatDef(group="load", name="stream_backlog_max_bytes", gauge=True,
            help="the most unread bytes on one TCP, TLS or WebSocket connection (sampled "
                 "each second)"),
)


class DelayGauge:
    """A weighted mean, a recent maximum and the least of each tick, of delays (seconds).

    ``observe`` is on the hot path: a multiply and three comparisons. ``tick`` closes one
    tick: a tick with no sample counts as a zero (nothing waited: nothing came, or it was
    read at once), and ``tick_min`` is its least delay (0 with no sample): more than zero
    only when everything read in the tick had waited, a queue that stood the whole tick
    rather than a burst; ``roll`` closes one window of the maximum.
    """

    __slots__ = ("mean", "tick_min", "_tick_min", "_window_max", "_last_max")

    def __init__(self) -> None:
        self.mean = 0.0
        self.tick_min = 0.0
        self._tick_min = _NONE
        self._window_max = 0.0
        self._last_max = 0.0

    def observe(self, delay: float) -> None:
        if delay < 0.0:
            delay = 0.0  # the wall clock stepped back between the kernel and us
        self.mean += (delay - self.mean) * WEIGHT
        if delay > self._window_max:
            self._window_max = delay
        if delay < self._tick_min:
            self._tick_min = delay

    def tick(self) -> None:
        if self._tick_min == _NONE:
            self.mean -= self.mean * WEIGHT
            self.tick_min = 0.0
        else:
            self.tick_min = self._tick_min
        self._tick_min = _NONE

    def roll(self) -> None:
        self._last_max, self._window_max = self._window_max, 0.0

    @property
    def recent_max(self) -> float:
        """The largest delay of this window and the one before: a spike shows at once
        and stays for at least one window."""
        return max(self._window_max, self._last_max)


def unread_bytes(fileno: int) -> int:
    """Bytes waiting in a socket's receive queue (Linux ``FIONREAD``); 0 when it is gone."""
    try:
        got = fcntl.ioctl(fileno, termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):  # closed meanwhile (fileno -1)
        return 0
    return int(struct.unpack("i", got)[0])


def socket_of(flow: object) -> socket.socket | None:
    """The kernel socket under a connection: TCP's transport holds it; TLS (and WSS) wrap
    that transport once more."""
    transport = getattr(flow, "transport", None)
    for _ in range(3):
        if transport is None:
            return None
        sock = getattr(transport, "socket", None)
        if isinstance(sock, socket.socket):
            return sock
        transport = getattr(transport, "transport", None)
    return None


class LoadMonitor:
    """Measures the load signal on ``clock`` and publishes it in ``stats``.

    ``connections()`` gives the open stream connections (the flow table's); ``udp`` is
    what the UDP ports report their datagrams' queueing delays to. ``on_tick``, when
    given, is told on every tick how late sipgw is: the least a datagram read during the
    tick had waited in the kernel (the queue that stood all tick long), or how late the
    tick itself ran, whichever is more (seconds; the overload control's signal,
    ``overload.py``).
    """

    def __init__(self, clock, stats: Stats, connections,
                 on_tick: Callable[[float], None] | None = None) -> None:
        self.clock = clock
        self.stats = stats
        self.connections = connections
        self.on_tick = on_tick
        stats.declare(LOAD_STATS)
        self.udp = DelayGauge()
        self.lag = DelayGauge()
        self._ticks_per_window = max(1, round(WINDOW / TICK))
        self._ticks = 0
        self._due = 0.0
        self._call = None

    def start(self) -> None:
        self._due = self.clock.seconds() + TICK
        self._call = self.clock.callLater(TICK, self._tick)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _tick(self) -> None:
        now = self.clock.seconds()
        lag = now - self._due
        self.lag.observe(lag)
        self.udp.tick()
        self.lag.tick()
        self._ticks += 1
        if self._ticks % self._ticks_per_window == 0:
            self._sample_streams(self.connections())
            self.udp.roll()
            self.lag.roll()
        self._publish()
        if self.on_tick is not None:
            self.on_tick(max(self.udp.tick_min, lag))
        # The next tick is due a TICK after this one ran (not after it was due): a stall
        # is counted once, not again by every tick it made late.
        self._due = now + TICK
        self._call = self.clock.callLater(TICK, self._tick)

    def _sample_streams(self, flows: Iterable[object]) -> None:
        total = most = 0
        for flow in flows:
            sock = socket_of(flow)
            if sock is None:
                continue
            n = unread_bytes(sock.fileno())
            total += n
            if n > most:
                most = n
        self.stats.set("load:stream_backlog_bytes", total)
        self.stats.set("load:stream_backlog_max_bytes", most)

    def _publish(self) -> None:
        s = self.stats
        s.set("load:udp_queue_delay_us", round(self.udp.mean * 1e6))
        s.set("load:udp_queue_delay_max_us", round(self.udp.recent_max * 1e6))
        s.set("load:reactor_lag_us", round(self.lag.mean * 1e6))
        s.set("load:reactor_lag_max_us", round(self.lag.recent_max * 1e6))
