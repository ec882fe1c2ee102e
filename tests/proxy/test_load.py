"""The load signal: the delay estimator, the reactor's lag, streams' unread bytes."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from twisted.internet.task import Clock

from sipgw.proxy.load import TICK, WINDOW, DelayGauge, LoadMonitor, socket_of, unread_bytes
from sipgw.proxy.stats import Stats

TICKS_PER_WINDOW = round(WINDOW / TICK)


def monitor(flows=()):
    clock, stats = Clock(), Stats()
    load = LoadMonitor(clock, stats, lambda: flows)
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


def test_unread_stream_bytes_are_summed_over_connections_each_window():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    clients, accepted = [], []
    try:
        for _ in range(2):
            c = socket.create_connection(server.getsockname())
            clients.append(c)
            accepted.append(server.accept()[0])
        clients[0].sendall(b"x" * 1000)
        clients[1].sendall(b"y" * 300)
        # A TCP flow's transport holds the socket; a TLS one wraps that transport once more.
        tcp_flow = SimpleNamespace(transport=SimpleNamespace(socket=accepted[0]))
        tls_flow = SimpleNamespace(transport=SimpleNamespace(
            transport=SimpleNamespace(socket=accepted[1])))
        gone = SimpleNamespace(transport=None)
        assert socket_of(tls_flow) is accepted[1] and socket_of(gone) is None
        clock, stats, load = monitor([tcp_flow, tls_flow, gone])
        ticks(clock, TICKS_PER_WINDOW)
        assert stats.get("load:stream_backlog_bytes") == 1300
        assert stats.get("load:stream_backlog_max_bytes") == 1000
        accepted[0].recv(4096)
        accepted[1].recv(4096)
        ticks(clock, TICKS_PER_WINDOW)
        assert stats.get("load:stream_backlog_bytes") == 0
        load.stop()
    finally:
        for s in (*clients, *accepted, server):
            s.close()


def test_a_closed_socket_has_no_unread_bytes():
    s = socket.socket()
    s.close()
    assert unread_bytes(s.fileno()) == 0


def test_each_tick_tells_how_late_sipgw_is_by_the_queue_that_stood_all_tick_or_its_lag():
    told: list[float] = []
    clock, stats = Clock(), Stats()
    load = LoadMonitor(clock, stats, lambda: (), on_tick=told.append)
    load.start()
    load.udp.observe(0.300)  # a burst: one datagram waited, the next ones did not
    load.udp.observe(0.001)
    ticks(clock, 1)
    load.udp.observe(0.200)  # a queue that stood: everything read had waited
    load.udp.observe(0.150)
    ticks(clock, 1)
    ticks(clock, 1)  # nothing came
    clock.advance(TICK + 0.250)  # a stall of the loop itself
    assert [round(t, 3) for t in told] == [0.001, 0.150, 0.0, 0.250]
    load.stop()
