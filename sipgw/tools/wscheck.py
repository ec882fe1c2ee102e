"""``sipgw tools ws-check URL``: the WebSocket handshake a browser's SIP client makes.

A GET with ``Upgrade: websocket`` and ``Sec-WebSocket-Protocol: sip`` (RFC 7118); healthy
is ``101 Switching Protocols`` with the ``sip`` subprotocol chosen and the right
``Sec-WebSocket-Accept``. ``wss://`` is checked through TLS with certificate verification
(``verify=False`` to look past a bad certificate; the certificate served is kept either
way, so a caller can read its dates). Blocking, bounded by ``timeout``.

``ws_session`` keeps the connection open while the caller looks at it from the proxy's
side (``sipgw doctor`` asks ``ws.dump`` which client address sipgw recorded).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from sipgw.wire import websocket


@dataclass(frozen=True, slots=True, kw_only=True)
class Handshake:
    status: int
    reason: str
    protocol: str | None  # the Sec-WebSocket-Protocol chosen
    accept_ok: bool
    latency_ms: float
    local: tuple[str, int] | None = None  # our end of the connection
    certificate: bytes | None = None  # DER of the certificate a wss:// server presented
    tls_version: str | None = None

    @property
    def healthy(self) -> bool:
        return self.status == 101 and self.protocol == "sip" and self.accept_ok


class HandshakeFailed(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def ws_check(url: str, *, timeout: float = 3.0, verify: bool = True,
             origin: str | None = None) -> Handshake:
    with ws_session(url, timeout=timeout, verify=verify, origin=origin) as hs:
        return hs


@contextmanager
def ws_session(url: str, *, timeout: float = 3.0, verify: bool = True,
               origin: str | None = None, headers: dict[str, str] | None = None,
               source: str | None = None) -> Iterator[Handshake]:
    """The handshake, with the connection held open until the ``with`` block ends.
    ``source`` binds our end to that address; ``headers`` are added to the request."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise HandshakeFailed(f"{url}: expected ws://HOST[:PORT][/PATH] or wss://...")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    key = websocket.new_key()
    request = websocket.handshake_request(
        host=parts.netloc.rsplit("@", 1)[-1], key=key, origin=origin or None,
        path=f"{parts.path or '/'}{'?' + parts.query if parts.query else ''}",
        headers=[f"{name}: {value}" for name, value in (headers or {}).items()])
    start = time.monotonic()
    try:
        raw = socket.create_connection((parts.hostname, port), timeout=timeout,
                                       source_address=(source, 0) if source else None)
    except ConnectionRefusedError:
        raise HandshakeFailed(f"connection refused on {parts.hostname}:{port} "
                              "(nothing listens there)") from None
    except OSError as e:
        raise HandshakeFailed(f"cannot connect to {parts.hostname}:{port}: "
                              f"{e.strerror or e}") from None
    try:
        sock, certificate, version = _secure(raw, parts.hostname, verify) \
            if parts.scheme == "wss" else (raw, None, None)
        data = _exchange(sock, request, timeout)
        local = sock.getsockname()[:2]
        yield _answer(data, key, start, local=local, certificate=certificate,
                      tls_version=version)
    finally:
        raw.close()


def _secure(raw: socket.socket, hostname: str, verify: bool):
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        sock = context.wrap_socket(raw, server_hostname=hostname)
    except ssl.SSLError as e:
        raise HandshakeFailed(f"TLS failed: {e.reason or e}") from None
    except TimeoutError:
        raise HandshakeFailed("no TLS handshake within the timeout") from None
    except OSError as e:
        raise HandshakeFailed(f"TLS failed: {e.strerror or e}") from None
    return sock, sock.getpeercert(binary_form=True), sock.version()


def _exchange(sock: socket.socket, request: bytes, timeout: float) -> bytes:
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise HandshakeFailed("the server closed the connection without an answer")
            data += chunk
            if len(data) > 65536:
                raise HandshakeFailed("no end to the answer's headers")
    except TimeoutError:
        raise HandshakeFailed(f"no answer within {timeout:g}s") from None
    except OSError as e:
        raise HandshakeFailed(str(e.strerror or e)) from None
    return data


def _answer(data: bytes, key: str, start: float, **extra) -> Handshake:
    try:
        answer = websocket.parse_response(data)
    except websocket.ProtocolError as e:
        raise HandshakeFailed(str(e)) from None
    assert answer is not None  # _exchange read up to the blank line
    head = answer[0]
    return Handshake(status=head.status, reason=head.reason,
                     protocol=head.header("Sec-WebSocket-Protocol"),
                     accept_ok=head.header("Sec-WebSocket-Accept")
                     == websocket.accept_key(key),
                     latency_ms=(time.monotonic() - start) * 1000, **extra)
