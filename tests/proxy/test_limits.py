"""Bounded resources (issue 7): every cap reached has a defined answer and a log line, and
a flood that hits a cap thousands of times writes one line per interval, not thousands.

Protocol level: StringTransport connections, ``task.Clock`` time, the real proxy core.
"""

from __future__ import annotations

import dataclasses

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent

from sipgw.config import LimitsConfig
from sipgw.proxy.dialogs import Dialogs
from sipgw.proxy.identity import Identity, Listener
from sipgw.proxy.limits import CapLog, ConnectionCaps
from sipgw.proxy.registrar import MAX_BINDINGS_PER_FLOW, FlowFailed, Registrar
from sipgw.proxy.stats import Stats
from sipgw.proxy.trace import Tap, Tracer
from sipgw.proxy.transport import FlowTable, Source
from sipgw.proxy.transport.stream import _ServerFactory
from sipgw.rpc.registry import RpcError
from sipgw.sip.message import Request, Response
from sipgw.sip.parser import Limits, parse_message
from sipgw.tools.harness import ProxyHarness, config_with, valid_invite
from tests.helpers import wsframes as wf
from tests.proxy.auth.test_auth import Rig, answer, fail_once, sip_request
from tests.proxy.dispatcher.test_dispatcher_algorithms import invite as dispatcher_invite
from tests.proxy.dispatcher.test_dispatcher_algorithms import make as make_dispatcher
from tests.proxy.transport.test_stream import OPTIONS, make_stack
from tests.proxy.transport.ws.test_ws import Client, Stack


class Lines:
    """A Logger whose events are kept as formatted lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.log = Logger(observer=lambda event: self.lines.append(formatEvent(event)))

    def about(self, key: str) -> list[str]:
        return [line for line in self.lines if f"[{key}]" in line]


def capture(owner) -> Lines:
    """Replace ``owner.cap_log``'s logger; returns what it will write."""
    lines = Lines()
    owner.cap_log.log = lines.log
    return lines


def connect(stack, host: str = "192.0.2.1", port: int = 40000):
    proto = _ServerFactory(stack).buildProtocol(None)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 5060),
                                peerAddress=IPv4Address("TCP", host, port))
    proto.makeConnection(transport)
    return proto, transport


# --- the log line --------------------------------------------------------------------------


def test_a_cap_hit_a_thousand_times_logs_once_per_interval_with_the_count_of_the_rest():
    clock, lines = Clock(), Lines()
    caps = CapLog(lines.log, clock.seconds, interval=10)
    for i in range(1000):
        caps.reached("limits.max_transactions", "refused {i}", i=i)
    assert lines.lines == ["refused 0 [limits.max_transactions]"]
    clock.advance(9.9)
    caps.reached("limits.max_transactions", "refused {i}", i=1000)
    caps.reached("limits.tcp_max_connections", "other cap")  # its own line at once
    assert len(lines.lines) == 2
    clock.advance(0.2)
    caps.reached("limits.max_transactions", "refused {i}", i=1001)
    assert lines.lines[-1] == "refused 1001 [limits.max_transactions] " \
                              "(1000 more since the last line)"


def test_connection_caps_name_the_key_that_refuses():
    caps = ConnectionCaps("limits.a", "limits.b", max_total=3, max_per_address=2)
    caps.add("192.0.2.1")
    caps.add("192.0.2.1")
    assert "limits.b = 2" in caps.refusal("192.0.2.1")
    assert caps.refusal("192.0.2.2") == ""
    caps.add("192.0.2.2")
    assert "limits.a = 3" in caps.refusal("192.0.2.3")
    caps.remove("192.0.2.1")
    assert caps.refusal("192.0.2.1") == "" and caps.per_address == {"192.0.2.1": 1,
                                                                     "192.0.2.2": 1}


# --- transactions --------------------------------------------------------------------------


def test_a_full_transaction_table_answers_503_with_retry_after_and_logs_once_per_interval():
    h = ProxyHarness()
    config = config_with()
    h.proxy.relay.configure(config.timers, config.proxy,
                            dataclasses.replace(config.limits, max_transactions=10))
    lines = capture(h.proxy.relay)
    answers = [s for _ in range(500) for s in h.udp(valid_invite()) if s.status is not None]
    refused = [s.parse() for s in answers if s.status == 503]
    assert len(refused) == 500 - 5  # each relayed INVITE holds a server and a client
    assert {r.header("retry-after") for r in refused} == {"5"}
    [line] = lines.about("limits.max_transactions")
    assert "transaction table full (10); INVITE from 192.0.2.99 refused with 503" in line


# --- TCP and TLS connections ----------------------------------------------------------------


