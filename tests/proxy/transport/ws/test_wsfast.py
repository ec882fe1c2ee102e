"""The fast paths of a WebSocket connection do what autobahn's own code does.

Every scenario runs twice over the same bytes: once as sipgw runs it, once with the fast
paths taken out (autobahn's connectionMade, processHandshake, processData and sendMessage
throughout). What the client is answered, what reaches the proxy, the close code and the
state autobahn keeps on the connection must be the same.
"""

from __future__ import annotations

import socket
import struct
from collections import deque

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import TrafficStats
from twisted.internet import tcp
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from sipgw.proxy.transport.ws import WsConnection
from sipgw.proxy.transport.ws import fast as wsfast
from sipgw.wire.websocket import apply_mask
from tests.helpers import wsframes as wf
from tests.proxy.transport.ws.test_ws import OPTIONS, Client, Stack

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
BROWSER = dict(key=KEY, origin="https://phone.example.com", path="/ws?user=5001",
               extra=("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
                      "User-Agent: Mozilla/5.0", "Pragma: no-cache"))


def _autobahn_only(monkeypatch) -> None:
    monkeypatch.setattr(WsConnection, "connectionMade", WebSocketServerProtocol.connectionMade)
    monkeypatch.setattr(WsConnection, "dataReceived", WebSocketServerProtocol.dataReceived)
    monkeypatch.setattr(WsConnection, "processData", WebSocketServerProtocol.processData)
    monkeypatch.setattr(WsConnection, "accept_handshake", lambda self, end, request: False)
    monkeypatch.setattr(WsConnection, "send_message",
                        lambda self, payload, binary: self.sendMessage(payload, isBinary=binary))


def _state(value):
    """A value comparable across two connections: objects by their kind or contents."""
    if isinstance(value, Deferred):
        return ("Deferred", value.called)
    if isinstance(value, DelayedCall):
        return ("DelayedCall", value.getTime(), value.active())
    if isinstance(value, deque):
        return list(value)
    if isinstance(value, TransportDetails):
        return value.marshal()
    if isinstance(value, TrafficStats):
        return vars(value)
    if callable(value):  # a factory option: each run has its own factory
        return value.__qualname__
    return value


# Not compared: our own attributes; the transport, factory and the WsTransport (the same
# objects by construction); the lazy UTF-8 validator the fast paths create only when a
# text message needs autobahn's incremental check.
_SKIP = {"transport", "factory", "stack", "queue", "source", "flow_id", "utf8validator",
         "_idle", "_unregistered", "unasked"}
# What autobahn keeps of the last message it assembled frame by frame; set anew when the
# next one starts, and never made by the fast path, which takes a message whole.
_SCRATCH = {"current_frame_masker", "frame_data", "frame_length", "message_data",
            "message_is_binary", "_isMessageCompressed", "utf8validateIncomingCurrentMessage",
            "utf8validateLast", "message_data_total_length", "control_frame_data"}


def _snapshot(client: Client) -> dict:
    return {k: _state(v) for k, v in vars(client.proto).items()
            if k not in _SKIP and k not in _SCRATCH}


def _run(monkeypatch, fast: bool, scenario) -> tuple:
    if not fast:
        _autobahn_only(monkeypatch)
    stack = Stack()
    client = Client(stack)
    started = _snapshot(client)
    written = scenario(client)
    out = (started, written, [d for d, _ in stack.received], _snapshot(client),
           client.transport.disconnecting)
    monkeypatch.undo()
    return out


def _same(monkeypatch, scenario) -> tuple:
    fast = _run(monkeypatch, True, scenario)
    slow = _run(monkeypatch, False, scenario)
    for name, a, b in zip(("state at connect", "bytes written", "messages", "state after",
                           "closing"), fast, slow, strict=True):
        assert a == b, name
    return fast


def _bytes(client: Client, *chunks: bytes) -> list[bytes]:
    """Feed each chunk; what sipgw wrote after each."""
    out = []
    for chunk in chunks:
        client.proto.dataReceived(chunk)
        out.append(client.transport.value())
        client.transport.clear()
    return out


