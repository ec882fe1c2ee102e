"""RFC 6455 framing and the client's side of the opening handshake, as bytes in and out.

One codec for every WebSocket speaker in sipgw: the proxy's fast path
(``proxy/transport/wsfast.py``) takes the header reader, the unmasking and the server's
frame header from here; the load client, the fuzzer, ``ws-check``, the pcap writer and the
tests take the rest. No sockets, no clock: the callers do the I/O. The only randomness is
a fresh masking key or handshake key when the caller does not pass one (RFC 6455 §5.3 and
§4.1 want them unpredictable, so ``os.urandom``).

Rules enforced when frames are read (RFC 6455 §5.2, §5.4, §5.5), each reported as a
``ProtocolError`` that says which:

* the length in the fewest bytes that hold it, and the 64-bit form's top bit clear;
* no RSV bit without an extension that defines it (none is negotiated for SIP);
* no reserved opcode (0x3-0x7, 0xB-0xF);
* a control frame (close, ping, pong) whole and at most 125 bytes; a close payload is
  empty or a 2-byte code and a reason;
* masked from a client, unmasked from a server, when the reader is told which end it is;
* continuation frames only inside a fragmented message, and no new message inside one
  (``FrameDecoder``, which keeps that state).

UTF-8 of text messages is left to whoever assembles them: it spans fragments.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
VERSION = "13"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_NAMES = {CONTINUATION: "continuation", TEXT: "text", BINARY: "binary", CLOSE: "close",
          PING: "ping", PONG: "pong"}
MAX_CONTROL_PAYLOAD = 125


class ProtocolError(ValueError):
    """Bytes that break RFC 6455; the message says what is wrong, ``close_code`` is the
    status to close with (1002 protocol error, 1009 too big)."""

    def __init__(self, why: str, close_code: int = 1002) -> None:
        super().__init__(why)
        self.close_code = close_code


# -- the opening handshake (RFC 6455 §4) --------------------------------------------------


def new_key() -> str:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes in base64 (§4.1)."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server answers ``key`` with (§4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def handshake_request(
    *,
    host: str | None,
    key: str | None,
    path: str = "/",
    protocol: str | None = "sip",
    origin: str | None = None,
    version: str | None = VERSION,
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    headers: Iterable[str] = (),
) -> bytes:
    """A client's opening handshake (§4.1); any header given as None is left out, and
    ``headers`` (whole ``"Name: value"`` lines) are added at the end."""
    lines = [f"GET {path} HTTP/1.1"]
    for name, value in (
        ("Host", host), ("Upgrade", upgrade), ("Connection", connection),
        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version),
        ("Sec-WebSocket-Protocol", protocol), ("Origin", origin),
    ):  # fmt: skip
        if value is not None:
            lines.append(f"{name}: {value}")
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def handshake_response(key: str, *, protocol: str | None = "sip") -> bytes:
    """A server's 101 accepting ``key`` with ``protocol`` (§4.2.2)."""
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(key)}"]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A server's answer to the opening handshake."""

    status: int
    reason: str
    headers: dict[str, str]  # by lower-case name; a repeated header keeps its last value
    head: bytes  # as received, up to and including the blank line

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def accepts(self, key: str) -> bool:
        """A 101 whose ``Sec-WebSocket-Accept`` is the one for ``key`` (§4.1, point 4)."""
        return self.status == 101 and self.header("Sec-WebSocket-Accept") == accept_key(key)


