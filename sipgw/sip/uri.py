"""SIP and SIPS URIs (RFC 3261 §19.1, grammar §25.1) and opaque absolute URIs.

Rules this module keeps:

* The parts of a URI are stored as written: the user part, parameters and headers keep
  their escapes and case, so ``str(uri)`` gives back what we parsed (only the scheme is
  lowercased). Decoding happens on demand (``unescaped_user``) and in ``equivalent``.
* The user part may hold ``;``, ``?``, ``=``, ``,`` and ``/`` (§25.1 user-unreserved), but
  never ``@``, so the first ``@`` ends it (RFC 4475 §3.1.1.9 semiuri).
* Host names are accepted a little more liberally than §25.1 (``_`` is allowed, labels may
  end in ``-``), but a host whose last label starts with a digit must be a dotted quad, and
  an IPv6 reference (kept with its brackets) must be a valid RFC 4291 address.
* Any other scheme is an ``AbsoluteURI``: checked for legal characters and kept opaque.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from sipgw.sip.errors import ParseError
from sipgw.sip.grammar import HasParams

_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESC = r"%[0-9A-Fa-f]{2}"
# §25.1 hostname, loosened: "_" allowed, a label may end in "-"; optional trailing dot.
HOSTNAME = r"[A-Za-z0-9_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_][A-Za-z0-9_\-]*)*\.?"
_HOSTNAME_RE = re.compile(HOSTNAME + r"\Z")
_IPV4_RE = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])\.){3}"
                      r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])\Z")
_IPV6_REF_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")

_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESC})+\Z")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*\Z")
_PARAMCHARS_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+\Z")
_HNAME_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})+\Z")
_HVALUE_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})*\Z")
_OPAQUE_RE = re.compile(rf"(?:[{_UNRESERVED};/?:@&=+$,\[\]#]|{_ESC})+\Z")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):")
_FORBIDDEN_RE = re.compile(r"[\s<>\"]")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_RESERVED = frozenset(";/?:@&=+$,%")

# The common case, e.g. sip:alice@192.0.2.1:5060;transport=tcp;lr: no escapes, no
# IPv6, no password, no headers. Anything else takes the slow path, which is the reference.
_FAST_RE = re.compile(
    rf"(sips?|SIPS?):(?:([{_UNRESERVED}&=+$,]+)@)?({HOSTNAME})(?::([0-9]{{1,5}}))?"
    rf"((?:;[{_UNRESERVED}&+$]+(?:=[{_UNRESERVED}&+$]+)?)*)\Z"
)

# §19.1.4: these parameters never match when present in only one of two URIs.
_STRICT_PARAMS = ("transport", "user", "ttl", "method", "maddr")

Params = tuple[tuple[str, str | None], ...]


def unescape(text: str) -> str:
    """Decode ``%HH`` escapes once (RFC 4475 esc01: ``%25%34%31`` is ``%41``, not ``A``).

    Each escape becomes one character in the latin-1 convention (one char per octet), so
    ``%00`` is a NUL character, not the end of the string.
    """
    if "%" not in text:
        return text
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def check_user(user: str) -> bool:
    """True if ``user`` is a §25.1 user part: unreserved, user-unreserved and escapes."""
    return _USER_RE.match(user) is not None


# Parsing is pure and its results are frozen, and the same texts keep coming: the peers'
# host names in every Via, a service's Request-URI, a dialog's Route and Contact. Those
# parse once while they recur (bounded in entries, and only texts of a usual length are
# kept: an attacker's 60 KB URI is parsed each time, never held). Errors are not kept.
MEMO_TEXT_MAX = 256
MEMO_ENTRIES = 4096


def check_host(host: str) -> bool:
    """True if ``host`` is a host name, a dotted quad or a bracketed IPv6 reference."""
    if len(host) <= MEMO_TEXT_MAX:
        return _check_host_memo(host)
    return _check_host(host)


def _check_host(host: str) -> bool:
    if not host:
        return False
    if host[0] == "[":
        if _IPV6_REF_RE.match(host) is None:
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _HOSTNAME_RE.match(host) is not None and _toplabel_ok(host)


_check_host_memo = functools.lru_cache(maxsize=MEMO_ENTRIES)(_check_host)


def _toplabel_ok(host: str) -> bool:
    """For a ``host`` already matched by HOSTNAME. §25.1: a toplabel starts with a letter,
    so a digit there means the host must be an IPv4 address (with no trailing dot)."""
    if host[-1] == ".":
        return not "0" <= host[host.rfind(".", 0, -1) + 1] <= "9"
    return not "0" <= host[host.rfind(".") + 1] <= "9" or _IPV4_RE.match(host) is not None


def parse_port(text: str) -> int:
    """A port of 1-5 ASCII digits, at most 65535; raises ParseError("bad port")."""
    if _PORT_RE.match(text) is None or int(text) > 65535:
        raise ParseError("bad port")
    return int(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class SipURI(HasParams):
    """A ``sip:`` or ``sips:`` URI; every part kept as written (escaped)."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        for k, v in self.params:
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)




    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def unescaped_user(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    def equivalent(self, other: object) -> bool:
        """RFC 3261 §19.1.4 URI comparison (not ``==``, which compares the text as written)."""
        if not isinstance(other, SipURI) or self.scheme != other.scheme:
            return False
        if (
            _canon_opt(self.user) != _canon_opt(other.user)
            or _canon_opt(self.password) != _canon_opt(other.password)
            or self.port != other.port
            or _host_key(self.host) != _host_key(other.host)
        ):
            return False
        mine, theirs = _param_map(self.params), _param_map(other.params)
        for name in mine.keys() & theirs.keys():
            if mine[name] != theirs[name]:
                return False
        for name in _STRICT_PARAMS:
            if (name in mine) != (name in theirs):
                return False
        return _header_set(self.headers) == _header_set(other.headers)


@dataclass(frozen=True, slots=True, kw_only=True)
class AbsoluteURI:
    """A URI of any scheme other than sip/sips (tel:, urn:, http:, ...), kept opaque."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"

    def equivalent(self, other: object) -> bool:
        return (
            isinstance(other, AbsoluteURI)
            and self.scheme.lower() == other.scheme.lower()
            and self.opaque == other.opaque
        )


URI = SipURI | AbsoluteURI


def parse_uri(text: str) -> SipURI | AbsoluteURI:
    """Parse a Request-URI or the URI of a name-addr; raises ParseError if malformed."""
    if len(text) <= MEMO_TEXT_MAX:
        return _parse_uri_memo(text)
    return _parse_uri(text)


def _parse_uri(text: str) -> SipURI | AbsoluteURI:
    m = _FAST_RE.match(text)
    if m is not None:
        user, host, port, params = m.group(2, 3, 4, 5)
        if _toplabel_ok(host):
            return SipURI(
                scheme=m.group(1).lower(),
                user=user,
                host=host,
                port=None if port is None else _fast_port(port),
                params=_split_fast_params(params) if params else (),
            )
    m = _SCHEME_RE.match(text)
    if m is None:
        raise ParseError("Bad URI: no scheme")
    scheme = m.group(1)
    rest = text[m.end() :]
    lscheme = scheme.lower()
    if lscheme == "sip" or lscheme == "sips":
        try:
            return _parse_sip(lscheme, rest)
        except ParseError as exc:
            raise ParseError(f"Bad SIP URI: {exc.reason}") from None
    if _OPAQUE_RE.match(rest) is None:
        raise ParseError(f"Bad URI: {_what_is_wrong(rest)}")
    return AbsoluteURI(scheme=scheme, opaque=rest)


_parse_uri_memo = functools.lru_cache(maxsize=MEMO_ENTRIES)(_parse_uri)


def _fast_port(text: str) -> int:
    port = int(text)
    if port > 65535:
        raise ParseError("Bad SIP URI: bad port")
    return port


def _split_fast_params(text: str) -> Params:
    out = []
    for piece in text[1:].split(";"):
        name, eq, value = piece.partition("=")
        out.append((name, value if eq else None))
    return tuple(out)


def _what_is_wrong(text: str) -> str:
    if not text:
        return "empty"
    if _FORBIDDEN_RE.search(text):
        return "whitespace, quote or angle bracket inside"
    if _BAD_ESCAPE_RE.search(text):
        return "bad % escape"
    return "illegal character"


def _check(regex: re.Pattern[str], text: str, part: str) -> None:
    if regex.match(text) is None:
        problem = _what_is_wrong(text)
        raise ParseError(f"{problem} in {part}" if text else f"empty {part}")


def _parse_sip(scheme: str, rest: str) -> SipURI:
    """The reference parser for everything after ``sip:``; errors say which part is bad."""
    if not rest:
        raise ParseError("empty")
    if _FORBIDDEN_RE.search(rest):
        raise ParseError(_what_is_wrong(rest))
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if "@" in rest:
            raise ParseError("more than one @")
        user, colon, pw = userinfo.partition(":")
        _check(_USER_RE, user, "user part")
        if colon:
            _check(_PASSWORD_RE, pw, "password")
            password = pw
    # hostport, then ;params, then ?headers
    if rest.startswith("["):
        end = rest.find("]") + 1
        if end == 0:
            raise ParseError("bad IPv6 reference")
    else:
        end = len(rest)
        for sep in ":;?":
            i = rest.find(sep)
            if 0 <= i < end:
                end = i
    host = rest[:end]
    if not host:
        raise ParseError("empty host")
    if not check_host(host):
        raise ParseError("bad IPv6 reference" if host[0] == "[" else "bad host")
    rest = rest[end:]
    port = None
    if rest.startswith(":"):
        end = len(rest)
        for sep in ";?":
            i = rest.find(sep)
            if 0 <= i < end:
                end = i
        port = parse_port(rest[1:end])
        rest = rest[end:]
    if rest and rest[0] not in ";?":
        raise ParseError("bad host")
    params_text, q, headers_text = rest.partition("?")
    params = []
    if params_text:
        for piece in params_text[1:].split(";"):
            name, eq, value = piece.partition("=")
            _check(_PARAMCHARS_RE, name, "parameter name")
            if eq:
                _check(_PARAMCHARS_RE, value, "parameter value")
            params.append((name, value if eq else None))
    headers = []
    if q:
        for piece in headers_text.split("&"):
            name, eq, value = piece.partition("=")
            _check(_HNAME_RE, name, "header name")
            if not eq:
                raise ParseError("header without =")
            _check(_HVALUE_RE, value, "header value")
            headers.append((name, value))
    return SipURI(
        scheme=scheme, user=user, password=password, host=host, port=port,
        params=tuple(params), headers=tuple(headers),
    )


def _canon_escape(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return "%" + m.group(1).upper() if char in _RESERVED else char


def _canon(text: str) -> str:
    """Text for §19.1.4 comparison: an escaped character equals itself unescaped, except
    the RFC 2396 reserved set (and %), which stays escaped (so %3B differs from ;)."""
    return _ESCAPE_RE.sub(_canon_escape, text) if "%" in text else text


def _canon_opt(text: str | None) -> str | None:
    return None if text is None else _canon(text)


def _host_key(host: str) -> str:
    if host.startswith("["):
        try:
            return "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
        except ValueError:
            pass
    return host.lower()


def _param_map(params: Params) -> dict[str, str | None]:
    # §19.1.4: names and values compare case-insensitively.
    out: dict[str, str | None] = {}
    for k, v in params:
        out.setdefault(_canon(k).lower(), None if v is None else _canon(v).lower())
    return out


def _header_set(headers: tuple[tuple[str, str], ...]) -> frozenset[tuple[str, str]]:
    return frozenset((_canon(k).lower(), _canon(v)) for k, v in headers)
