"""A connection's whole life leaves nothing for the cyclic garbage collector.

``sipgw serve`` freezes what survives a young collection and runs a full one only every
five minutes (``gcpolicy``). Objects in a reference cycle wait for it: after a churn of
thousands of WebSocket connections, some 17 kB each. So a connection, whichever way it
ends, must be freed by reference counting the moment it is closed.

Each test drives real connections over loopback into a ``ProxyService`` on a real reactor
(``tests/helpers/liveproxy.py``), with the collector off, then asks it what it would find.
The cycles are reported by kind, with the attributes that link them.
"""

from __future__ import annotations

import gc
import socket
from types import MethodType

import pytest
from twisted.internet import tcp
from zope.interface.declarations import InstanceDeclarations

from sipgw.proxy.transport.stream import StreamConnection
from sipgw.proxy.transport.ws import WsConnection
from sipgw.tools.loadflows import uas_answer
from tests.helpers import wsframes as wf
from tests.helpers.cycles import cycles_in, describe, garbage
from tests.helpers.liveproxy import Live, Peer

RUNS = 20
BIG = 30_000  # bytes per message pushed at a client that does not read
CONNECTIONS = (StreamConnection, WsConnection)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    # Small per-address caps, so that the third connection from 127.0.0.1 is refused;
    # the smallest write bound, so a client that does not read is dropped soon.
    proxy = Live(tmp_path_factory.mktemp("live"), limits="""
ws_max_connections_per_address = 2
tcp_max_connections_per_address = 2
max_write_queue = 4096
""")
    yield proxy
    proxy.stop()


