"""Via header values (RFC 3261 §20.42, grammar §25.1; RFC 3581 rport).

    via-parm      = sent-protocol LWS sent-by *( SEMI via-params )
    sent-protocol = protocol-name SLASH protocol-version SLASH transport
    sent-by       = host [ COLON port ]

Rules this module keeps:

* LWS is allowed around ``/``, ``:``, ``;`` and ``=`` (RFC 4475 wsinv), but the value we
  write back is compact: ``SIP/2.0/UDP host:port;branch=...``.
* Any token is a transport (RFC 4475 transports: UNKNOWN is legal); it is uppercased.
* The protocol must be ``SIP/x.y``. Versions other than 2.0 parse: the caller answers 505.
* Empty list elements and empty parameters are errors (RFC 4475 badinv01): two parsers
  could disagree about what they mean.
* Parameter values are kept raw (quotes included). ``received`` and ``maddr`` may hold a
  bare IPv6 address (RFC 3261 via-received, RFC 5118 §4.5), so values may contain ``:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipgw.sip.errors import ParseError
from sipgw.sip.grammar import HasParams, split_commas
from sipgw.sip.uri import HOSTNAME, check_host, parse_port

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_VALUE = r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+"
_QUOTED = r'"(?:[^"\\]|\\[\s\S])*"'

# The usual single value: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK...;rport
_FAST_RE = re.compile(
    rf"SIP/2\.0/([A-Z]+) ({HOSTNAME})(?::([0-9]{{1,5}}))?((?:;{_TOKEN}(?:={_TOKEN})?)*)\Z"
)
_HEAD_RE = re.compile(
    rf"({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[^\]\s]*\]|[^\s;:,\[\]\"]+)(?:[ \t]*:[ \t]*([^\s;]*))?"
)
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_QUOTED}|{_VALUE}))?"
)
_VERSION_RE = re.compile(r"[0-9]+\.[0-9]+\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class Via(HasParams):
    """One via-parm. ``params`` keeps order, case and raw values."""

    protocol: str = "SIP/2.0"
    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    def __str__(self) -> str:
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return f"{self.protocol}/{self.transport} {self.sent_by}{params}"

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def version(self) -> str:
        """The protocol version, e.g. "2.0" (§8.2.6: anything else gets 505)."""
        return self.protocol[4:]

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def rport(self) -> str | None:
        """RFC 3581: None if absent, '' if requested (valueless), else the filled-in port."""
        return self.param("rport")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def ttl(self) -> str | None:
        return self.param("ttl")




def parse_via(value: str) -> list[Via]:
    """Parse one Via header field value (one or more comma-separated via-parms)."""
    m = _FAST_RE.match(value)
    if m is not None:
        transport, host, port, params_text = m.groups()
        if check_host(host):
            params = []
            if params_text:
                for piece in params_text[1:].split(";"):
                    name, eq, val = piece.partition("=")
                    params.append((name, val if eq else None))
            if port is not None:
                port = int(port)  # 1-5 digits by _FAST_RE
                if port > 65535:
                    raise ParseError("Bad Via header: bad port")
            return [Via(transport=transport, host=host, port=port, params=tuple(params))]
    try:
        elements = split_commas(value)
    except ParseError:
        raise ParseError("Bad Via header: unterminated quoted string") from None
    out = []
    for element in elements:
        if not element:
            raise ParseError("Bad Via header: empty list element")
        out.append(_parse_one(element))
    return out


def parse_top_via(value: str) -> Via:
    """The first via-parm of a Via line; the rest of the line is left unparsed.

    A proxy routes by the top Via only; the elements below it are another hop's business
    and are forwarded as they came (RFC 3261 §16.7, §18.2.2).
    """
    if "," in value and _FAST_RE.match(value) is None:
        try:
            first = split_commas(value)[0]
        except ParseError:
            raise ParseError("Bad Via header: unterminated quoted string") from None
        if not first:
            raise ParseError("Bad Via header: empty list element")
        value = first
    return parse_via(value)[0]


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except ParseError:
        raise ParseError("Bad Via header: bad port") from None


def _parse_one(text: str) -> Via:
    m = _HEAD_RE.match(text)
    if m is None:
        raise ParseError("Bad Via header: no sent-protocol and sent-by")
    name, version, transport, host, port = m.groups()
    if name.upper() != "SIP" or _VERSION_RE.match(version) is None:
        raise ParseError("Bad Via header: protocol is not SIP/x.y")
    if not check_host(host):
        raise ParseError("Bad Via header: bad sent-by host")
    params: list[tuple[str, str | None]] = []
    pos = m.end()
    n = len(text)
    while pos < n:
        pm = _PARAM_RE.match(text, pos)
        if pm is None:
            break
        # (name, value or None): typeshed types group(1, 2) as a tuple of any length.
        params.append(pm.group(1, 2))  # type: ignore[arg-type]
        pos = pm.end()
    if text[pos:].strip(" \t"):
        raise ParseError("Bad Via header: empty or malformed parameter")
    return Via(
        protocol="SIP/" + version,
        transport=transport.upper(),
        host=host,
        port=None if port is None else _port(port),
        params=tuple(params),
    )
