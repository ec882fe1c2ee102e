"""The UDP listener's socket, as the kernel sees it."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest
from twisted.internet.protocol import DatagramProtocol

from sipgw.proxy.transport.udp import RECEIVE_BUFFER, TimestampingPort, _grow_receive_buffer
from tests.helpers.liveproxy import JumpingReactor


def test_the_receive_buffer_grows_to_what_the_kernel_allows():
    # A burst of datagrams that arrives while sipgw is busy must wait in the kernel, not be
    # dropped there (each drop is a 500 ms retransmission later).
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        got = _grow_receive_buffer(sock)
        assert got == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # Linux doubles the value asked for (bookkeeping), up to twice rmem_max.
        assert got >= min(RECEIVE_BUFFER, rmem_max)
        assert got >= default


class Collect(DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple]] = []

    def datagramReceived(self, data: bytes, addr: tuple) -> None:
        self.got.append((data, addr))


@pytest.fixture
def reactor():
    r = JumpingReactor()
    yield r
    r.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_port_reports_one_kernel_wait_per_wake_up_and_delivers_every_datagram(reactor,
                                                                                 host):
    delays: list[float] = []
    proto = Collect()
    port = TimestampingPort(0, proto, host, 65535, reactor, delays.append)
    port.startListening()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as peer:
            peer.bind((host, 0))
            target = (host, port.getHost().port)
            sent = time.time()
            for n in range(5):
                peer.sendto(b"datagram %d" % n, target)
            reactor.until(lambda: len(proto.got) == 5, "five datagrams read")
            waited = time.time() - sent
            assert [d for d, _ in proto.got] == [b"datagram %d" % n for n in range(5)]
            assert {a for _, a in proto.got} == {peer.getsockname()[:2]}  # (host, port)
            # Read in one wake-up: one wait, that of the oldest, and no longer than the
            # time since it was sent.
            assert len(delays) == 1 and 0 <= delays[0] <= waited
    finally:
        port.stopListening()


def test_a_refused_datagram_on_a_connected_port_is_reported_as_twisted_does(reactor):
    class Refused(Collect):
        refused = 0

        def connectionRefused(self) -> None:
            self.refused += 1

    proto = Refused()
    port = TimestampingPort(0, proto, "127.0.0.1", 65535, reactor, lambda d: None)
    port.startListening()
    port.stopReading()  # read by hand below: epoll reports the error as a lost connection
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
            closed.bind(("127.0.0.1", 0))
            nobody = closed.getsockname()
        port.connect(*nobody)
        port.write(b"anyone?")  # ICMP port unreachable comes back as ECONNREFUSED
        readable, _, _ = select.select([port.socket], [], [], 5.0)
        assert readable, "no ICMP error within 5 s"
        port.doRead()
        assert proto.refused == 1 and proto.got == []
        port.doRead()  # nothing left: EAGAIN is ignored, as Twisted does
        assert proto.refused == 1
    finally:
        port.stopListening()


def test_a_listener_stopped_while_the_service_stops_refuses_to_send_without_crashing(reactor):
    """Relay retransmission timers may fire after the listeners closed (SIGTERM): the send
    fails quietly (the branch fails) instead of logging a crash of the timer handler."""
    from sipgw.proxy.transport.udp import UdpListener, listen_udp

    listener = UdpListener("127.0.0.1", 0, lambda data, source: None)
    port = listen_udp(reactor, listener, lambda delay: None)
    assert listener.send(b"ping", "127.0.0.1", 9)
    stopped = port.stopListening()
    reactor.until(lambda: stopped.called, "the port to stop")
    assert listener.send(b"late", "127.0.0.1", 9) is False
