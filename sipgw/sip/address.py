"""name-addr and addr-spec values (RFC 3261 §20.10, §20.20, §20.39, grammar §25.1).

From, To, Contact, Route, Record-Route, Path, Refer-To and friends all carry::

    ( name-addr / addr-spec ) *( SEMI header-param )
    name-addr = [ display-name ] LAQUOT addr-spec RAQUOT

Rules this module keeps:

* §20.10: without angle brackets, everything after the first ``;`` is a header parameter,
  never a URI parameter (RFC 4475 cparam01), and a URI holding ``?`` or ``,`` must be in
  brackets (RFC 4475 regbadct is refused).
* The display name is kept as written (quotes and escapes included) so it serialises back
  unchanged; ``display_name`` gives the unquoted text. An unquoted display name is tokens
  separated by LWS: ``Bell, Alexander <...>`` is refused (RFC 4475 baddn).
* No LWS is needed before ``<`` (RFC 4475 lwsdisp is accepted), but none is allowed
  inside the brackets (RFC 4475 badaspec is refused).
* ``Contact: *`` parses to the ``STAR`` marker, never to a NameAddr.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from sipgw.sip.errors import ParseError
from sipgw.sip.grammar import HasParams, parse_params, read_quoted, split_commas
from sipgw.sip.uri import MEMO_ENTRIES, MEMO_TEXT_MAX, AbsoluteURI, SipURI, parse_uri

if TYPE_CHECKING:
    from sipgw.sip.message import Message

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_LWS = "[ \t]"
_SCHEME_START_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")
_TOKENS_RE = re.compile(rf"{_TOKEN}(?:{_LWS}+{_TOKEN})*\Z")
# The common case: optional simple quoted or token display name, <uri>, token params.
_FAST_RE = re.compile(
    rf'(?:("[^"\\]*"|{_TOKEN}(?: {_TOKEN})*) ?)?<([^<>\s"]+)>'
    rf"((?:;{_TOKEN}(?:={_TOKEN})?)*)\Z"
)


class _Star:
    """The ``*`` of ``Contact: *`` (§10.2.2: remove all bindings); a singleton."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STAR"

    def __str__(self) -> str:
        return "*"


STAR: Final = _Star()


@dataclass(frozen=True, slots=True, kw_only=True)
class NameAddr(HasParams):
    """One address with its header parameters (tag, expires, q, +sip.instance, ...)."""

    display: str | None = None
    uri: SipURI | AbsoluteURI
    params: tuple[tuple[str, str | None], ...] = ()
    bracketed: bool = True

    def __str__(self) -> str:
        uri = str(self.uri)
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        if self.display is not None:
            return f"{self.display} <{uri}>{params}"
        if self.bracketed or ";" in uri or "?" in uri or "," in uri:
            return f"<{uri}>{params}"
        return uri + params

    @property
    def display_name(self) -> str | None:
        """The display name without quotes or escapes."""
        if self.display is None or not self.display.startswith('"'):
            return self.display
        return read_quoted(self.display, 0)[0]

    @property
    def tag(self) -> str | None:
        return self.param("tag")






def parse_name_addr(text: str, *, what: str = "address") -> NameAddr:
    """Parse one name-addr or addr-spec with its header parameters.

    ``what`` names the header in errors, e.g. ``parse_name_addr(v, what="To header")``
    raises ``ParseError("Bad To header: ...")``.
    """
    try:
        # A dialog's From, To, Contact and Route come back on each of its messages: kept
        # as parse_uri keeps URIs (the result is frozen; errors are not kept).
        if len(text) <= MEMO_TEXT_MAX:
            return _parse_name_addr_memo(text)
        return _parse_name_addr(text)
    except ParseError as exc:
        raise ParseError(f"Bad {what}: {_lower_first(exc.reason)}") from None


def _parse_name_addr(text: str) -> NameAddr:
    m = _FAST_RE.match(text)
    if m is not None:
        display, uri_text, params_text = m.groups()
        uri = parse_uri(uri_text)
        params = []
        if params_text:
            for piece in params_text[1:].split(";"):
                name, eq, value = piece.partition("=")
                params.append((name, value if eq else None))
        return NameAddr(display=display, uri=uri, params=tuple(params))
    return _parse_slow(text.strip(" \t"))