def test_connections_beyond_the_per_address_cap_are_closed_at_once_and_others_still_come_in():
    _, stack, _, _ = make_stack(tcp_max_connections_per_address=2, tcp_max_connections=3)
    lines = capture(stack)
    kept = [connect(stack, port=40000 + i) for i in range(2)]
    proto, refused = connect(stack, port=40002)
    assert refused.disconnecting and not any(t.disconnecting for _, t in kept)
    assert stack.flows.get(proto.flow_id) is None  # never a flow: nothing routes to it
    other, t_other = connect(stack, host="192.0.2.2")
    assert not t_other.disconnecting
    _, over_total = connect(stack, host="192.0.2.3")
    assert over_total.disconnecting
    assert stack.stats.get("tcp:local_reject") == 2
    [line] = lines.about("limits.tcp_max_connections")  # one line for both
    assert "192.0.2.1 has 2 connections open, limits.tcp_max_connections_per_address = 2" \
        in line
    # A closed connection makes room again.
    proto.connectionLost(None)  # the refused one: it was never counted
    kept[0][0].connectionLost(None)
    assert not connect(stack, port=40003)[1].disconnecting


def test_a_client_that_never_sends_a_whole_message_is_closed_after_the_first_message_timeout():
    reactor, stack, received, _ = make_stack(tcp_first_message_timeout=10)
    lines = capture(stack)
    quiet, t_quiet = connect(stack, port=40000)
    talker, t_talker = connect(stack, port=40001)
    quiet.dataReceived(b"\r\n\r\n")  # keepalives are not messages
    quiet.dataReceived(OPTIONS[:40])  # nor is half of one
    talker.dataReceived(OPTIONS)
    reactor.advance(9.9)
    assert not t_quiet.disconnecting
    reactor.advance(0.2)
    assert t_quiet.disconnecting and not t_talker.disconnecting
    assert [d for d, _ in received] == [OPTIONS]
    assert stack.stats.get("tcp:con_timeout") == 1
    [line] = lines.about("limits.tcp_first_message_timeout")
    assert "from 192.0.2.1:40000: no complete SIP message; closed" in line


def test_a_connection_sipgw_opened_to_a_backend_has_no_first_message_timeout():
    reactor, stack, _, _ = make_stack(tcp_first_message_timeout=1)
    stack.send(b"hello", "198.51.100.5", 5060, None)
    out = reactor.tcpClients[0][2].buildProtocol(None)
    t = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.5", 5060),
                        hostAddress=IPv4Address("TCP", "127.0.0.1", 41000))
    out.makeConnection(t)
    reactor.advance(5)
    assert not t.disconnecting and stack.caps.total == 0


def test_a_peer_that_stops_reading_is_aborted_past_the_write_queue_and_others_are_served():
    _, stack, _, _ = make_stack(max_write_queue=10_000)
    lines = capture(stack)
    slow, t_slow = connect(stack, port=40000)
    fast, t_fast = connect(stack, port=40001)
    # Twisted pauses a streaming producer once 64 KiB wait for the socket.
    t_slow.producer.pauseProducing()
    for _ in range(9):
        slow.send(b"x" * 1000)
    assert not t_slow.disconnecting
    slow.send(b"x" * 1001)  # 10,001 bytes behind
    assert t_slow.disconnected  # aborted: what waited is dropped, not flushed
    slow.send(b"more")
    assert not t_slow.value().endswith(b"more")
    fast.send(b"reply")
    assert t_fast.value() == b"reply" and not t_fast.disconnecting
    assert stack.stats.get("tcp:sendq_full") == 1
    [line] = lines.about("limits.max_write_queue")
    assert "tcp flow" in line and "192.0.2.1:40000 is not reading (10001 bytes waiting)" in line


def test_a_peer_that_catches_up_starts_its_count_again():
    _, stack, _, _ = make_stack(max_write_queue=10_000)
    slow, t_slow = connect(stack)
    for _ in range(3):
        t_slow.producer.pauseProducing()
        slow.send(b"x" * 8000)
        t_slow.producer.resumeProducing()  # the socket took everything
    assert not t_slow.disconnecting


def test_a_closed_tcp_flow_is_reported_so_the_registrar_answers_for_it():
    _, stack, _, _ = make_stack()
    closed = []
    stack.on_closed = lambda fid, src: closed.append((fid, src.transport, src.host, src.port))
    proto, _ = connect(stack)
    proto.connectionLost(None)
    assert closed == [(proto.flow_id, "tcp", "192.0.2.1", 40000)]
    assert stack.stats.get("tcp:current_opened_connections") == 0