HANDSHAKES = [
    ("wsload", dict(key=KEY, host="127.0.0.1:8080")),
    ("a browser with origin, query and extension offer", BROWSER),
    ("JsSIP offering two subprotocols", dict(key=KEY, protocol="sip, chat")),
    ("IPv6 Host", dict(key=KEY, host="[::1]:8080")),
    ("origin null", dict(key=KEY, origin="null")),
    # What autobahn alone answers: the fast path must leave these to it.
    ("HTTP/1.0", dict(key=KEY, path="/ HTTP/1.0\r\nX: y")),
    ("a key of the wrong length", dict(key="c2hvcnQ=")),
    ("a key that is not base64", dict(key="!!!!!!!!!!!!!!!!!!!!!!==")),
    ("Host twice", dict(key=KEY, extra=("Host: example.com",))),
    ("Origin twice", dict(key=KEY, origin="https://a.example", extra=("Origin: https://b",))),
    ("a port that is not a number", dict(key=KEY, host="example.com:http")),
    ("sip offered twice", dict(key=KEY, protocol="sip, sip")),
    ("SIP in capitals", dict(key=KEY, protocol="SIP")),
    ("a fragment in the path", dict(key=KEY, path="/ws#top")),
    ("an origin without a host", dict(key=KEY, origin="https://")),
    ("a bare LF inside a header", dict(key=KEY, extra=("X-Note: a\nHost: b",))),
]


@pytest.mark.parametrize("what,kwargs", HANDSHAKES, ids=[h[0] for h in HANDSHAKES])
def test_a_handshake_gets_the_answer_autobahn_gives_and_leaves_the_same_state(
    monkeypatch, what, kwargs
):
    request = wf.handshake(**kwargs)[0]
    _, written, *_ = _same(monkeypatch, lambda c: _bytes(c, request[:20], request[20:]))
    assert written[-1].startswith(b"HTTP/1.1 ")


def test_the_fast_handshake_answers_a_browser_with_101_and_the_sip_subprotocol(monkeypatch):
    request = wf.handshake(**BROWSER)[0]
    _, written, *_ = _run(monkeypatch, True, lambda c: _bytes(c, request))
    head = written[0].decode()
    assert head.startswith("HTTP/1.1 101 ")
    assert "Sec-WebSocket-Protocol: sip\r\n" in head
    assert f"Sec-WebSocket-Accept: {wf.accept_for(KEY)}\r\n" in head
    assert "Sec-WebSocket-Extensions" not in head


REGISTER = OPTIONS.replace(b"OPTIONS", b"REGISTER")


def _longhand(payload: bytes, form: str, marker: int) -> bytes:
    """A masked text frame whose length takes more bytes than it needs (RFC 6455 §5.2
    forbids it), which no encoder writes."""
    key = b"\x01\x02\x03\x04"
    return (bytes((0x81, 0x80 | marker)) + struct.pack(form, len(payload)) + key
            + apply_mask(payload, key))


FRAMES = [
    ("one text message", [wf.frame(wf.TEXT, OPTIONS)]),
    ("two messages in one read", [wf.frame(wf.TEXT, OPTIONS) + wf.frame(wf.BINARY, REGISTER)]),
    (
        "a message split across reads",
        [wf.frame(wf.TEXT, OPTIONS)[:9], wf.frame(wf.TEXT, OPTIONS)[9:]],
    ),
    ("the handshake and a message in one read", None),
    ("a 16-bit length", [wf.frame(wf.TEXT, OPTIONS + b"x" * 300)]),
    ("the largest message allowed", [wf.frame(wf.BINARY, b"x" * 65535)]),
    ("one byte too many", [wf.frame(wf.BINARY, b"x" * 65536)]),
    ("a 64-bit length", [wf.frame(wf.BINARY, b"x" * 70000)]),
    ("a short length in the 16-bit form", [_longhand(OPTIONS[:100], "!H", 126)]),
    ("a short length in the 64-bit form", [_longhand(OPTIONS, "!Q", 127)]),
    (
        "continuation frames",
        [wf.frame(wf.TEXT, OPTIONS[:30], fin=False), wf.frame(wf.CONTINUATION, OPTIONS[30:])],
    ),
    (
        "a ping between fragments",
        [
            wf.frame(wf.TEXT, OPTIONS[:30], fin=False),
            wf.frame(wf.PING, b"hi"),
            wf.frame(wf.CONTINUATION, OPTIONS[30:]),
        ],
    ),
    ("text that is not UTF-8", [wf.frame(wf.TEXT, b"REGISTER \xff\xfe")]),
    ("a UTF-8 sequence cut at the end", [wf.frame(wf.TEXT, "é".encode()[:1])]),
    ("binary that is not UTF-8", [wf.frame(wf.BINARY, b"\xff\xfe")]),
    ("an unmasked frame", [wf.frame(wf.TEXT, OPTIONS, mask=False)]),
    ("reserved bits", [wf.frame(wf.TEXT, OPTIONS, rsv=0b100)]),
    ("an empty message", [wf.frame(wf.TEXT, b"")]),
    ("a close", [wf.close_frame(1000)]),
]


