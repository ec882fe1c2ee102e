"""ICMP port unreachable, seen through a connected keepalive socket (real loopback sockets,
the check itself on ``task.Clock``)."""

from __future__ import annotations

import select
import socket

from twisted.internet.task import Clock

from sipgw.proxy.dispatcher.icmp import UnreachableDetector
from sipgw.proxy.transport import Destination


def test_a_closed_udp_port_is_reported_unreachable_and_a_listening_one_is_not():
    clock = Clock()
    seen: list[Destination] = []
    detector = UnreachableDetector(clock, seen.append)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as alive:
        alive.bind(("127.0.0.1", 0))
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
        closed.close()
        up = Destination(transport="udp", host="127.0.0.1", port=alive.getsockname()[1])
        down = Destination(transport="udp", host="127.0.0.1", port=dead_port)
        try:
            detector.ping(up)
            detector.ping(down)
            # A bounded wait for the ICMP error to reach the keepalive socket.
            poller = select.poll()
            poller.register(detector._sockets[("127.0.0.1", dead_port)], select.POLLERR)
            assert poller.poll(2000)
            assert select.select([alive], [], [], 2.0)[0]
            assert alive.recv(100) == b"\r\n\r\n"  # the keepalive a SIP peer ignores
            assert seen == []  # nothing before the check
            clock.advance(0.1)
            assert seen == [down]
        finally:
            detector.close()


def test_tcp_destinations_are_left_to_the_connection():
    detector = UnreachableDetector(Clock(), lambda d: None)
    detector.ping(Destination(transport="tcp", host="127.0.0.1", port=9))
    assert detector._sockets == {}