def _register(n: int, transport: str) -> bytes:
    via = transport.upper()
    return (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{via} h{n}.invalid;branch=z9hG4bK-cyc-{transport}-{n}\r\n"
        f"From: <sip:u{n}@example.com>;tag=f{n}\r\nTo: <sip:u{n}@example.com>\r\n"
        f"Call-ID: cyc-{transport}-{n}\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:u{n}@h{n}.invalid;transport={transport}>;expires=600\r\n"
        f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _registered(live: Live, transport: str, n: int, **kw) -> Peer:
    """A connection whose REGISTER got the backend's 200 through sipgw."""
    peer = live.connect(transport, **kw)
    message = _register(n, transport)
    if transport in ("ws", "wss"):
        peer.ws_open()
        message = wf.frame(wf.TEXT, message)
    peer.send(message)
    live.backend.answer(live.reactor, lambda data: uas_answer(data, "200 OK", n))
    peer.wait_for(b"SIP/2.0 200 OK", "the 200 to the REGISTER")
    return peer


def _only_flow(live: Live):
    (flow,) = live.service.flows.by_id.values()
    return flow


def _flood(live: Live, peer: Peer) -> None:
    """sipgw writes to a client that reads nothing until it drops the connection."""
    flow = _only_flow(live)
    for _ in range(1000):  # bounded: the write bound is met after a few MB at most
        if peer.closed:
            return
        flow.send(b"MESSAGE sip:u@h.invalid SIP/2.0\r\n" + b"x" * BIG)
        live.reactor.iterate(0)
        peer.closed = live.connections() == 0
    raise AssertionError("a client that reads nothing was never dropped")


# -- WebSocket (ws and wss) ---------------------------------------------------------------


def ws_closed_by_the_client(live, transport, n):
    peer = _registered(live, transport, n)
    peer.send(wf.frame(wf.PING, b"ka"))
    peer.reactor.until(lambda: any(f.opcode == wf.PONG for f in peer.ws_frames()), "a pong")
    peer.send(wf.close_frame(1000))
    peer.wait_closed("sipgw closing after the close handshake")


def ws_dropped_by_the_client(live, transport, n):
    _registered(live, transport, n).close()


def ws_keepalive_then_no_pong(live, transport, n):
    peer = _registered(live, transport, n)
    interval = live.service.ws.settings.keepalive_interval
    live.reactor.jump(interval)
    peer.reactor.until(lambda: any(f.opcode == wf.PING for f in peer.ws_frames()), "a ping")
    frames = live.service.stats.get("websocket:ws_received_frames")
    peer.send(wf.frame(wf.PONG, b""))
    live.reactor.until(
        lambda: live.service.stats.get("websocket:ws_received_frames") > frames, "the pong read")
    live.reactor.jump(interval)
    peer.reactor.until(lambda: any(f.opcode == wf.PING for f in peer.ws_frames()), "a ping")
    live.reactor.jump(interval)  # no pong this time: dropped
    peer.wait_closed("a client that stopped answering pings dropped")


def ws_no_register(live, transport, n):
    peer = live.connect(transport)
    peer.ws_open()
    live.reactor.jump(live.service.ws.limits.ws_register_timeout)
    peer.reactor.until(lambda: any(f.close_code == 1008 for f in peer.ws_frames()), "1008")
    peer.send(wf.close_frame(1008))
    peer.wait_closed("a client that never registered closed")


def ws_closed_by_rpc(live, transport, n):
    peer = _registered(live, transport, n)
    live.service.ws.rpc_close(_only_flow(live).flow_id)
    peer.reactor.until(lambda: any(f.close_code == 1000 for f in peer.ws_frames()), "1000")
    peer.send(wf.close_frame(1000))
    peer.wait_closed("ws.close")


def slow_reader(live, transport, n):
    """A client that stops reading (any transport): dropped by the write bound."""
    peer = _registered(live, transport, n, receive_buffer=4096)
    _flood(live, peer)
    peer.close()


def ws_handshake_refused(live, transport, n):
    peer = live.connect(transport)
    assert peer.http(wf.handshake(protocol=None)[0]).startswith(b"HTTP/1.1 400 ")
    peer.wait_closed("a refused handshake closed")


def ws_plain_get(live, transport, n):
    peer = live.connect(transport)
    assert peer.http(b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    peer.wait_closed("a plain GET answered and closed")


def ws_over_the_address_cap(live, transport, n):
    held = [_registered(live, transport, n), _registered(live, transport, n + 1000)]
    peer = live.connect(transport)
    assert peer.http(wf.handshake()[0]).startswith(b"HTTP/1.1 503 ")
    peer.wait_closed("a handshake over the cap closed")
    for other in held:
        other.close()


def ws_dropped_mid_handshake(live, transport, n):
    peer = live.connect(transport)
    peer.send(wf.handshake()[0][:40])
    live.reactor.until(lambda: live.connections() == 1, "the connection accepted")
    live.reactor.iterate(0.01)
    peer.close()


def ws_handshake_timeout(live, transport, n):
    peer = live.connect(transport)
    peer.send(wf.handshake()[0][:40])
    live.reactor.until(lambda: live.connections() == 1, "the connection accepted")
    live.reactor.jump(live.service.ws.settings.handshake_timeout)
    peer.wait_closed("an unfinished handshake timed out")


# -- SIP over TCP and TLS -----------------------------------------------------------------


def stream_closed_by_the_client(live, transport, n):
    peer = _registered(live, transport, n)
    peer.send(b"\r\n\r\n")  # RFC 5626 keepalive: answered with CRLF
    peer.wait_for(b"SIP/2.0 200 OK\r\n", "the 200")
    peer.close()


def stream_idle(live, transport, n):
    peer = _registered(live, transport, n)
    live.reactor.jump(live.service.stream.settings.tcp_idle_timeout)
    peer.wait_closed("an idle connection closed")


def stream_no_message(live, transport, n):
    peer = live.connect(transport)
    live.reactor.until(lambda: live.connections() == 1, "the connection accepted")
    live.reactor.jump(live.service.stream.settings.tcp_first_message_timeout)
    peer.wait_closed("a connection that sent nothing closed")


def stream_bad_framing(live, transport, n):
    peer = live.connect(transport)
    peer.send(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: many\r\n\r\n")
    peer.wait_closed("a stream that cannot be framed closed")


def stream_closed_by_sipgw(live, transport, n):
    peer = _registered(live, transport, n)
    _only_flow(live).close()
    peer.wait_closed("the flow closed by sipgw")


def stream_over_the_address_cap(live, transport, n):
    held = [_registered(live, transport, n), _registered(live, transport, n + 1000)]
    peer = live.connect(transport, tls=False)
    peer.wait_closed("a connection over the cap closed")
    for other in held:
        other.close()


def tls_spoken_in_the_clear(live, transport, n):
    peer = live.connect(transport, tls=False)
    peer.send(_register(n, "tcp"))
    peer.wait_closed("a TLS port spoken to in the clear closed")


def tls_handshake_dropped(live, transport, n):
    peer = live.connect(transport, tls=False)
    peer.send(b"\x16\x03\x01\x00\xa0\x01\x00")  # the start of a ClientHello, then nothing
    live.reactor.until(lambda: live.connections() == 1, "the connection accepted")
    live.reactor.iterate(0.01)
    peer.close()


# -- sipgw's own connections to a backend over TCP ----------------------------------------


def backend_closes(live, transport, n):
    _to_backend(live, n).close()


def backend_idle(live, transport, n):
    conn = _to_backend(live, n)
    live.reactor.jump(live.service.stream.settings.tcp_idle_timeout)
    live.reactor.until(lambda: live.connections() == 0, "sipgw closing its idle connection")
    conn.close()


def backend_refuses(live, transport, n):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: the connect is refused
        stream = live.service.stream
        stream.send(_register(n, "tcp"), "127.0.0.1", port, None)
        assert ("127.0.0.1", port) in stream._connecting
        live.reactor.until(lambda: ("127.0.0.1", port) not in stream._connecting,
                           "the connect refused")


def _to_backend(live: Live, n: int) -> socket.socket:
    """A message sipgw sends over TCP to a listening backend; the backend's connection."""
    with socket.create_server(("127.0.0.1", 0)) as backend:
        backend.setblocking(False)
        port = backend.getsockname()[1]
        live.service.stream.send(_register(n, "tcp"), "127.0.0.1", port, None)
        accepted = []

        def accept() -> bool:
            try:
                accepted.append(backend.accept()[0])
            except BlockingIOError:
                pass
            return bool(accepted)

        live.reactor.until(accept, "sipgw connecting to the backend")
    return accepted[0]


WS = [ws_closed_by_the_client, ws_dropped_by_the_client, ws_keepalive_then_no_pong,
      ws_no_register, ws_closed_by_rpc, slow_reader, ws_handshake_refused, ws_plain_get,
      ws_over_the_address_cap, ws_dropped_mid_handshake, ws_handshake_timeout]
STREAM = [stream_closed_by_the_client, stream_idle, stream_no_message, stream_bad_framing,
          stream_closed_by_sipgw, slow_reader, stream_over_the_address_cap]
LIVES = ([(t, life) for t in ("ws", "wss") for life in WS]
         + [(t, life) for t in ("tcp", "tls") for life in STREAM]
         + [("tls", tls_spoken_in_the_clear), ("tls", tls_handshake_dropped)]
         + [("tcp", life) for life in (backend_closes, backend_idle, backend_refuses)])


def _settle(live: Live) -> None:
    """Every connection gone and every timer run out, cancelled ones too (the reactor
    keeps those, and what they would have called, until their time)."""
    live.reactor.until(lambda: live.connections() == 0, "every connection closed")
    for _ in range(40):  # steps: a timer may arm the next (timer K after a 200)
        live.reactor.jump(10.0)
    assert len(live.service.flows) == 0


def _twisted_client_cycle(members: list[object]) -> bool:
    """A cycle of Twisted's own outbound TCP transport, out of sipgw's reach: a client
    transport and its connector refer to each other for good (``tcp.Client.connector``,
    ``Connector.transport``), and one whose connect failed keeps ``doConnect`` bound as
    its own ``doRead`` and ``doWrite``."""
    return any(isinstance(o, tcp.Client) for o in members) and all(
        isinstance(o, (tcp.Client, tcp.Connector, dict, MethodType)) for o in members)


def _alive(kinds: tuple) -> int:
    return sum(isinstance(o, kinds) for o in gc.get_objects())


@pytest.mark.parametrize("transport,life", LIVES,
                         ids=[f"{t}-{life.__name__}" for t, life in LIVES])
def test_a_connection_s_life_leaves_nothing_for_the_cyclic_collector(live, transport, life):
    # zope.interface caches each (class, interfaces) declaration weakly, and each is a
    # cycle by design (its resolution order names itself); Twisted's TLS layer asks for
    # one per interface of the socket it wraps. Held here, as they are in a running sipgw
    # between two full collections: made once, then shared by every connection. The
    # collector stays off from the warm-up on: a collection during the warm-up would free
    # them before they are held, and the measured connections would make them again.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for n in range(3):  # warm-up: caches and first allocations are not garbage
            life(live, transport, n)
        _settle(live)
        declarations = list(InstanceDeclarations.values())
        gc.collect()
        for n in range(100, 100 + RUNS):
            life(live, transport, n)
        _settle(live)
        unreachable = garbage()
    finally:
        if was_enabled:
            gc.enable()
    del declarations
    cycles = [c for c in cycles_in(unreachable) if not _twisted_client_cycle(c)]
    assert len(cycles) == 0, (f"{len(cycles)} reference cycles after {RUNS} {transport} "
                              f"connections ({life.__name__}):\n{describe(cycles)}")
    ours = [o for o in unreachable if isinstance(o, CONNECTIONS)]
    assert ours == [], "connections left to the collector by Twisted's own cycles"
    del unreachable, ours
    gc.collect()
    # Nothing else holds a closed connection either (a log buffer keeping one would hide
    # its cycles from this test).
    assert _alive(CONNECTIONS) == 0