def parse_response(data: bytes) -> tuple[Response, bytes] | None:
    """The answer at the start of ``data`` and the bytes after it (frames, or an error
    page's body), or None until its blank line has come. ``ProtocolError`` when the first
    line is not an HTTP status line."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end + 4]
    first, *rest = head[:end].decode("latin-1").split("\r\n")
    bits = first.split(" ", 2)
    if len(bits) < 2 or not bits[0].startswith("HTTP/") or not bits[1].isdigit():
        raise ProtocolError(f"not an HTTP answer: {first[:80]!r}")
    headers = {}
    for line in rest:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    response = Response(status=int(bits[1]), reason=bits[2] if len(bits) > 2 else "",
                        headers=headers, head=head)
    return response, data[end + 4:]


# -- frames (RFC 6455 §5) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0  # the three RSV bits, RSV1 highest

    @property
    def close_code(self) -> int | None:
        """The status code of a close frame that has one."""
        if self.opcode != CLOSE or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte ``key`` repeated (§5.3): masks, and unmasks what it masked.

    As one big integer rather than byte by byte: this runs for every message the proxy
    receives over WebSocket, and a Python loop over the bytes costs some 50 times more.
    """
    n = len(data)
    stream = key * (n // 4 + 1)
    return (int.from_bytes(data, "little")
            ^ int.from_bytes(stream[:n], "little")).to_bytes(n, "little")


def frame_head(opcode: int, length: int, *, fin: bool = True, rsv: int = 0,
               masked: bool = False) -> bytes:
    """A frame's header up to its masking key, with the length in its shortest form."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    second = 0x80 if masked else 0
    if length < 126:
        return bytes((first, second | length))
    if length < 65536:
        return struct.pack("!BBH", first, second | 126, length)
    return struct.pack("!BBQ", first, second | 127, length)


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
                 mask: bool | bytes = False) -> bytes:
    """One frame. ``mask``: False for a server's frame, True for a client's with a fresh
    key, or the 4-byte key itself. Nothing is checked: tests build bad frames with it."""
    if mask is False:
        return frame_head(opcode, len(payload), fin=fin, rsv=rsv) + payload
    key = os.urandom(4) if mask is True else mask
    if len(key) != 4:
        raise ValueError(f"a masking key is 4 bytes, not {len(key)}")
    return (frame_head(opcode, len(payload), fin=fin, rsv=rsv, masked=True) + key
            + apply_mask(payload, key))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """A close frame's body: the status code, then the reason, UTF-8 (§5.5.1)."""
    return struct.pack("!H", code) + reason


def parse_header(data: bytes, start: int = 0) -> tuple[int, int, int, int] | None:
    """The frame header at ``data[start:]`` as ``(first byte, second byte, payload length,
    where the payload starts)``; the masking key, if any, is the 4 bytes before the
    payload. None until the whole header has come; ``ProtocolError`` for a length not in
    its shortest form (§5.2)."""
    if len(data) - start < 2:
        return None
    first, second = data[start], data[start + 1]
    length = second & 0x7F
    at = start + 2
    if length == 126:
        if len(data) - at < 2:
            return None
        length = (data[at] << 8) | data[at + 1]
        at += 2
        if length < 126:
            raise ProtocolError(f"length {length} in the 16-bit form (not the shortest)")
    elif length == 127:
        if len(data) - at < 8:
            return None
        (length,) = struct.unpack_from("!Q", data, at)
        at += 8
        if length >> 63:
            raise ProtocolError("64-bit length with its most significant bit set")
        if length < 65536:
            raise ProtocolError(f"length {length} in the 64-bit form (not the shortest)")
    if second & 0x80:
        at += 4
    return first, second, length, at


def decode_frame(data: bytes, start: int = 0, *,
                 masked: bool | None = None) -> tuple[Frame, int] | None:
    """The frame at ``data[start:]``, unmasked, and where the next one starts; None until
    it is whole. ``masked``: True when frames must be masked (a server reading a client),
    False when they must not be (a client reading a server), None to take either.
    ``ProtocolError`` for a frame no extension-less endpoint may send (see the module)."""
    header = parse_header(data, start)
    if header is None:
        return None
    first, second, length, at = header
    opcode, rsv, fin = first & 0x0F, (first >> 4) & 0x07, bool(first & 0x80)
    if rsv:
        raise ProtocolError(f"RSV bits {rsv:#05b} set, but no extension is in use")
    if opcode not in _NAMES:
        raise ProtocolError(f"reserved opcode {opcode:#x}")
    if opcode >= CLOSE:
        if not fin:
            raise ProtocolError(f"a {_NAMES[opcode]} frame in fragments")
        if length > MAX_CONTROL_PAYLOAD:
            raise ProtocolError(f"a {_NAMES[opcode]} frame of {length} bytes "
                                f"(control frames carry at most {MAX_CONTROL_PAYLOAD})")
        if opcode == CLOSE and length == 1:
            raise ProtocolError("a close frame with a 1-byte body (a code is 2 bytes)")
    if masked is not None and bool(second & 0x80) != masked:
        raise ProtocolError("an unmasked frame from a client" if masked
                            else "a masked frame from a server")
    end = at + length
    if len(data) < end:
        return None
    payload = data[at:end]
    if second & 0x80:
        payload = apply_mask(payload, data[at - 4:at])
    return Frame(opcode, payload, fin), end


class FrameDecoder:
    """Bytes in as they arrive, whole frames out (unmasked), in order.

    ``masked`` as for ``decode_frame``; ``max_payload`` (0: none) refuses a bigger frame
    as soon as its header is read, with close code 1009. After a ``ProtocolError`` the
    stream cannot be trusted: every later ``feed`` raises it again.
    """

    __slots__ = ("_chunks", "_size", "_need", "_masked", "_max_payload", "_fragmented",
                 "_error")

    def __init__(self, *, masked: bool | None = None, max_payload: int = 0) -> None:
        # Bytes waiting for the rest of their frame: kept as received and joined only once
        # the frame can be whole, so a big frame arriving in small reads costs no more
        # than one arriving at once.
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = 1  # the buffered size at which a frame may be whole
        self._masked = masked
        self._max_payload = max_payload
        self._fragmented = False  # a text or binary message started and not finished
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> bytes:
        """Bytes received that are not yet a whole frame."""
        return b"".join(self._chunks)

    def feed(self, data: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        if data:
            self._chunks.append(data)
            self._size += len(data)
        if self._size < self._need:
            return []
        buffer = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        frames: list[Frame] = []
        at = 0
        try:
            while True:
                header = parse_header(buffer, at)
                if header is None:
                    self._need = len(buffer) - at + 1
                    break
                if 0 < self._max_payload < header[2]:
                    raise ProtocolError(f"a frame of {header[2]} bytes "
                                        f"(at most {self._max_payload})", close_code=1009)
                got = decode_frame(buffer, at, masked=self._masked)
                if got is None:
                    self._need = header[3] + header[2] - at
                    break
                frame, at = got
                self._check_sequence(frame)
                frames.append(frame)
        except ProtocolError as e:
            self._error = e
            raise
        rest = buffer[at:] if at else buffer
        self._chunks = [rest] if rest else []
        self._size = len(rest)
        return frames

    def _check_sequence(self, frame: Frame) -> None:
        """§5.4: a fragmented message is its first frame, continuations, the last with
        FIN; control frames may come in between, other messages may not."""
        if frame.opcode >= CLOSE:
            return
        if frame.opcode == CONTINUATION:
            if not self._fragmented:
                raise ProtocolError("a continuation frame with no fragmented message to "
                                    "continue")
        elif self._fragmented:
            raise ProtocolError(f"a {_NAMES[frame.opcode]} frame inside a fragmented "
                                "message")
        self._fragmented = not frame.fin
