"""Splitting a byte stream (TCP, TLS) into SIP messages by Content-Length (RFC 3261 §18.3).

Feed it whatever the socket gave; get back whole messages, in order, however the bytes were
chunked. RFC 5626 §4.4.1 keepalives are reported as ``PING`` (a double CRLF, to be answered
with one CRLF); a lone CRLF (the answer to our ping) is swallowed.

A stream whose framing can no longer be trusted (bad or conflicting Content-Length, a header
section or message over the size limit) raises ``FramingError``: the caller answers if it
can and closes the connection, because there is no way to find the next message.
"""

from __future__ import annotations

import re

from sipgw.sip.errors import FramingError
from sipgw.sip.parser import DEFAULT_LIMITS, Limits

PING = "ping"
_HEAD_KEPT = 8192  # enough of a bad message's headers to answer it

# The value may be folded onto continuation lines (RFC 3261 §7.3.1), as the parser allows.
_CL_RE = re.compile(
    rb"\r\n(?:content-length|l)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE
)


class StreamFramer:
    """Stateful splitter for one connection's inbound bytes."""

    __slots__ = ("_buf", "_scan", "_limits")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for the end of headers
        self._limits = limits

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | str]:
        """Add bytes; return complete messages (bytes) and ``PING`` events.

        On a framing error the ``FramingError`` carries what was framed before it
        (``framed``) and the start of the offending message (``head``, for a reply), so
        nothing already received is lost to the way TCP happened to split the bytes.
        """
        out: list[bytes | str] = []
        try:
            self._frame(data, out)
        except FramingError as e:
            e.framed = out  # type: ignore[attr-defined]
            e.head = bytes(self._buf[:_HEAD_KEPT])  # type: ignore[attr-defined]
            raise
        return out

    def _frame(self, data: bytes, out: list[bytes | str]) -> None:
        buf = self._buf
        buf += data
        limit = self._limits.max_message_size
        while buf:
            if buf[0] == 13 or buf[0] == 10:
                if not self._eat_crlfs(out):
                    break
                continue
            end = buf.find(b"\r\n\r\n", self._scan)
            if end < 0:
                if len(buf) > limit:
                    raise FramingError("Message too large", status=513)
                # Resume the search where a partial terminator could start.
                self._scan = max(0, len(buf) - 3)
                break
            length = self._content_length(bytes(buf[: end + 2]))
            total = end + 4 + length
            if total > limit:
                raise FramingError("Message too large", status=513)
            if len(buf) < total:
                self._scan = end
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._scan = 0

    def _eat_crlfs(self, out: list[bytes | str]) -> bool:
        """Consume keepalive CRLFs at the head of the buffer; False when more is needed."""
        buf = self._buf
        if buf[:4] == b"\r\n\r\n":
            out.append(PING)
            del buf[:4]
            return True
        if buf[:2] == b"\r\n":
            if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                return False  # maybe the first half of a ping
            del buf[:2]
            return True
        if len(buf) == 1 and buf[0] == 13:
            return False
        raise FramingError("Bad line ending between messages")

    @staticmethod
    def _content_length(head: bytes) -> int:
        # Strip only LWS, as the parser does: "5\x0b" must not frame as 5 here and be
        # refused there.
        values = {m.group(1).strip(b" \t\r\n") for m in _CL_RE.finditer(head)}
        if not values:
            # RFC 3261 §18.3 makes it mandatory on streams; treat its absence as no body,
            # as most stacks do, and let the parser decide about the message.
            return 0
        if len(values) > 1:
            raise FramingError("Conflicting Content-Length headers")
        value = values.pop()
        if not value.isdigit() or len(value) > 9:
            raise FramingError("Bad Content-Length header")
        return int(value)
