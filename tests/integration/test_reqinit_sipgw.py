"""REQINIT at the edge of a real sipgw: what is not WebSocket on a WebSocket port, and a
message over limits.max_message_size on each transport, is refused and never routed."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.integration.sipgw_process import TcpPeer, UdpPeer, build_request
from tests.integration.sipp import free_port
from tests.integration.test_ws_sipp import WsSipgw
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration

MAX_SIZE = 2000


@pytest.fixture
def gw_and_backend(tmp_path: Path):
    backend = UdpPeer()
    gw = WsSipgw(tmp_path / "sipgw", ws_port=free_port("tcp"), backend=backend.address,
                 extra_toml=f"[limits]\nmax_message_size = {MAX_SIZE}\n")
    gw.start()
    yield gw, backend
    gw.stop()
    backend.close()


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """Everything the other end sends within ``limit`` seconds, and whether it closed."""
    data = b""
    deadline = time.monotonic() + limit
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65535)
        except TimeoutError:
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


def test_raw_sip_over_tcp_to_the_websocket_port_is_refused_and_never_routed(gw_and_backend):
    gw, backend = gw_and_backend
    with socket.create_connection(("127.0.0.1", gw.ws_port), timeout=3) as raw:
        peer = SimpleNamespace(transport="tcp", address=f"127.0.0.1:{raw.getsockname()[1]}")
        raw.sendall(build_request("INVITE", f"sip:5002@{gw.address}", peer=peer,
                                  call_id="raw-on-ws", branch="z9hG4bKrawonws"))
        answer, closed = read_until_closed(raw, 5)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"SIP/2.0" not in answer
    assert closed
    assert backend.collect(0.5) == []  # had it been routed, the backend would have it
    # The same port still serves WebSocket.
    with WsPeer(gw.ws_address) as ws:
        assert ws.status == 101


def big_options(peer, gw) -> bytes:
    return build_request("OPTIONS", f"sip:{gw.address}", peer=peer, call_id=f"big-{peer.port}",
                         branch=f"z9hG4bKbig{peer.port}", headers=[f"X-Pad: {'x' * MAX_SIZE}"])


def test_a_message_over_the_size_cap_is_refused_on_every_transport(gw_and_backend):
    gw, backend = gw_and_backend
    with UdpPeer(gw.address) as udp:
        udp.send(big_options(udp, gw))
        assert udp.expect("513", timeout=3).status == 513
    with TcpPeer(gw.address) as tcp:
        tcp.send(big_options(tcp, gw))
        assert tcp.expect("513", timeout=3).status == 513
        deadline = time.monotonic() + 3
        while not tcp.closed_by_peer and time.monotonic() < deadline:
            tcp.collect(0.1)
        assert tcp.closed_by_peer  # a stream cannot be resynchronised after it
    with WsPeer(gw.ws_address) as ws:
        ws.send(big_options(ws, gw))
        deadline = time.monotonic() + 3
        while ws.closed is None and time.monotonic() < deadline:
            ws.collect(0.1)
        assert ws.closed is not None and ws.closed.close_code == 1009  # RFC 6455 too big
    assert backend.collect(0.3) == []
    # Within the cap, all three are answered.
    with UdpPeer(gw.address) as udp:
        udp.send(build_request("OPTIONS", f"sip:{gw.address}", peer=udp, call_id="small",
                               branch="z9hG4bKsmall"))
        assert udp.expect("200", timeout=3)


def test_sip_over_tls_or_plain_tcp_to_the_secure_websocket_port_is_refused(tmp_path: Path):
    import ssl

    from tests.helpers.certs import CertAuthority
    from tests.integration.test_tls_sipgw import TlsSipgw

    ca = CertAuthority(tmp_path / "ca")
    chain, key, _ = ca.issue("one")
    context = ssl.create_default_context(cafile=str(ca.root_path))
    with UdpPeer() as backend:
        gw = TlsSipgw(tmp_path / "sipgw", chain=chain, key=key, backend=backend.address)
        gw.start()
        try:
            invite = build_request("INVITE", f"sip:5002@{gw.address}", call_id="raw-on-wss",
                                   peer=SimpleNamespace(transport="tls", address="a.invalid"),
                                   branch="z9hG4bKrawonwss")
            # SIP over TLS, as to a tls listener: the TLS is fine, the HTTP is not.
            with socket.create_connection(("127.0.0.1", gw.wss_port), timeout=3) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(invite)
                    answer, closed = read_until_closed(tls, 5)
            assert answer.startswith(b"HTTP/1.1 400") and closed, answer[:80]
            # Plain SIP over TCP: not even TLS; no SIP answer, the connection closed.
            with socket.create_connection(("127.0.0.1", gw.wss_port), timeout=3) as raw:
                raw.sendall(invite)
                answer, closed = read_until_closed(raw, 5)
            assert b"SIP/2.0" not in answer and closed
            assert backend.collect(0.5) == []
        finally:
            gw.stop()
