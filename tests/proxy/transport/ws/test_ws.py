"""WebSocket flows: Kamailio's handshake rules, one SIP message per frame, frame abuse,
keepalive, flows and counters — autobahn driven over StringTransport on a task.Clock."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from sipgw.proxy.load import FULL_READ
from sipgw.proxy.stats import Stats
from sipgw.proxy.transport import FlowTable
from sipgw.proxy.transport.ws import WsTransport, client_address
from sipgw.rpc.registry import RpcError, methods_of
from sipgw.tools.harness import sections
from tests.helpers import wsframes as wf

OPTIONS = (
    b"OPTIONS sip:127.0.0.1:8080;transport=ws SIP/2.0\r\n"
    b"Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK1\r\n"
    b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: c1\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n"
)


class Stack:
    def __init__(self, **keys) -> None:
        """``keys``: [websocket] and [limits] keys changed."""
        self.clock = Clock()
        self.flows = FlowTable()
        self.stats = Stats()
        self.received: list = []
        self.closed: list = []
        self.ws = WsTransport(
            None, self.clock, self.flows, lambda d, s: self.received.append((d, s)),
            self.stats, *sections("websocket", "limits", **keys),
            on_closed=lambda fid, src: self.closed.append(fid),
        )

    def stat(self, name: str) -> int:
        return self.stats.get(f"websocket:{name}")


class Wire(StringTransport):
    """A TCP transport's leniency: autobahn unregisters a producer it never registered,
    which real transports (``FileDescriptor``) accept and StringTransport does not."""

    def unregisterProducer(self):
        self.producer = None


class Client:
    """One TCP connection into the listener, spoken to with hand-made bytes."""

    def __init__(self, stack: Stack, peer: str = "192.0.2.1", port: int = 40000,
                 secure: bool = False) -> None:
        self.proto = stack.ws.factory(secure=secure).buildProtocol(None)
        self.transport = Wire(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", peer, port),
        )
        self.proto.makeConnection(self.transport)
        self.reader = wf.FrameReader()
        self.frames: list[wf.Frame] = []

    def send(self, data: bytes) -> list[wf.Frame]:
        self.proto.dataReceived(data)
        return self.read()

    def read(self) -> list[wf.Frame]:
        new = self.reader.feed(self.transport.value())
        self.transport.clear()
        self.frames += new
        return new

    def open(self, **kw) -> Client:
        request, key = wf.handshake(**kw)
        self.send(request)
        assert self.reader.status == 101, self.reader.http
        assert self.reader.header("Sec-WebSocket-Accept") == wf.accept_for(key)
        return self

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting


@pytest.fixture
def stack() -> Stack:
    return Stack()


# --- handshake ------------------------------------------------------------------------------


def test_a_good_handshake_is_accepted_with_the_sip_subprotocol_echoed(stack):
    c = Client(stack)
    request, key = wf.handshake(protocol="sip")
    c.send(request)
    assert c.reader.status == 101
    assert c.reader.header("Sec-WebSocket-Protocol") == "sip"
    assert c.reader.header("Sec-WebSocket-Accept") == wf.accept_for(key)
    assert stack.stat("ws_successful_handshakes") == 1
    assert stack.stat("ws_current_connections") == 1
    assert len(stack.flows) == 1


def test_sip_is_found_among_several_offered_subprotocols(stack):
    c = Client(stack)
    c.send(wf.handshake(protocol="chat, sip")[0])
    assert c.reader.status == 101
    assert c.reader.header("Sec-WebSocket-Protocol") == "sip"


HANDSHAKE_MATRIX = [
    # (what is wrong, handshake arguments, HTTP status, header expected in the answer)
    ("no subprotocol", dict(protocol=None), 400, None),
    ("another subprotocol", dict(protocol="chat"), 400, None),
    ("version 8", dict(version="8"), 426, ("Sec-WebSocket-Version", "13")),
    ("no version", dict(version=None), 400, None),
    ("no key", dict(key=None), 400, None),
    ("no Host", dict(host=None), 400, None),
    ("no Upgrade", dict(upgrade=None), 400, None),
    ("Upgrade is not websocket", dict(upgrade="h2c"), 400, None),
    ("no Connection", dict(connection=None), 400, None),
    ("Connection without upgrade", dict(connection="keep-alive"), 400, None),
    ("a plain GET for another page", dict(path="/nothing.html", upgrade=None, key=None,
                                          version=None, protocol=None, connection=None),
     404, None),
]


@pytest.mark.parametrize("what,kwargs,status,header", HANDSHAKE_MATRIX,
                         ids=[m[0] for m in HANDSHAKE_MATRIX])
def test_a_bad_handshake_gets_the_documented_answer_and_the_others_are_untouched(
    stack, what, kwargs, status, header
):
    good = Client(stack, port=40001).open()
    bad = Client(stack, port=40002)
    bad.send(wf.handshake(**kwargs)[0])
    assert bad.reader.status == status, what
    if header is not None:
        assert bad.reader.header(header[0]) == header[1]
    assert bad.closing
    assert stack.stat("ws_failed_handshakes") == 1
    assert stack.stat("ws_current_connections") == 1
    # The good connection still carries SIP.
    good.send(wf.frame(wf.TEXT, OPTIONS))
    assert [d for d, _ in stack.received] == [OPTIONS]


def test_an_origin_outside_the_allow_list_is_forbidden():
    stack = Stack(allowed_origins=("https://phone.example.com",))
    c = Client(stack)
    c.send(wf.handshake(origin="https://evil.example.net")[0])
    assert c.reader.status == 403
    ok = Client(stack, port=40003)
    ok.open(origin="https://phone.example.com")
    missing = Client(stack, port=40004)
    missing.send(wf.handshake(origin=None)[0])
    assert missing.reader.status == 403


def test_any_origin_is_accepted_without_an_allow_list(stack):
    Client(stack).open(origin="https://anything.example.org")


def test_any_path_is_accepted(stack):
    Client(stack).open(path="/ws?user=5001")


def test_a_handshake_that_does_not_finish_in_time_is_dropped():
    stack = Stack(handshake_timeout=5.0)
    c = Client(stack)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    stack.clock.advance(4.9)
    assert not c.closing
    stack.clock.advance(0.2)
    assert c.closing
    assert stack.stat("ws_failed_handshakes") == 1


def test_an_endless_handshake_is_refused_before_it_fills_memory(stack):
    c = Client(stack)
    c.send(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000)
    assert c.reader.status == 431
    assert c.closing


# --- frames -----------------------------------------------------------------------------------


def test_each_text_or_binary_message_is_one_sip_message_from_the_flow(stack):
    c = Client(stack).open()
    c.send(wf.frame(wf.TEXT, OPTIONS))
    c.send(wf.frame(wf.BINARY, OPTIONS))
    assert [d for d, _ in stack.received] == [OPTIONS, OPTIONS]
    src = stack.received[0][1]
    assert (src.transport, src.host, src.port) == ("ws", "192.0.2.1", 40000)
    assert src.flow_id == c.proto.flow_id
    assert stack.flows.get(src.flow_id) is c.proto
    assert stack.stat("ws_received_frames") == 2


def test_a_connection_that_read_32_kib_tells_the_load_signal_what_its_socket_still_holds(
        stack):
    c = Client(stack).open()
    peer, ours = socket.socketpair()
    try:
        c.transport.socket = ours  # the kernel socket under the connection, as tcp.Server's
        c.send(wf.frame(wf.TEXT, OPTIONS))  # less than FULL_READ read: the kernel is not asked
        assert stack.ws.backlog.behind == {}
        peer.sendall(b"x" * 700)  # what the kernel still holds after the next read
        frames = FULL_READ // len(OPTIONS) + 1
        batch = wf.frame(wf.TEXT, OPTIONS) * frames
        c.send(batch)
        assert len(stack.received) == 1 + frames
        assert {conn: unread for conn, (_, unread) in stack.ws.backlog.behind.items()} == {
            c.proto: 700}
    finally:
        peer.close()
        ours.close()


def test_a_message_split_over_continuation_frames_arrives_whole(stack):
    c = Client(stack).open()
    c.send(wf.frame(wf.TEXT, OPTIONS[:20], fin=False))
    c.send(wf.frame(wf.CONTINUATION, OPTIONS[20:]))
    assert [d for d, _ in stack.received] == [OPTIONS]


def test_a_flow_sends_utf8_as_text_and_anything_else_as_binary(stack):
    c = Client(stack).open()
    c.proto.send(OPTIONS)
    c.proto.send(OPTIONS + b"\xff")
    frames = c.read()
    assert [(f.opcode, f.payload) for f in frames] == [(wf.TEXT, OPTIONS),
                                                       (wf.BINARY, OPTIONS + b"\xff")]
    assert stack.stat("ws_transmitted_frames") == 2


FRAME_ABUSE = [
    ("unmasked frame", wf.frame(wf.TEXT, OPTIONS, mask=False), 1002),
    ("reserved opcode", wf.frame(0x3, b"x"), 1002),
    ("fragmented ping", wf.frame(wf.PING, b"x", fin=False), 1002),
    ("reserved bits set", wf.frame(wf.TEXT, OPTIONS, rsv=0b100), 1002),
    ("continuation without a start", wf.frame(wf.CONTINUATION, b"x"), 1002),
    ("text that is not UTF-8", wf.frame(wf.TEXT, b"\xff\xfe"), 1007),
    ("oversize message", wf.frame(wf.TEXT, b"x" * 70000), 1009),
]


@pytest.mark.parametrize("what,data,code", FRAME_ABUSE, ids=[a[0] for a in FRAME_ABUSE])
def test_frame_abuse_closes_with_the_documented_code_and_the_others_are_untouched(
    stack, what, data, code
):
    good = Client(stack, port=40001).open()
    bad = Client(stack, port=40002).open()
    frames = bad.send(data)
    closes = [f for f in frames if f.opcode == wf.CLOSE]
    assert closes and closes[0].close_code == code, (what, frames)
    assert stack.received == []
    good.send(wf.frame(wf.TEXT, OPTIONS))
    assert [d for d, _ in stack.received] == [OPTIONS]


def test_the_message_size_limit_is_the_configured_one():
    stack = Stack(max_message_size=2000)
    c = Client(stack).open()
    c.send(wf.frame(wf.TEXT, OPTIONS))
    frames = c.send(wf.frame(wf.TEXT, OPTIONS + b"x" * 2000))
    assert [f.close_code for f in frames if f.opcode == wf.CLOSE] == [1009]


# --- keepalive --------------------------------------------------------------------------------


def test_an_idle_connection_gets_a_ping_and_is_dropped_when_no_pong_comes():
    stack = Stack(keepalive_interval=25.0)
    c = Client(stack).open()
    stack.clock.advance(24.9)
    assert c.read() == []
    stack.clock.advance(0.2)
    assert [f.opcode for f in c.read()] == [wf.PING]
    stack.clock.advance(24.9)
    assert not c.closing
    stack.clock.advance(0.2)
    assert c.closing
    c.lose()
    assert stack.stat("ws_local_closed_connections") == 1
    assert stack.stat("ws_current_connections") == 0


def test_a_pong_keeps_the_connection_and_traffic_postpones_the_ping():
    stack = Stack(keepalive_interval=25.0, ws_register_timeout=0)
    c = Client(stack).open()
    stack.clock.advance(20)
    c.send(wf.frame(wf.TEXT, OPTIONS))  # traffic: the idle time starts again
    stack.clock.advance(20)
    assert c.read() == []
    stack.clock.advance(5.1)
    ping = c.read()
    assert [f.opcode for f in ping] == [wf.PING]
    c.send(wf.frame(wf.PONG, ping[0].payload))
    stack.clock.advance(60)
    assert not c.closing


def test_a_client_ping_is_answered_with_a_pong(stack):
    c = Client(stack).open()
    frames = c.send(wf.frame(wf.PING, b"hello"))
    assert [(f.opcode, f.payload) for f in frames] == [(wf.PONG, b"hello")]


# --- flows and counters -----------------------------------------------------------------------


def test_a_connection_closed_by_the_client_leaves_the_flow_table(stack):
    c = Client(stack).open()
    fid = c.proto.flow_id
    c.send(wf.close_frame(1000))
    c.lose()
    assert stack.flows.get(fid) is None
    assert stack.closed == [fid]
    assert stack.stat("ws_remote_closed_connections") == 1
    assert stack.stat("ws_local_closed_connections") == 0
    assert stack.stat("ws_current_connections") == 0
    assert stack.stat("ws_max_concurrent_connections") == 1


def test_the_most_concurrent_connections_is_remembered(stack):
    clients = [Client(stack, port=41000 + i).open() for i in range(3)]
    clients[0].lose()
    assert stack.stat("ws_current_connections") == 2
    assert stack.stat("ws_max_concurrent_connections") == 3


def test_secure_listener_flows_are_wss(stack):
    c = Client(stack, secure=True).open()
    c.send(wf.frame(wf.TEXT, OPTIONS))
    assert stack.received[0][1].transport == "wss"


def test_ws_dump_lists_connections_and_ws_close_closes_one(stack):
    a = Client(stack, port=40001).open()
    Client(stack, port=40002).open()
    methods = methods_of(stack.ws)
    dump = methods["ws.dump"].handler()
    assert [c["src"] for c in dump["connections"]] == ["192.0.2.1:40001", "192.0.2.1:40002"]
    assert dump["info"]["wscounter"] == 2
    assert dump["connections"][0]["users"] == []
    assert methods["ws.close"].handler(a.proto.flow_id) == "ok"
    assert [f.close_code for f in a.read()] == [1000]
    with pytest.raises(RpcError):
        methods["ws.close"].handler(9999)



def test_stopping_sends_going_away_and_waits_for_the_clients_close_within_a_second(stack):
    """sipgw stops (``close_all``): 1001 to every connection, a browser's cue to reconnect
    elsewhere; the connection stays until the client answers, or a second has passed."""
    answering = Client(stack, port=40001).open()
    silent = Client(stack, port=40002).open()
    stack.ws.close_all()
    assert [(f.close_code, f.payload[2:]) for f in answering.read()] == [(1001, b"going away")]
    assert [f.close_code for f in silent.read()] == [1001]
    stack.ws.close_all()  # closing already: no second frame, nothing dropped early
    assert answering.read() == [] and not answering.closing and not silent.closing
    answering.send(wf.close_frame(1001))
    assert answering.closing and not silent.closing
    stack.clock.advance(1.0)
    assert silent.closing
    answering.lose()
    silent.lose()
    assert stack.stat("ws_local_closed_connections") == 2 and len(stack.flows) == 0

# --- reverse proxies --------------------------------------------------------------------------

NGINX = (ipaddress.ip_network("127.0.0.0/8"),)


def test_forwarded_addresses_are_believed_only_from_a_trusted_proxy():
    headers = {"x-forwarded-for": "198.51.100.7, 127.0.0.2"}
    assert client_address("127.0.0.1", headers, NGINX) == "198.51.100.7"
    assert client_address("203.0.113.5", headers, NGINX) == "203.0.113.5"
    assert client_address("127.0.0.1", headers, ()) == "127.0.0.1"
    assert client_address("127.0.0.1", {"x-real-ip": "198.51.100.8"}, NGINX) == "198.51.100.8"
    assert client_address("127.0.0.1", {"x-real-ip": "junk"}, NGINX) == "127.0.0.1"


def test_a_flow_behind_a_trusted_proxy_has_the_client_address_as_source():
    stack = Stack(trusted_proxies=NGINX)
    c = Client(stack, peer="127.0.0.1").open(extra=("X-Real-IP: 198.51.100.7",))
    c.send(wf.frame(wf.TEXT, OPTIONS))
    assert stack.received[0][1].host == "198.51.100.7"
    spoofer = Client(Stack(trusted_proxies=NGINX), peer="203.0.113.9")
    spoofer.open(extra=("X-Real-IP: 198.51.100.7",))
    assert spoofer.proto.source.host == "203.0.113.9"


def test_ws_close_by_user_closes_the_connections_the_registrar_names(stack):
    a = Client(stack, port=40001).open()
    b = Client(stack, port=40002).open()
    stack.ws.users_of = lambda fid: ["sip:5001@example.com"] if fid == a.proto.flow_id else []
    stack.ws.flows_of = lambda user: [a.proto.flow_id] if user == "5001" else []
    methods = methods_of(stack.ws)
    assert methods["ws.dump"].handler()["connections"][0]["users"] == ["sip:5001@example.com"]
    assert methods["ws.close"].handler("5001") == "ok"
    assert [f.close_code for f in a.read()] == [1000]
    assert b.read() == []
    with pytest.raises(RpcError):
        methods["ws.close"].handler("5002")


# --- limits -----------------------------------------------------------------------------------


def test_beyond_the_connection_limit_handshakes_get_503_until_one_closes():
    stack = Stack(ws_max_connections=2)
    first = Client(stack, port=40001).open()
    Client(stack, port=40002).open()
    third = Client(stack, port=40003)
    third.send(wf.handshake()[0])
    assert third.reader.status == 503
    assert stack.stat("ws_failed_handshakes") == 1
    first.lose()
    Client(stack, port=40004).open()


def test_the_per_address_limit_counts_the_client_behind_a_trusted_proxy():
    stack = Stack(ws_max_connections_per_address=1, trusted_proxies=NGINX)
    Client(stack, peer="127.0.0.1", port=40001).open(extra=("X-Real-IP: 198.51.100.7",))
    again = Client(stack, peer="127.0.0.1", port=40002)
    again.send(wf.handshake(extra=("X-Real-IP: 198.51.100.7",))[0])
    assert again.reader.status == 503
    # Another client behind the same proxy is not held back by the first one.
    Client(stack, peer="127.0.0.1", port=40003).open(extra=("X-Real-IP: 198.51.100.8",))


def test_a_connection_that_never_registers_is_closed_after_the_register_timeout():
    stack = Stack(ws_register_timeout=60.0, keepalive_interval=0)
    silent = Client(stack, port=40001).open()
    registered = Client(stack, port=40002).open()
    registered.send(wf.frame(wf.TEXT, OPTIONS.replace(b"OPTIONS", b"REGISTER")
                             .replace(b"1 OPTIONS", b"1 REGISTER")))
    stack.clock.advance(59.9)
    assert silent.read() == []
    stack.clock.advance(0.2)
    assert [f.close_code for f in silent.read()] == [1008]
    assert registered.read() == []


# --- the phone page ---------------------------------------------------------------------------

PLAIN = dict(upgrade=None, key=None, version=None, protocol=None, connection=None)


def test_a_plain_get_of_slash_serves_the_phone_page_and_closes(stack):
    c = Client(stack)
    c.proto.dataReceived(wf.handshake(path="/", **PLAIN)[0])
    head, _, body = c.transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/html; charset=utf-8" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"<title>sipgw test phone</title>" in body
    assert c.closing
    assert stack.stat("ws_failed_handshakes") == 0


def test_plain_gets_of_the_page_or_of_a_missing_file_log_no_warning(stack):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for path in ("/", "/favicon.ico"):
            c = Client(stack)
            c.proto.dataReceived(wf.handshake(path=path, **PLAIN)[0])
            assert c.closing
            c.lose()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn] == []
    assert "refused: 404 Not Found" in " ".join(formatEvent(e) for e in events)


def test_the_phone_page_can_be_turned_off():
    stack = Stack(phone_page=False)
    c = Client(stack)
    c.send(wf.handshake(path="/", **PLAIN)[0])
    assert c.reader.status == 404


def test_the_upgrade_works_on_the_phone_pages_path_too(stack):
    Client(stack).open(path="/")


def test_a_host_outside_the_allow_list_is_forbidden_by_name_or_name_and_port():
    stack = Stack(allowed_hosts=("phone.example.com", "10.0.0.5:8080"))
    bad = Client(stack)
    bad.send(wf.handshake(host="evil.example.net")[0])
    assert bad.reader.status == 403
    wrong_port = Client(stack, port=40005)
    wrong_port.send(wf.handshake(host="10.0.0.5:9999")[0])
    assert wrong_port.reader.status == 403
    Client(stack, port=40006).open(host="PHONE.example.com:443")
    Client(stack, port=40007).open(host="10.0.0.5:8080")
    assert stack.stat("ws_failed_handshakes") == 2
