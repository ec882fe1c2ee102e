"""sipgw's ``ProxyService`` in-process on a real reactor and real loopback sockets.

The reactor is a private ``EPollReactor`` (never installed as the global one, so each test
gets its own and closes it), driven turn by turn with ``iterate`` until what a test waits
for has happened, within a bound. Its clock can jump ahead (``jump``): idle, keepalive and
handshake timeouts run out at once instead of being waited for, while sockets stay real.

Clients are plain non-blocking sockets (TLS through ``ssl`` on them) spoken to with
hand-made bytes, so nothing on the client side adds objects of its own to the process.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.runtime import seconds as wall_seconds

from sipgw.config import load_config
from sipgw.proxy.service import make_service
from tests.helpers import wsframes as wf
from tests.helpers.certs import CertAuthority

TURNS = 2_000  # reactor turns a wait may take (each at most 10 ms): 20 s at worst


class JumpingReactor(EPollReactor):
    """The real epoll reactor with a clock that can be moved forward."""

    def __init__(self) -> None:
        self.skew = 0.0
        super().__init__()

    def seconds(self) -> float:
        return wall_seconds() + self.skew

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        # Twisted's own listenSSL flushes TLS writes on the global reactor's next turn,
        # which never comes here: the TLS layer gets this reactor as its clock instead.
        tls = TLSMemoryBIOFactory(contextFactory, False, factory, clock=self)
        return self.listenTCP(port, tls, backlog, interface)

    def jump(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead and run what became due."""
        self.skew += seconds
        self.iterate(0)

    def until(self, done, what: str) -> None:
        """Turn the reactor until ``done()``; AssertionError naming ``what`` if it never is."""
        for _ in range(TURNS):
            if done():
                return
            self.iterate(0.01)
        raise AssertionError(f"never happened: {what}")

    def close(self) -> None:
        for call in self.getDelayedCalls():
            call.cancel()
        self.disconnectAll()
        for reader in list(self._internalReaders):
            self.removeReader(reader)
            reader.connectionLost(None)
        self._internalReaders.clear()
        self._poller.close()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """A UDP socket standing for the backend: what sipgw relays to it, answered by hand."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.got: list[tuple[bytes, tuple]] = []

    def poll(self) -> bool:
        try:
            while True:
                self.got.append(self.sock.recvfrom(65535))
        except BlockingIOError:
            pass
        return bool(self.got)

    def answer(self, reactor: JumpingReactor, answer) -> bytes:
        """Wait for one relayed message, send ``answer(message)`` back; the message."""
        reactor.until(self.poll, "a message relayed to the backend")
        data, addr = self.got.pop(0)
        self.sock.sendto(answer(data), addr)
        return data


class Live:
    """One ProxyService listening on udp, tcp, tls, ws and wss on free loopback ports."""

    def __init__(self, work: Path, limits: str = "") -> None:
        self.reactor = JumpingReactor()
        self.backend = Backend()
        chain, key, _ = CertAuthority(work / "ca").issue()
        self.ports = {t: free_port() for t in ("tcp", "tls", "ws", "wss")}
        self.ports["udp"] = free_port(socket.SOCK_DGRAM)
        p = self.ports
        (work / "sipgw.toml").write_text(f"""
[listen]
udp = ["127.0.0.1:{p['udp']}"]
tcp = ["127.0.0.1:{p['tcp']}"]
tls = ["127.0.0.1:{p['tls']}"]
ws = ["127.0.0.1:{p['ws']}"]
wss = ["127.0.0.1:{p['wss']}"]
[tls]
certificate = "{chain}"
private_key = "{key}"
[dispatcher]
destinations = ["sip:127.0.0.1:{self.backend.port}"]
ping_interval = 0
[auth]
trusted = ["127.0.0.0/8"]
[limits]
{limits}
[overload]
# Jumps of the clock look like an event loop seconds late: sipgw would shed new requests.
enabled = false
[control]
socket = "{work}/sipgw.ctl"
[state]
directory = "{work}"
[log]
level = "warning"
""")
        self.service = make_service(load_config(str(work / "sipgw.toml")), self.reactor)
        self.service.startService()
        self.client_tls = ssl.create_default_context(cafile=str(work / "ca" / "root.pem"))

    def stop(self) -> None:
        self.service.stopService()
        self.reactor.iterate(0)
        self.reactor.close()
        self.backend.sock.close()

    def connect(self, transport: str, **kw) -> Peer:
        return Peer(self, transport, **kw)

    def connections(self) -> int:
        """TCP connections sipgw holds, accepted or its own (not yet fully closed)."""
        readers = self.reactor.getReaders() + self.reactor.getWriters()
        return len({id(r) for r in readers if isinstance(r, tcp.Connection)})


class Peer:
    """A client connection into one listener: bytes out, bytes in, all while the reactor
    turns (the client and sipgw share this thread)."""

    def __init__(self, live: Live, transport: str, *, tls: bool = True,
                 receive_buffer: int = 0) -> None:
        """``tls=False``: a TLS port spoken to in the clear; ``receive_buffer``: a small
        SO_RCVBUF for a client that is to fall behind."""
        self.live = live
        self.reactor = live.reactor
        self.received = b""
        self.closed = False
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        raw.connect(("127.0.0.1", live.ports[transport]))
        raw.setblocking(False)
        self.sock = raw
        self.tls_failed = False
        self._reader = wf.FrameReader()  # the 101's head, then frames
        self._fed = 0
        if tls and transport in ("tls", "wss"):
            self.sock = live.client_tls.wrap_socket(raw, server_hostname="localhost",
                                                   do_handshake_on_connect=False)
            self.reactor.until(self._handshake, f"{transport} handshake")

    def _handshake(self) -> bool:
        try:
            self.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (ConnectionError, ssl.SSLError):
            self.tls_failed = self.closed = True
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> bytes:
        """What has arrived so far; sets ``closed`` once sipgw closed the connection."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed = True
                    break
                self.received += chunk
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except (ConnectionError, ssl.SSLError):
            self.closed = True
        return self.received

    def wait_for(self, marker: bytes, what: str) -> bytes:
        self.reactor.until(lambda: marker in self.read(), what)
        return self.received

    def wait_closed(self, what: str) -> None:
        """Until sipgw has closed the connection; then this end is closed too."""
        self.reactor.until(self._gone, what)
        self.sock.close()

    def _gone(self) -> bool:
        self.read()
        return self.closed

    def close(self) -> None:
        self.sock.close()

    # -- WebSocket ----------------------------------------------------------------------

    def http(self, request: bytes) -> bytes:
        """Send an HTTP request head; the status line of the answer."""
        self.send(request)
        self.wait_for(b"\r\n\r\n", "an HTTP answer")
        return self.received.split(b"\r\n", 1)[0]

    def ws_open(self) -> None:
        status = self.http(wf.handshake(host="127.0.0.1")[0])
        assert status.startswith(b"HTTP/1.1 101 "), status

    def ws_frames(self) -> list[wf.Frame]:
        """The WebSocket frames received since the last call."""
        data = self.read()
        new, self._fed = data[self._fed:], len(data)
        return self._reader.feed(new)