_parse_name_addr_memo = functools.lru_cache(maxsize=MEMO_ENTRIES)(_parse_name_addr)


def parse_address_list(value: str, *, what: str = "Contact header") -> list[NameAddr] | _Star:
    """Parse a comma-separated list (Contact, Route, Record-Route, Path).

    Returns ``STAR`` for ``Contact: *`` (test with ``result is STAR``).
    """
    if value.strip(" \t") == "*":
        return STAR
    try:
        elements = split_commas(value)
    except ParseError as exc:
        raise ParseError(f"Bad {what}: {_lower_first(exc.reason)}") from None
    out = []
    for element in elements:
        if not element:
            raise ParseError(f"Bad {what}: empty list element")
        if element == "*":
            raise ParseError(f"Bad {what}: * mixed with addresses")
        out.append(parse_name_addr(element, what=what))
    return out


def message_address_list(msg: Message, value: str) -> tuple[NameAddr, ...] | _Star:
    """``parse_address_list(value)`` for a Contact value of ``msg``, parsed once per
    message: NAT detection, the contact alias and the registrar each read the Contact of a
    REGISTER. Kept in the message's cache by value, so a rewritten Contact is a new entry.
    """
    cache = _address_lists(msg)
    parsed = cache.get(value)
    if parsed is None:
        found = parse_address_list(value)
        parsed = found if isinstance(found, _Star) else tuple(found)
        cache[value] = parsed
    return parsed


def remember_address_list(msg: Message, value: str, parsed: list[NameAddr]) -> None:
    """Record what ``value``, written by sipgw from ``parsed``, parses to."""
    _address_lists(msg)[value] = tuple(parsed)


def _address_lists(msg: Message) -> dict[str, tuple[NameAddr, ...] | _Star]:
    return cast(dict[str, tuple[NameAddr, ...] | _Star],
                msg._cache.setdefault("address_lists", {}))


def _lower_first(reason: str) -> str:
    # "Unterminated quoted string" reads better mid-sentence; "URI ..." must stay as is.
    return reason[:1].lower() + reason[1:] if reason[1:2].islower() else reason


def _parse_slow(s: str) -> NameAddr:
    if not s:
        raise ParseError("empty")
    display: str | None = None
    first = s[0]
    if first == '"':
        _, end = read_quoted(s, 0)
        display = s[:end]
        lt = end
        while lt < len(s) and s[lt] in " \t":
            lt += 1
        if lt >= len(s) or s[lt] != "<":
            raise ParseError("quoted display name not followed by <")
    elif first == "<":
        lt = 0
    elif _SCHEME_START_RE.match(s) is not None:
        return _parse_addr_spec(s)
    else:
        lt = s.find("<")
        if lt < 0:
            raise ParseError("no URI")
        display = s[:lt].rstrip(" \t")
        if _TOKENS_RE.match(display) is None:
            raise ParseError("display name with non-token characters must be quoted")
    gt = s.find(">", lt)
    if gt < 0:
        raise ParseError("missing >")
    uri_text = s[lt + 1 : gt]
    if uri_text != uri_text.strip(" \t"):
        raise ParseError("whitespace inside <>")
    uri = parse_uri(uri_text)
    params = parse_params(s[gt + 1 :], what="header") if gt + 1 < len(s) else []
    return NameAddr(display=display, uri=uri, params=tuple(params), bracketed=True)


def _parse_addr_spec(s: str) -> NameAddr:
    # §20.10: "If the URI is not enclosed in angle brackets, any semicolon-delimited
    # parameters are header-parameters, not URI parameters."
    semi = s.find(";")
    uri_text = (s if semi < 0 else s[:semi]).rstrip(" \t")
    for char in "?,":
        if char in uri_text:
            raise ParseError(f"a URI with {char} must be enclosed in <>")
    uri = parse_uri(uri_text)
    params = parse_params(s[semi:], what="header") if semi >= 0 else []
    return NameAddr(uri=uri, params=tuple(params), bracketed=False)
