"""Lexical pieces of the RFC 3261 §25 grammar shared by every header parser.

Header values arrive here already unfolded (§7.3.1: folding is one SP) and as ``str``
decoded with latin-1, so every octet maps to one character and back without loss.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

from sipgw.sip.errors import ParseError

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_TOKEN_FULL = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
LWS = " \t"


def is_token(text: str) -> bool:
    return _TOKEN_FULL.match(text) is not None


def split_commas(value: str) -> list[str]:
    """Split a header value on the commas that separate list elements (§7.3.1).

    Commas inside quoted strings, angle brackets or (for Via) IPv6 brackets are not
    separators. Elements are stripped of surrounding whitespace; empty elements are kept so
    a caller can refuse them where the grammar forbids them.
    """
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:
        # Nothing can protect a comma: the usual Via/Route/Allow line takes the C path.
        return [part.strip() for part in value.split(",")]
    out: list[str] = []
    start = 0
    in_quote = False
    angle = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            angle += 1
        elif ch == ">":
            if angle:
                angle -= 1
        elif ch == "," and not angle:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    if in_quote:
        raise ParseError("Unterminated quoted string")
    out.append(value[start:].strip())
    return out


def read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at ``text[pos] == '"'``.

    Returns the unescaped content and the index just past the closing quote.
    """
    assert text[pos] == '"'
    i = pos + 1
    n = len(text)
    chunks: list[str] = []
    start = i
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n:
                break
            chunks.append(text[start:i])
            chunks.append(text[i + 1])
            i += 2
            start = i
            continue
        if ch == '"':
            chunks.append(text[start:i])
            return "".join(chunks), i + 1
        i += 1
    raise ParseError("Unterminated quoted string")


def quote(text: str) -> str:
    """Make a quoted-string of ``text``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str, *, what: str) -> list[tuple[str, str | None]]:
    """Parse ``;name[=value]`` pairs (generic-param, §25.1) from ``text``.

    ``text`` starts at the first ``;`` (or is empty). Values may be tokens, host names,
    IPv6 references or quoted strings (kept quoted, so serialization is exact). Empty
    parameters (``;;``) are an error: two parsers could disagree about them.
    """
    params: list[tuple[str, str | None]] = []
    i = 0
    n = len(text)
    while i < n:
        while i < n and text[i] in LWS:
            i += 1
        if i >= n:
            break
        if text[i] != ";":
            raise ParseError(f"Bad {what} parameters")
        i += 1
        while i < n and text[i] in LWS:
            i += 1
        m = TOKEN_RE.match(text, i)
        if m is None:
            raise ParseError(f"Empty or bad {what} parameter")
        name = m.group()
        i = m.end()
        while i < n and text[i] in LWS:
            i += 1
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in LWS:
                i += 1
            if i < n and text[i] == '"':
                _, end = read_quoted(text, i)
                value = text[i:end]
                i = end
            elif i < n and text[i] == "[":
                end = text.find("]", i)
                if end < 0:
                    raise ParseError(f"Bad {what} parameter {name}")
                value = text[i : end + 1]
                i = end + 1
            else:
                m = TOKEN_RE.match(text, i)
                if m is None:
                    raise ParseError(f"Bad {what} parameter {name}")
                value = m.group()
                i = m.end()
        params.append((name, value))
    return params


def format_params(params: list[tuple[str, str | None]]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def get_param(params: list[tuple[str, str | None]], name: str) -> str | None:
    """Value of the first parameter called ``name`` (case-insensitive); '' if it has none."""
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return "" if v is None else v
    return None


def has_param(params: list[tuple[str, str | None]], name: str) -> bool:
    lname = name.lower()
    return any(k.lower() == lname for k, _ in params)


def set_param(
    params: list[tuple[str, str | None]], name: str, value: str | None
) -> list[tuple[str, str | None]]:
    """Return params with ``name`` set to ``value``, keeping its position if present."""
    lname = name.lower()
    out = []
    done = False
    for k, v in params:
        if k.lower() == lname:
            if not done:
                out.append((k, value))
                done = True
        else:
            out.append((k, v))
    if not done:
        out.append((name, value))
    return out


def del_param(params: list[tuple[str, str | None]], name: str) -> list[tuple[str, str | None]]:
    lname = name.lower()
    return [(k, v) for k, v in params if k.lower() != lname]


_P = TypeVar("_P", bound="HasParams")


class HasParams:
    """Parameter access for the frozen dataclasses that carry ``params`` (URI, Via,
    name-addr): one implementation, case-insensitive names, raw values."""

    __slots__ = ()
    params: Any

    def param(self, name: str) -> str | None:
        """The parameter's raw value (quotes kept); '' if valueless, None if absent."""
        lname = name.lower()
        for k, v in self.params:
            if k.lower() == lname:
                return "" if v is None else v
        return None

    def with_param(self: _P, name: str, value: str | None = None) -> _P:
        """A copy with ``name`` set, in place if present, else appended; value is raw."""
        return dataclasses.replace(self, params=tuple(set_param(self.params, name, value)))  # type: ignore[type-var]

    def without_param(self: _P, name: str) -> _P:
        return dataclasses.replace(self, params=tuple(del_param(self.params, name)))  # type: ignore[type-var]

    def replace(self: _P, **changes: object) -> _P:
        """A copy with fields changed, e.g. ``uri.replace(host="192.0.2.1", port=5080)``."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
