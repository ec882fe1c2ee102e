"""TCP flows: framing, RFC 5626 keepalives, idle timeout, reuse — with StringTransport."""

from __future__ import annotations

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from sipgw.config import LimitsConfig
from sipgw.proxy.load import FULL_READ, StreamBacklog
from sipgw.proxy.transport import FlowTable
from sipgw.proxy.transport.stream import StreamTransport
from sipgw.sip.parser import Limits

OPTIONS = (
    b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:40000;branch=z9hG4bK1\r\n"
    b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: c1\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def make_stack(**limits):
    """A TCP transport on a memory reactor; ``limits``: [limits] keys changed."""
    reactor = MemoryReactorClock()
    received = []
    failed = []
    stack = StreamTransport(
        reactor, reactor, FlowTable(), lambda data, src: received.append((data, src)),
        limits=Limits(), settings=LimitsConfig(**limits),
        on_send_failed=lambda h, p, t: failed.append((h, p, t)),
        refuse=lambda data, src, err: failed.append((data, err.reason)),
    )
    return reactor, stack, received, failed


def connect(stack):
    from sipgw.proxy.transport.stream import _ServerFactory

    proto = _ServerFactory(stack).buildProtocol(None)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 5060),
        peerAddress=IPv4Address("TCP", "192.0.2.1", 40000),
    )
    proto.makeConnection(transport)
    return proto, transport


def test_messages_split_anywhere_arrive_whole_with_the_flow_as_source():
    _, stack, received, _ = make_stack()
    proto, _ = connect(stack)
    for i in range(0, len(OPTIONS * 2), 7):
        proto.dataReceived((OPTIONS * 2)[i : i + 7])
    assert [d for d, _ in received] == [OPTIONS, OPTIONS]
    src = received[0][1]
    assert (src.transport, src.host, src.port, src.flow_id) == ("tcp", "192.0.2.1", 40000,
                                                                proto.flow_id)


def test_a_double_crlf_ping_is_answered_with_one_crlf():
    _, stack, received, _ = make_stack()
    proto, transport = connect(stack)
    proto.dataReceived(b"\r\n\r\n")
    assert transport.value() == b"\r\n"
    assert received == []


def test_a_broken_content_length_is_answered_then_the_connection_closed_and_forgotten():
    _, stack, received, refused = make_stack()
    proto, transport = connect(stack)
    assert stack.flows.get(proto.flow_id) is proto
    bad = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: -5")
    # A good message in the same segment before the bad one is still delivered.
    proto.dataReceived(OPTIONS + bad)
    assert [d for d, _ in received] == [OPTIONS]
    [(head, reason)] = refused
    assert head.startswith(b"OPTIONS ") and reason == "Bad Content-Length header"
    assert transport.disconnecting
    proto.connectionLost(None)
    assert stack.flows.get(proto.flow_id) is None


def test_an_idle_connection_is_closed_after_the_timeout_and_traffic_resets_it():
    reactor, stack, _, _ = make_stack(tcp_idle_timeout=10, tcp_first_message_timeout=0)
    proto, transport = connect(stack)
    reactor.advance(9)
    proto.dataReceived(b"\r\n\r\n")
    reactor.advance(9)
    assert not transport.disconnecting
    reactor.advance(1.5)
    assert transport.disconnecting


def test_replies_go_down_the_flow_they_name_and_unknown_flows_connect():
    reactor, stack, _, _ = make_stack()
    proto, transport = connect(stack)
    stack.send(b"reply", "192.0.2.1", 40000, proto.flow_id)
    assert transport.value() == b"reply"
    stack.send(b"hello", "198.51.100.5", 5060, None)
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port) == ("198.51.100.5", 5060)
    # The connection completes: what was queued goes out first.
    out = factory.buildProtocol(None)
    t2 = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.5", 5060),
                         hostAddress=IPv4Address("TCP", "127.0.0.1", 41000))
    out.makeConnection(t2)
    assert t2.value() == b"hello"
    # A second message to the same address reuses the connection (RFC 3261 §18.1.1).
    stack.send(b"again", "198.51.100.5", 5060, None)
    assert t2.value() == b"helloagain"
    assert len(reactor.tcpClients) == 1


def test_a_failed_connect_is_reported_so_the_branch_fails_at_once():
    reactor, stack, _, failed = make_stack()
    stack.send(b"x", "198.51.100.5", 5060, None)
    _, _, factory, _, _ = reactor.tcpClients[0]
    factory.clientConnectionFailed(None, _Reason())
    assert failed == [("198.51.100.5", 5060, "tcp")]


class _Reason:
    def getErrorMessage(self) -> str:
        return "Connection refused"



def test_a_connection_that_read_32_kib_tells_the_load_signal_what_its_socket_still_holds():
    reactor = MemoryReactorClock()
    received = []
    backlog = StreamBacklog()
    stack = StreamTransport(reactor, reactor, FlowTable(),
                            lambda data, src: received.append(data), limits=Limits(),
                            backlog=backlog)
    proto, transport = connect(stack)
    peer, ours = socket.socketpair()
    try:
        transport.socket = ours  # the kernel socket under the connection, as tcp.Server's
        proto.dataReceived(OPTIONS)  # less than FULL_READ read: the kernel is not asked
        assert backlog.behind == {}
        peer.sendall(b"x" * 1000)  # what the kernel still holds after the next read
        batch = OPTIONS * (FULL_READ // len(OPTIONS) + 1)
        proto.dataReceived(batch)
        assert len(received) == 1 + batch.count(b"OPTIONS sip:")
        assert backlog.behind == {proto: [len(OPTIONS) + len(batch), 1000]}
    finally:
        peer.close()
        ours.close()
