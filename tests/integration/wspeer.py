"""A hand-driven SIP-over-WebSocket client (RFC 7118) on a real socket, for integration tests.

It speaks RFC 6455 with ``tests.helpers.wsframes``, over sipgw's own codec, which the
proxy's fast path shares: what keeps a bug from hiding on both ends is that the codec is
tested on RFC 6455's own bytes (tests/wire/) and the fast path against autobahn's results
(tests/proxy/transport/ws/test_wsfast.py). Like the UDP and TCP peers, every read is bounded by a
deadline; pings from sipgw are answered with pongs.
"""

from __future__ import annotations

import socket
import ssl
import time

from tests.helpers import wsframes as wf
from tests.integration.sipgw_process import _decode, _Peer


class WsPeer(_Peer):
    """One WebSocket connection from 127.0.0.1 (or ``source``) to ``remote`` ("host:port")."""

    transport = "ws"

    def __init__(self, remote: str, *, path: str = "/", timeout: float = 3.0,
                 tls: ssl.SSLContext | None = None, source: str | None = None, **handshake):
        super().__init__()
        host, port = remote.rsplit(":", 1)
        self.socket = socket.create_connection(
            (host, int(port)), timeout=timeout,
            source_address=(source, 0) if source is not None else None)
        if tls is not None:  # WSS
            self.socket = tls.wrap_socket(self.socket, server_hostname="localhost")
        self.port = self.socket.getsockname()[1]
        self.reader = wf.FrameReader()
        self.closed: wf.Frame | None = None  # the close frame sipgw sent, if any
        request, self.key = wf.handshake(path=path, host=remote, **handshake)
        self.socket.sendall(request)
        deadline = time.monotonic() + timeout
        while self.reader.http is None and time.monotonic() < deadline:
            self._recv(deadline - time.monotonic())
        self.status = self.reader.status

    @property
    def address(self) -> str:
        # The Contact a browser writes: a made-up host that only the alias can reach.
        return f"{self.port}.invalid"

    def send(self, data: bytes | str) -> None:
        payload = data.encode() if isinstance(data, str) else data
        self.socket.sendall(wf.frame(wf.TEXT, payload))

    def send_raw(self, data: bytes) -> None:
        self.socket.sendall(data)

    def _recv(self, timeout: float) -> list[wf.Frame]:
        self.socket.settimeout(max(timeout, 0.001))
        try:
            data = self.socket.recv(65536)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return []
        if not data:
            return []
        return self.reader.feed(data)

    def _read(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        while not out and self.closed is None:
            frames = self._recv(deadline - time.monotonic())
            for f in frames:
                if f.opcode in (wf.TEXT, wf.BINARY):
                    out.append(f.payload)
                elif f.opcode == wf.PING:
                    self.socket.sendall(wf.frame(wf.PONG, f.payload))
                elif f.opcode == wf.CLOSE:
                    self.closed = f
            if time.monotonic() >= deadline:
                break
        return out


__all__ = ["WsPeer", "_decode"]
