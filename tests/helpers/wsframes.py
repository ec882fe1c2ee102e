"""RFC 6455 by hand, for tests: opening handshakes and frames, well-formed or deliberately not.

Written independently of autobahn (which sipgw uses), so the tests do not check autobahn
against itself. ``frame`` builds any frame a misbehaving client could send (unmasked,
reserved opcodes, fragmented control frames); ``FrameReader`` parses what the server sends,
with the frame parser of sipgw's load client (``sipgw.tools.wsload``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

from sipgw.tools.wsload import parse_frame

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


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
        key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1"]
    for name, value in (
        ("Host", host), ("Upgrade", upgrade), ("Connection", connection),
        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version),
        ("Sec-WebSocket-Protocol", protocol), ("Origin", origin),
    ):  # fmt: skip
        if value is not None:
            lines.append(f"{name}: {value}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key or ""


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(
    opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True, rsv: int = 0
) -> bytes:
    """One frame; clients must mask (RFC 6455 §5.3), so ``mask=False`` is a violation."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def close_frame(code: int, reason: bytes = b"", *, mask: bool = True) -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason, mask=mask)


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]


class FrameReader:
    """Parses server frames (unmasked) from a byte stream, after the HTTP response."""

    def __init__(self) -> None:
        self.buffer = b""
        self.http: bytes | None = None

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        if self.http is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return []
            self.http, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
        out = []
        while True:
            f = self._one()
            if f is None:
                return out
            out.append(f)

    def _one(self) -> Frame | None:
        frame = parse_frame(self.buffer)
        if frame is None:
            return None
        fin, opcode, payload, used = frame
        self.buffer = self.buffer[used:]
        return Frame(fin, opcode, payload)

    @property
    def status(self) -> int | None:
        if self.http is None:
            return None
        return int(self.http.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        assert self.http is not None
        for line in self.http.decode("latin-1").split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None
