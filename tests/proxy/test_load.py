"""The load signal: the delay estimator, the reactor's lag, streams' unread bytes."""

from __future__ import annotations

import contextlib
import socket
from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock

from sipgw.proxy.load import (
    FULL_READ,
    TICK,
    WINDOW,
    DelayGauge,
    LoadMonitor,
    kernel_drops,
    socket_of,
    unread_bytes,
)
from sipgw.proxy.stats import Stats
from tests.helpers.poll import wait_until

TICKS_PER_WINDOW = round(WINDOW / TICK)


def monitor():
    clock, stats = Clock(), Stats()
    load = LoadMonitor(clock, stats)
    load.start()
    return clock, stats, load


def ticks(clock: Clock, n: int) -> None:
    for _ in range(n):
        clock.advance(TICK)


def test_the_mean_follows_the_delays_and_the_max_keeps_the_worst():
    gauge = DelayGauge()
    for _ in range(100):
        gauge.observe(0.010)
    assert abs(gauge.mean - 0.010) < 1e-6
    gauge.observe(0.200)
    assert 0.010 < gauge.mean < 0.200 and gauge.recent_max == 0.200
    gauge.observe(-0.5)  # the wall clock stepped back: no negative wait
    assert gauge.recent_max == 0.200 and gauge.mean > 0


def test_the_max_is_forgotten_after_two_windows_and_the_mean_decays_when_nothing_comes():
    gauge = DelayGauge()
    gauge.observe(0.300)
    gauge.roll()
    assert gauge.recent_max == 0.300  # still shown for a window
    gauge.roll()
    assert gauge.recent_max == 0.0
    for _ in range(40):
        gauge.tick()  # ticks with no datagram: nothing waited
    assert gauge.mean < 0.300 / 100


def test_udp_delays_are_published_in_microseconds_and_fall_back_when_the_burst_is_over():
    clock, stats, load = monitor()
    for _ in range(50):
        load.udp.observe(0.250)
    ticks(clock, 1)
    assert stats.get("load:udp_queue_delay_max_us") == 250_000
    assert stats.get("load:udp_queue_delay_us") > 200_000
    ticks(clock, 6 * TICKS_PER_WINDOW)
    assert stats.get("load:udp_queue_delay_max_us") == 0
    assert stats.get("load:udp_queue_delay_us") < 1_000
    load.stop()


def test_a_stalled_reactor_shows_as_lag_once_and_then_recovers():
    clock, stats, load = monitor()
    ticks(clock, 3)
    assert stats.get("load:reactor_lag_max_us") == 0
    clock.advance(TICK + 0.400)  # the loop was busy 400 ms past the tick's time
    assert stats.get("load:reactor_lag_max_us") == 400_000
    assert stats.get("load:reactor_lag_us") == 50_000  # one of eight
    ticks(clock, 3 * TICKS_PER_WINDOW)
    assert stats.get("load:reactor_lag_max_us") == 0
    assert stats.get("load:reactor_lag_us") < 1_000
    load.stop()
    assert not clock.getDelayedCalls()


@pytest.fixture
def connections():
    """Two loopback TCP connections: (what the peer writes on, what sipgw reads from)."""
    server = socket.socket()
    # Room for what a test sends before it reads (the accepted sockets inherit it).
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    server.bind(("127.0.0.1", 0))
    server.listen()
    pairs = []
    for _ in range(2):
        c = socket.create_connection(server.getsockname())
        pairs.append((c, server.accept()[0]))
    yield pairs
    for pair in pairs:
        for s in pair:
            s.close()
    server.close()


class Flow:
    """A connection as the transports have it (hashable by identity, as a protocol is)."""

    def __init__(self, transport: object) -> None:
        self.transport = transport
        self.unasked = 0


def flow(sock: socket.socket, *, tls: bool = False) -> Flow:
    """TCP's transport holds the socket; TLS wraps that transport once more."""
    transport = SimpleNamespace(socket=sock)
    return Flow(SimpleNamespace(transport=transport) if tls else transport)


def sent(peer: socket.socket, ours: socket.socket, n: int) -> None:
    peer.sendall(b"x" * n)
    wait_until(lambda: unread_bytes(ours.fileno()) >= n, timeout=5, what=f"{n} bytes arrived",
               caller=SimpleNamespace(describe=lambda: "two loopback TCP connections"))


def test_socket_of_finds_the_kernel_socket_under_tcp_and_tls():
    plain, wrapped = socket.socket(), socket.socket()
    try:
        assert socket_of(flow(plain)) is plain
        assert socket_of(flow(wrapped, tls=True)) is wrapped
        assert socket_of(Flow(None)) is None
    finally:
        plain.close()
        wrapped.close()