def test_a_user_registered_over_tcp_gets_480_once_its_flow_closes_and_is_forgotten_later():
    reactor, stack, _, _ = make_stack()
    identity = Identity(listeners=[Listener(transport="udp", host="127.0.0.1", port=5060)])
    registrar = Registrar(reactor, identity, boot="b00t", flows=stack.flows)
    stack.on_closed = registrar.flow_closed
    proto, _ = connect(stack)
    register = parse_message(
        b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:40000;branch=z9hG4bK1\r\n"
        b"From: <sip:5001@example.com>;tag=1\r\nTo: <sip:5001@example.com>\r\nCall-ID: r1\r\n"
        b"CSeq: 1 REGISTER\r\nContact: <sip:5001@192.0.2.1:40000;transport=tcp>;expires=60\r\n"
        b"Supported: path\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(register, Request)
    registrar.on_register(register, proto.source, "udp")
    path = register.header("path")
    assert registrar.users_on(proto.flow_id) == ["sip:5001@example.com"]
    proto.connectionLost(None)
    toward = parse_message(
        f"OPTIONS sip:5001@192.0.2.1:40000;transport=tcp SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK2\r\nRoute: {path}\r\n"
        f"From: <sip:pbx@127.0.0.1>;tag=2\r\nTo: <sip:5001@example.com>\r\nCall-ID: o1\r\n"
        f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode())
    with pytest.raises(FlowFailed) as gone:
        registrar.route_target(toward)  # type: ignore[arg-type]
    assert gone.value.status == 480
    assert registrar.gone == 1
    reactor.advance(61)  # its registration would have expired: the record goes
    assert registrar.records == {} and registrar.gone == 0


# --- WebSocket ---------------------------------------------------------------------------


def test_a_websocket_client_that_stops_reading_is_dropped_and_the_other_keeps_its_messages():
    stack = Stack(max_write_queue=20_000)
    lines = capture(stack.ws)
    slow = Client(stack, port=40000).open()
    other = Client(stack, port=40001).open()
    slow.transport.producer.pauseProducing()
    message = OPTIONS * 10  # ~2 KB, as a NOTIFY or a MESSAGE to a browser
    for _ in range(20_000 // len(message) + 1):
        stack.flows.get(slow.proto.flow_id).send(message)
        stack.flows.get(other.proto.flow_id).send(message)
    assert slow.transport.disconnected
    assert not other.closing and len(other.read()) == 20_000 // len(message) + 1
    slow.lose()
    assert stack.flows.get(slow.proto.flow_id) is None and stack.closed == [slow.proto.flow_id]
    assert stack.stats.get("tcp:sendq_full") == 1 and stack.stat("ws_local_closed_connections") == 1
    [line] = lines.about("limits.max_write_queue")
    assert "ws flow" in line and "is not reading" in line


def test_hundreds_of_websocket_clients_that_never_register_are_closed_with_one_log_line():
    stack = Stack(ws_register_timeout=5, ws_max_connections_per_address=5000)
    lines = capture(stack.ws)
    idle = [Client(stack, port=20000 + i).open() for i in range(500)]
    user = Client(stack, port=40000).open()
    user.send(wf.frame(wf.TEXT, OPTIONS.replace(b"OPTIONS", b"REGISTER", 1)
                       .replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 REGISTER")))
    stack.clock.advance(5.1)
    closes = [c for c in idle if any(f.opcode == 8 for f in c.read())]
    assert len(closes) == 500 and not any(f.opcode == 8 for f in user.read())
    assert len(lines.about("limits.ws_register_timeout")) == 1
    stack.clock.advance(10)
    stack.ws.cap_log.reached("limits.ws_register_timeout", "next")  # the rest, said next
    assert "(499 more since the last line)" in lines.about("limits.ws_register_timeout")[1]


def test_websocket_handshakes_beyond_the_cap_get_503_and_one_log_line():
    stack = Stack(ws_max_connections=2)
    lines = capture(stack.ws)
    Client(stack, port=1).open()
    Client(stack, port=2).open()
    for port in range(3, 50):
        c = Client(stack, port=port)
        c.send(wf.handshake()[0])
        assert c.reader.status == 503
    assert len(lines.about("limits.ws_max_connections")) == 1
    assert stack.stat("ws_failed_handshakes") == 47


# --- pending auth state, trace subscribers, dialogs -------------------------------------------


def test_the_nonce_table_is_capped_and_a_forgotten_nonce_is_rechallenged_stale():
    rig = Rig(auth={"realm": "sipgw.test"}, limits={"max_nonces": 2})
    lines = capture(rig.auth)
    challenges = [rig.send(sip_request(call_id=f"c{i}")) for i in range(3)]
    for i, ch in enumerate(challenges):
        rig.send(sip_request(call_id=f"c{i}", cseq=2, auth=answer(ch, nc=1)))
        assert len(rig.link.to_backend()) == 1
    assert len(rig.auth.nonces) == 2
    # The first nonce was forgotten to make room: never a replay, a stale challenge.
    again = rig.send(sip_request(call_id="c0", cseq=3, auth=answer(challenges[0], nc=2)))
    assert again.status == 401 and "stale=true" in again.header("www-authenticate").lower()
    [line] = lines.about("limits.max_nonces")
    assert "2 nonces tracked; the oldest forgotten" in line


def test_failure_counters_are_capped_with_the_oldest_forgotten():
    rig = Rig(auth={"realm": "sipgw.test", "max_failures_source": 1000},
              limits={"max_auth_failures": 3})
    lines = capture(rig.auth)
    for i in range(10):
        fail_once(rig, user=f"u{i}")
    assert len(rig.auth.bans._failures) == 3
    [line] = lines.about("limits.max_auth_failures")
    assert "3 failures remembered; the oldest forgotten" in line


def test_trace_subscribers_beyond_the_cap_get_an_rpc_error_until_one_leaves():
    tracer = Tracer(Tap(), clock=Clock().seconds, max_streams=lambda: 2)
    lines = capture(tracer)
    first = tracer.rpc_subscribe()
    tracer.rpc_subscribe()
    with pytest.raises(RpcError, match="limits.max_trace_subscribers"):
        tracer.rpc_subscribe()
    first.start(lambda method, params: None)
    first.stop()
    first.stop()  # the control server may stop twice; counted once
    tracer.rpc_subscribe()
    with pytest.raises(RpcError):
        tracer.rpc_subscribe()
    assert len(lines.about("limits.max_trace_subscribers")) == 1


def test_the_dialog_table_is_capped_with_the_oldest_forgotten():
    clock = Clock()
    dialogs = Dialogs(clock, Stats(), max_dialogs=100)
    lines = capture(dialogs)
    for i in range(150):
        invite = parse_message(valid_invite(f"d{i}"))
        ok = parse_message(b"SIP/2.0 200 OK\r\n" + valid_invite(f"d{i}").split(b"\r\n", 1)[1]
                           .replace(b">\r\nCall-ID", b">;tag=t\r\nCall-ID", 1))
        assert isinstance(invite, Request) and isinstance(ok, Response)
        dialogs.confirmed(invite, ok)
    assert len(dialogs.active) == 100
    assert dialogs.rpc_list()[0]["call-id"] == "d50@192.0.2.99"
    assert len(lines.about("limits.max_dialogs")) == 1


def test_calls_counted_for_the_call_load_algorithm_are_capped_and_their_load_released():
    d = make_dispatcher("1 sip:10.0.0.1:5060\n", algorithm=10)
    d.max_calls = 100
    lines = capture(d)
    for i in range(250):  # INVITEs whose BYE never comes
        d.begin(dispatcher_invite(f"c{i}"))
    [t] = d.targets()
    assert len(d._calls) == 100 and t.load == 100
    assert len(lines.about("limits.max_dialogs")) == 1


def test_bindings_remembered_per_flow_are_capped_and_routing_by_path_still_works():
    clock = Clock()
    identity = Identity(listeners=[Listener(transport="udp", host="127.0.0.1", port=5060)])
    flows = FlowTable()
    registrar = Registrar(clock, identity, boot="b00t", flows=flows)
    lines = capture(registrar)
    source = Source(transport="tcp", host="192.0.2.1", port=40000, local_host="127.0.0.1",
                    local_port=5060, flow_id=7)
    contacts = ", ".join(f"<sip:u@192.0.2.1:{i}>" for i in range(MAX_BINDINGS_PER_FLOW + 5))
    register = parse_message(
        b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:40000;branch=z9hG4bK1\r\n"
        b"From: <sip:gw@example.com>;tag=1\r\nTo: <sip:gw@example.com>\r\nCall-ID: r1\r\n"
        b"CSeq: 1 REGISTER\r\nContact: " + contacts.encode() + b"\r\nContent-Length: 0\r\n\r\n",
        limits=Limits(max_message_size=1 << 20))
    registrar.on_register(register, source, "udp")  # type: ignore[arg-type]
    assert len(registrar.records[7].bindings) == MAX_BINDINGS_PER_FLOW
    assert len(lines.about("registrar bindings per flow")) == 1


def test_a_reload_changes_the_connection_caps_of_the_running_listeners():
    _, stack, _, _ = make_stack(tcp_max_connections=10)
    connect(stack, port=1)
    stack.reconfigure(LimitsConfig(tcp_max_connections=1))
    assert connect(stack, port=2)[1].disconnecting
    stack.reconfigure(LimitsConfig(tcp_max_connections=5))
    assert not connect(stack, port=3)[1].disconnecting
