"""The load signal: how long work waits before sipgw gets to it.

Three measures, published as ``load:`` statistics on every tick (every ``TICK`` seconds):

- UDP queueing delay: how long a datagram sat in the kernel's receive queue before sipgw
  read it, from the kernel's receive timestamp (``transport/udp.py`` reports each one to
  ``LoadMonitor.udp.observe``). Past capacity this is where a UDP proxy's backlog hides.
- Reactor lag: how late the tick itself runs. Work queued inside sipgw (timers, reads of
  every socket, the control socket) waits as long as the tick does.
- Stream backlog: bytes TCP, TLS and WebSocket peers sent that sit unread in the kernel
  after sipgw read what one read takes (``StreamBacklog``), and how long they will wait:
  those bytes over the rate sipgw reads that connection at. What one read takes waits
  for the loop's next pass, which the lag measures; this is what waits for more passes,
  a peer sending faster than sipgw reads it (a trunk of many calls on one connection, a
  client that does not wait for answers).

Each delay is kept as an exponentially weighted mean and the largest value of the last
``WINDOW`` seconds, in microseconds (statistics are integers).

Beside them, what no delay shows: datagrams the kernel dropped, a UDP socket's receive
queue full (``KernelDrops``, each socket's drop counter), counted in
``load:udp_kernel_drops``. Not part of the overload control's signal: cutting the share
further while the kernel drops (a full queue's wait falls as sipgw reads it faster for
refusing more, which looks like a backlog draining) was tried and served less at four
times the capacity (100 % of capacity against 107 %, six bench runs each).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

from sipgw.proxy.stats import StatDef, Stats

log = Logger(namespace="sipgw.load")

TICK = 0.1  # seconds between ticks: the lag's resolution, and how fresh the statistics are
WINDOW = 1.0  # seconds: the "recent" of a recent max
WEIGHT = 1 / 8  # of a new sample in the weighted mean (as TCP's smoothed RTT)
# Bytes a stream connection reads between two looks at what its socket still holds: half
# of what Twisted reads from a socket at once (64 KiB), so that a connection read in full
# reads is asked once a read. Counted in bytes handed on, not reads: over TLS they come a
# record at a time (16 KiB at most, one SIP message each from most clients).
FULL_READ = 1 << 15
_NONE = float("inf")  # the least delay of a tick with no sample yet

LOAD_STATS = (
    StatDef(group="load", name="udp_queue_delay_us", gauge=True,
            help="how long datagrams waited in the kernel before sipgw read them, weighted "
                 "mean in microseconds (kernel receive timestamps; 0 when none arrive)"),
    StatDef(group="load", name="udp_queue_delay_max_us", gauge=True,
            help="the longest wait of a datagram in the kernel in the last second, "
                 "microseconds"),
    StatDef(group="load", name="udp_kernel_drops",
            help="datagrams the kernel dropped because a UDP socket's receive queue was "
                 "full: sipgw never saw them (the drops column of /proc/net/udp, for "
                 "sipgw's sockets since it started)"),
    StatDef(group="load", name="reactor_lag_us", gauge=True,
            help="how late sipgw's event loop runs a timer, weighted mean in microseconds "
                 "(work waiting inside sipgw)"),
    StatDef(group="load", name="reactor_lag_max_us", gauge=True,
            help="the latest a timer ran in the last second, microseconds"),
    StatDef(group="load", name="stream_queue_delay_us", gauge=True,
            help="how long bytes left unread on TCP, TLS and WebSocket connections will "
                 "wait, at the rate sipgw reads them, weighted mean in microseconds (the "
                 "worst connection of each tick; 0 when every read empties its socket)"),
    StatDef(group="load", name="stream_queue_delay_max_us", gauge=True,
            help="the longest such wait in the last second, microseconds"),
    StatDef(group="load", name="stream_backlog_bytes", gauge=True,
            help="bytes TCP, TLS and WebSocket peers sent that were still unread after "
                 "sipgw's reads of the last tick, all connections together"),
    StatDef(group="load", name="stream_backlog_max_bytes", gauge=True,
            help="the most such bytes on one TCP, TLS or WebSocket connection in the "
                 "last tick"),
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


# Linux: getsockopt(SOL_SOCKET, SO_MEMINFO) gives the socket's memory counters, u32 each;
# the ninth (SK_MEMINFO_DROPS, since 4.6) counts what the kernel dropped on it.
SO_MEMINFO = 55
_MEMINFO = struct.Struct("9I")


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel has dropped on ``sock`` since it was opened; None where the
    kernel does not say (not Linux, or older than 4.6) or the socket is closed."""
    try:
        got = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
    except (OSError, ValueError):
        return None
    if len(got) < _MEMINFO.size:
        return None
    return int(_MEMINFO.unpack(got)[8])


