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

import base64
import hashlib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


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
    key = base64.b64encode(os.urandom(16)).decode()
    host_header = parts.netloc.rsplit("@", 1)[-1]
    lines = [f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
             f"Host: {host_header}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Protocol: sip"]
    if origin:
        lines.append(f"Origin: {origin}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
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
    except (socket.timeout, TimeoutError):
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
    except (socket.timeout, TimeoutError):
        raise HandshakeFailed(f"no answer within {timeout:g}s") from None
    except OSError as e:
        raise HandshakeFailed(str(e.strerror or e)) from None
    return data


def _answer(data: bytes, key: str, start: float, **extra) -> Handshake:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    first, *rest = head.split("\r\n")
    bits = first.split(" ", 2)
    if len(bits) < 2 or not bits[1].isdigit():
        raise HandshakeFailed(f"not an HTTP answer: {first[:80]!r}")
    headers = {}
    for line in rest:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    return Handshake(status=int(bits[1]), reason=bits[2] if len(bits) > 2 else "",
                     protocol=headers.get("sec-websocket-protocol"),
                     accept_ok=headers.get("sec-websocket-accept") == expected,
                     latency_ms=(time.monotonic() - start) * 1000, **extra)