def test_what_full_reads_left_unread_is_published_each_tick_and_waits_as_long_as_it_takes_to_read(
        connections):
    clock, stats, load = monitor()
    (peer_a, ours_a), (peer_b, ours_b) = connections
    a, b = flow(ours_a), flow(ours_b, tls=True)
    sent(peer_a, ours_a, 3 * FULL_READ)
    sent(peer_b, ours_b, 1000)
    # Less than FULL_READ read: the kernel is not asked (1000 bytes stay there, unseen:
    # the next pass of the loop reads them).
    load.streams.read(b, 500)
    # Connection a read a full buffer twice in the tick and left a third behind.
    ours_a.recv(FULL_READ)
    load.streams.read(a, FULL_READ)
    ours_a.recv(FULL_READ)
    load.streams.read(a, FULL_READ)
    ticks(clock, 1)
    assert stats.get("load:stream_backlog_bytes") == FULL_READ
    assert stats.get("load:stream_backlog_max_bytes") == FULL_READ
    # At 2 × FULL_READ a tick, the FULL_READ left waits half a tick.
    assert stats.get("load:stream_queue_delay_max_us") == round(TICK / 2 * 1e6)

    # The next tick it reads a full buffer, which empties its socket: it caught up.
    ours_a.recv(FULL_READ)
    load.streams.read(a, FULL_READ)
    ticks(clock, 1)
    assert stats.get("load:stream_backlog_bytes") == 0
    assert stats.get("load:stream_queue_delay_max_us") == round(TICK / 2 * 1e6)  # a window
    ticks(clock, 2 * TICKS_PER_WINDOW)
    assert stats.get("load:stream_queue_delay_max_us") == 0
    assert stats.get("load:stream_queue_delay_us") < 1_000
    load.stop()


def test_small_reads_add_up_to_one_look_as_tls_records_do(connections):
    clock, stats, load = monitor()
    (peer, ours), _ = connections
    conn = flow(ours, tls=True)
    sent(peer, ours, FULL_READ + 1000)
    half = FULL_READ // 2
    ours.recv(FULL_READ)  # one read from the socket, handed on a record at a time
    load.streams.read(conn, half)
    assert load.streams.behind == {}
    load.streams.read(conn, half)
    assert load.streams.behind == {conn: [FULL_READ, 1000]}
    ticks(clock, 1)
    assert stats.get("load:stream_backlog_bytes") == 1000
    assert conn.unasked == 0
    load.stop()


def test_a_closed_socket_has_no_unread_bytes():
    s = socket.socket()
    s.close()
    assert unread_bytes(s.fileno()) == 0


def test_each_tick_tells_how_late_sipgw_is_by_the_queue_that_stood_all_tick_or_its_lag():
    told: list[tuple[float, float]] = []
    clock, stats = Clock(), Stats()
    load = LoadMonitor(clock, stats, on_tick=lambda *signal: told.append(signal))
    load.start()
    load.udp.observe(0.300)  # a burst: one datagram waited, the next ones did not
    load.udp.observe(0.001)
    ticks(clock, 1)
    load.udp.observe(0.200)  # a queue that stood: everything read had waited
    load.udp.observe(0.150)
    ticks(clock, 1)
    ticks(clock, 1)  # nothing came
    clock.advance(TICK + 0.250)  # a stall of the loop itself
    # And what a request over a stream waits: the lag, not a datagram's queue.
    assert [(round(t, 3), round(s, 3)) for t, s in told] == [
        (0.001, 0.0), (0.150, 0.0), (0.0, 0.0), (0.250, 0.250)]
    load.stop()


def test_a_stream_backlog_that_stands_makes_the_tick_late_as_long_as_it_will_wait(connections):
    told: list[tuple[float, float]] = []
    clock, stats = Clock(), Stats()
    load = LoadMonitor(clock, stats, on_tick=lambda *signal: told.append(signal))
    load.start()
    (peer, ours), _ = connections
    conn = flow(ours)
    sent(peer, ours, 5 * FULL_READ)
    for _ in range(2):  # two buffers read a tick, three left: a tick and a half to wait
        ours.recv(FULL_READ)
        load.streams.read(conn, FULL_READ)
    ticks(clock, 1)
    ticks(clock, 1)  # not read at all: nothing said of it (the lag says the loop is late)
    wait = round(3 * TICK / 2, 3)  # for UDP's signal and for the streams' alike
    assert [(round(t, 3), round(s, 3)) for t, s in told] == [(wait, wait), (0.0, 0.0)]
    load.stop()


def test_datagrams_the_kernel_drops_on_a_full_queue_are_counted_tick_by_tick():
    """Datagrams sent faster than the socket is read, its queue small: the kernel drops
    some, which no delay shows (sipgw never sees them). Counted in
    ``load:udp_kernel_drops`` from the moment sipgw watches the socket, on the tick
    after they happened."""
    clock, stats, load = monitor()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ours, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ours.bind(("127.0.0.1", 0))
        ours.setblocking(False)

        def flood() -> None:
            for _ in range(100):
                peer.sendto(b"x" * 100, ours.getsockname())

        def drain() -> None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    ours.recv(2048)

        def counted_after_a_tick() -> int:
            ticks(clock, 1)
            return stats.get("load:udp_kernel_drops")

        flood()  # before sipgw watched it: not sipgw's
        before = kernel_drops(ours)
        assert before
        drain()
        load.kernel.watch(ours)
        assert counted_after_a_tick() == 0
        flood()
        assert counted_after_a_tick() == kernel_drops(ours) - before > 0
        drain()
        counted = stats.get("load:udp_kernel_drops")
        assert counted_after_a_tick() == counted
    assert counted_after_a_tick() == counted  # closed: forgotten
    load.stop()