class KernelDrops:
    """Datagrams the kernel dropped on the UDP sockets ``watch`` was given, tick by tick:
    one getsockopt per socket and tick, nothing on the hot path."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[socket.socket, int] = {}  # socket → its drops at the last look

    def watch(self, sock: socket.socket) -> None:
        """Count ``sock``'s drops from now on (those before, another process's, are not
        sipgw's: a worker's inherited socket, a port in use before)."""
        drops = kernel_drops(sock)
        if drops is not None:
            self._seen[sock] = drops

    def tick(self) -> int:
        """Datagrams dropped since the last tick, on every socket together; a socket that
        is closed is forgotten."""
        new = 0
        for sock, before in list(self._seen.items()):
            drops = kernel_drops(sock)
            if drops is None:
                del self._seen[sock]
                continue
            # The counter is an unsigned 32-bit integer: it wraps.
            new += (drops - before) & 0xFFFFFFFF
            self._seen[sock] = drops
        return new


class Reader(Protocol):
    """A stream connection as ``StreamBacklog`` sees it."""

    unasked: int  # bytes read since the kernel was last asked what its socket holds


class StreamBacklog:
    """What stream reads leave in the kernel, over one tick.

    The connections call ``read`` after each read, on the hot path; once a connection has
    read ``FULL_READ`` bytes since the last time, it asks the kernel how many more wait
    (``FIONREAD``, one ioctl): never for connections that read little, once a read for
    one read in full reads. ``tick`` closes the tick: for each connection found behind,
    the bytes left after its last look and the bytes read from it up to it.
    """

    __slots__ = ("behind",)

    def __init__(self) -> None:
        # connection → [bytes read up to its last look in this tick, bytes unread then];
        # emptied every tick.
        self.behind: dict[Reader, list[int]] = {}

    def read(self, conn: Reader, n: int) -> None:
        """``conn`` read ``n`` bytes and handled them."""
        read = conn.unasked + n
        if read < FULL_READ:
            conn.unasked = read
            return
        conn.unasked = 0
        sock = socket_of(conn)
        unread = unread_bytes(sock.fileno()) if sock is not None else 0
        seen = self.behind.get(conn)
        if seen is not None:
            seen[0] += read
            seen[1] = unread
        elif unread:
            self.behind[conn] = [read, unread]

    def tick(self, elapsed: float) -> tuple[float | None, int, int]:
        """Over the ``elapsed`` seconds of the tick: how long the bytes left unread will
        wait on the worst connection (its unread bytes over the rate it was read at in
        the tick, as its looks counted it; None when no connection was behind), the
        unread bytes of all of them, and of the one with most."""
        wait: float | None = None
        total = most = 0
        for read, unread in self.behind.values():
            total += unread
            if unread > most:
                most = unread
            if unread:
                wait = max(wait or 0.0, unread * elapsed / read)
        self.behind.clear()
        return wait, total, most


class LoadMonitor:
    """Measures the load signal on ``clock`` and publishes it in ``stats``.

    ``udp`` is what the UDP ports report their datagrams' queueing delays to, ``kernel``
    what they give their sockets to (``KernelDrops.watch``), ``streams`` what the stream
    connections report their reads to. ``on_tick``, when given, is told on every tick how
    late sipgw is, in seconds (the overload control's signal, ``overload.py``), the most
    of: the least a datagram read during the tick had waited in the kernel (the queue
    that stood all tick long), how late the tick itself ran, and how long what a stream
    connection left unread will wait; and the most of the last two, what a request over
    a stream waits.
    """

    def __init__(self, clock, stats: Stats,
                 on_tick: Callable[[float, float], None] | None = None) -> None:
        self.clock = clock
        self.stats = stats
        self.on_tick = on_tick
        stats.declare(LOAD_STATS)
        self.udp = DelayGauge()
        self.lag = DelayGauge()
        self.stream = DelayGauge()
        self.streams = StreamBacklog()
        self.kernel = KernelDrops()
        self._ticks_per_window = max(1, round(WINDOW / TICK))
        self._ticks = 0
        self._due = 0.0
        self._last = 0.0
        self._call = None

    def start(self) -> None:
        self._last = self.clock.seconds()
        self._due = self._last + TICK
        self._call = self.clock.callLater(TICK, self._tick)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _tick(self) -> None:
        now = self.clock.seconds()
        lag = now - self._due
        self.lag.observe(lag)
        wait, unread, most = self.streams.tick(now - self._last)
        if wait is not None:
            self.stream.observe(wait)
        for gauge in (self.udp, self.lag, self.stream):
            gauge.tick()
        self._ticks += 1
        if self._ticks % self._ticks_per_window == 0:
            for gauge in (self.udp, self.lag, self.stream):
                gauge.roll()
        self._publish()
        self.stats.set("load:stream_backlog_bytes", unread)
        self.stats.set("load:stream_backlog_max_bytes", most)
        dropped = self.kernel.tick()
        if dropped:
            self.stats.inc("load:udp_kernel_drops", dropped)
        if self.on_tick is not None:
            streams = max(lag, self.stream.tick_min)
            self.on_tick(max(self.udp.tick_min, streams), streams)
        # The next tick is due a TICK after this one ran (not after it was due): a stall
        # is counted once, not again by every tick it made late.
        self._last = now
        self._due = now + TICK
        self._call = self.clock.callLater(TICK, self._tick)

    def _publish(self) -> None:
        s = self.stats
        for name, gauge in (("udp_queue_delay", self.udp), ("reactor_lag", self.lag),
                            ("stream_queue_delay", self.stream)):
            s.set(f"load:{name}_us", round(gauge.mean * 1e6))
            s.set(f"load:{name}_max_us", round(gauge.recent_max * 1e6))
