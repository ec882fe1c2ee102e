"""RFC 6455 for tests: opening handshakes and frames, well-formed or deliberately not.

Built on sipgw's own codec (``sipgw.wire.websocket``), not on autobahn, which sipgw's
server uses, so the tests do not check autobahn against itself. The proxy's fast path
shares the codec; so that a bug in it cannot hide on both ends, tests/wire/ holds it to
RFC 6455's own example bytes and tests/proxy/transport/ws/test_wsfast.py holds the fast path to
autobahn's results. ``frame`` builds any frame a misbehaving client could send (unmasked,
reserved opcodes, fragmented control frames); ``FrameReader`` reads the server's answer
and then its frames, refusing any frame a server may not send.
"""

from __future__ import annotations

from sipgw.wire import websocket as ws
from sipgw.wire.websocket import (  # noqa: F401 - the names the tests use
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Frame,
)
from sipgw.wire.websocket import accept_key as accept_for  # noqa: F401


def handshake(
    *,
    path: str = "/",
    host: str = "127.0.0.1",
    key: str | None = "",
    version: str | None = "13",
    protocol: str | None = "sip",
    origin: str | None = None,
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    extra: tuple[str, ...] = (),
) -> tuple[bytes, str]:
    """An opening handshake request (any header may be left out with None) and its key
    (``key=""``, the default, makes a fresh one)."""
    if key == "":
        key = ws.new_key()
    request = ws.handshake_request(host=host, key=key, path=path, protocol=protocol,
                                   origin=origin, version=version, upgrade=upgrade,
                                   connection=connection, headers=extra)
    return request, key or ""


def frame(
    opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True, rsv: int = 0
) -> bytes:
    """One frame; clients must mask (RFC 6455 §5.3), so ``mask=False`` is a violation."""
    return ws.encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask)


def close_frame(code: int, reason: bytes = b"", *, mask: bool = True) -> bytes:
    return frame(CLOSE, ws.close_payload(code, reason), mask=mask)


class FrameReader:
    """What a client reads: the server's HTTP answer, then (after a 101) its frames."""

    def __init__(self) -> None:
        self.response: ws.Response | None = None
        self.body = b""  # what follows an answer other than 101 (an error page)
        self._pending = b""
        self._frames = ws.FrameDecoder(masked=False)

    def feed(self, data: bytes) -> list[Frame]:
        if self.response is None:
            self._pending += data
            answer = ws.parse_response(self._pending)
            if answer is None:
                return []
            self.response, data = answer
            self._pending = b""
        if self.response.status != 101:
            self.body += data
            return []
        return self._frames.feed(data)

    @property
    def http(self) -> bytes | None:
        """The answer's head as received, blank line included."""
        return self.response.head if self.response is not None else None

    @property
    def status(self) -> int | None:
        return self.response.status if self.response is not None else None

    def header(self, name: str) -> str | None:
        assert self.response is not None
        return self.response.header(name)