@pytest.mark.parametrize("what,chunks", FRAMES, ids=[f[0] for f in FRAMES])
def test_frames_reach_the_proxy_and_get_the_close_codes_they_get_from_autobahn(
    monkeypatch, what, chunks
):
    request = wf.handshake(key=KEY)[0]
    if chunks is None:
        chunks, request = [request + wf.frame(wf.TEXT, OPTIONS)], b""

    def scenario(client: Client) -> list[bytes]:
        return _bytes(client, *([request] if request else []), *chunks)

    _same(monkeypatch, scenario)


# The response line is 16 bytes: 7- and 16-bit lengths, and the largest message allowed.
@pytest.mark.parametrize("size", [0, 109, 110, 65519])
def test_a_message_sent_is_the_frame_autobahn_would_write(monkeypatch, size):
    request = wf.handshake(key=KEY)[0]

    def scenario(client: Client) -> list[bytes]:
        _bytes(client, request)
        client.proto.send(b"SIP/2.0 200 OK\r\n" + b"x" * size)
        client.proto.send(b"\xff" * (size + 16))
        return [client.transport.value()]

    _same(monkeypatch, scenario)


# --- write_now over a real socket ------------------------------------------------------


@pytest.fixture
def tcp_pair():
    """A Twisted TCP server connection over a real loopback socket pair, on a memory
    reactor (writers are recorded, nothing runs), and the peer's socket."""
    ours, peer = _loopback_pair()
    ours.setblocking(False)
    peer.setblocking(False)
    reactor = MemoryReactor()
    conn = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), _FakePort(), 1, reactor)
    yield conn, peer, reactor
    ours.close()
    peer.close()


class _FakePort:
    _realPortNumber = 8080
    _type = "TCP"
    sessionno = 0


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    finally:
        listener.close()
    return ours, peer


def _read(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


def test_write_now_sends_at_once_when_nothing_is_queued(tcp_pair):
    conn, peer, reactor = tcp_pair
    wsfast.write_now(conn, b"SIP/2.0 200 OK\r\n\r\n")
    assert _read(peer) == b"SIP/2.0 200 OK\r\n\r\n"
    assert reactor.getWriters() == []  # nothing left for the reactor to flush


def test_write_now_queues_behind_what_twisted_already_holds(tcp_pair):
    conn, peer, reactor = tcp_pair
    conn.write(b"first ")
    wsfast.write_now(conn, b"second")
    assert _read(peer) == b""  # both wait for the reactor, in order
    conn.doWrite()
    assert _read(peer) == b"first second"


def test_write_now_leaves_what_the_socket_did_not_take_to_twisted_in_order(tcp_pair):
    conn, peer, reactor = tcp_pair
    data = bytes(range(256)) * 32768  # 8 MB: more than the socket buffers hold
    wsfast.write_now(conn, data)
    assert conn in reactor.getWriters()
    received = b""
    for _ in range(100_000):  # bounded: each turn moves what the buffers hold
        received += _read(peer)
        if len(received) >= len(data):
            break
        conn.doWrite()
    assert len(received) == len(data)
    assert received == data


def test_write_now_over_anything_but_plain_tcp_is_the_transport_s_write():
    transport = StringTransport()
    wsfast.write_now(transport, b"abc")
    assert transport.value() == b"abc"
