"""Errors raised by the SIP core.

Every error names the culprit in words an operator can grep for, and carries the status a
peer should get. ``status=None`` means no reply is possible or wanted (a malformed response,
garbage that is not SIP at all): the message is dropped.
"""

from __future__ import annotations


class SipError(Exception):
    """Base of every error the core raises about a message."""

    def __init__(self, reason: str, *, status: int | None = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, status={self.status})"


class ParseError(SipError):
    """The bytes are not a well-formed SIP message (the remote peer's fault)."""


class LimitError(ParseError):
    """The message exceeds a size or count limit; it is refused, never buffered."""


class FramingError(ParseError):
    """A stream can no longer be split into messages; the connection must be closed."""
