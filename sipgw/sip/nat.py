"""NAT detection and the contact alias, with the semantics of Kamailio's nathelper.

Pure: the caller passes the message and where it came from; nothing here sends or looks
anything up.

``nat_uac_test`` bits (nathelper's documented values; the WebRTC guide's summary of them is
looser: its "1" and "16" are really the private-Contact and Via-port tests):

====  ==================================================================================
1     the Contact URI host is a private address (RFC 1918, RFC 6598)
2     the top Via sent-by address differs from the source address ("received" test)
4     the top Via sent-by address is a private address
8     the SDP connection address is a private address
16    the top Via port differs from the source port
32    the source address is a private address
64    the request came over a WebSocket (WS or WSS)
128   the Contact URI port differs from the source port
256   the SDP connection address differs from the source address
====  ==================================================================================

The contact alias (``add_contact_alias``) is ``;alias=<ip>~<port>~<proto digit>`` written
right after the host[:port] of the Contact URI: the address and transport the message
really came from, so a request sent later to that Contact can be routed back over the same
connection (``handle_ruri_alias``). Proto digits are Kamailio's: 1 UDP, 2 TCP, 3 TLS,
4 SCTP, 5 WS, 6 WSS. IPv6 addresses are written in brackets.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Callable

from sipgw.sip.errors import ParseError
from sipgw.sip.uri import SipURI


class NatTest(enum.IntFlag):
    CONTACT_PRIVATE = 1
    VIA_RECEIVED = 2
    VIA_PRIVATE = 4
    SDP_PRIVATE = 8
    VIA_PORT = 16
    SOURCE_PRIVATE = 32
    WEBSOCKET = 64
    CONTACT_PORT = 128
    SDP_SOURCE = 256


# The guide's nat_uac_test("19"), plus the WebSocket test: browsers are always NATed.
DEFAULT_TESTS = NatTest(19) | NatTest.WEBSOCKET

PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
              "100.64.0.0/10")  # RFC 6598 (carrier-grade NAT)
)

PROTO_DIGITS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}
_DIGIT_PROTOS = {str(d): p for p, d in PROTO_DIGITS.items()}
_SDP_C_RE = re.compile(rb"^c=IN IP[46] ([^\s/]+)", re.M)


# The longest IP literal a host can be ("[ffff:ffff:...:255.255.255.255]"). Longer strings
# are never looked up in, nor kept by, the caches below: 4,096 hosts of 60 kB each (from
# Via, Contact or SDP) would otherwise stay in memory.
_IP_TEXT_MAX = 64


def _maybe_ip(host: str) -> bool:
    """Could ``host`` be an IP literal? A name ("df7jal23.invalid": every browser connection
    has its own) never is: it takes neither ipaddress's exception path nor a cache entry."""
    return len(host) <= _IP_TEXT_MAX and (":" in host or host[-1:].isdigit())


def is_private(host: str) -> bool:
    return _maybe_ip(host) and _is_private(host)


@functools.lru_cache(maxsize=4096)
def _is_private(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.version == 4 and any(ip in net for net in PRIVATE_NETWORKS)


def _host_key(host: str) -> object:
    """An address as a comparable value ("::1" == "[0:0::1]"); a name in lower case."""
    return _ip_literal_key(host) if _maybe_ip(host) else host.lower()


@functools.lru_cache(maxsize=4096)
def _ip_literal_key(host: str) -> object:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower()


def _same_ip(a: str, b: str) -> bool:
    # Equal strings first: the usual case, and a browser's "x.invalid" Via never reaches
    # ipaddress's exception path more than once per name.
    return a == b or _host_key(a) == _host_key(b)


def nat_uac_test(
    tests: NatTest,
    *,
    source_host: str,
    source_port: int,
    source_transport: str,
    via_host: str | None = None,
    via_port: int | None = None,
    contact: SipURI | None = None,
    body: bytes = b"",
) -> NatTest:
    """The tests among ``tests`` that find a NAT (empty: none did)."""
    # On plain ints: IntFlag's operators build a new enum member each, and this runs on
    # every request from a client (eight of them were 5 % of an INVITE's cost).
    t = int(tests)
    found = 0
    if t & _WEBSOCKET and source_transport in ("ws", "wss"):
        found |= _WEBSOCKET
    if t & _SOURCE_PRIVATE and is_private(source_host):
        found |= _SOURCE_PRIVATE
    if via_host is not None:
        if t & _VIA_RECEIVED and not _same_ip(via_host, source_host):
            found |= _VIA_RECEIVED
        if t & _VIA_PRIVATE and is_private(via_host):
            found |= _VIA_PRIVATE
        if t & _VIA_PORT and (via_port or 5060) != source_port:
            found |= _VIA_PORT
    if contact is not None:
        if t & _CONTACT_PRIVATE and is_private(contact.host):
            found |= _CONTACT_PRIVATE
        if t & _CONTACT_PORT and (contact.port or 5060) != source_port:
            found |= _CONTACT_PORT
    if body and t & (_SDP_PRIVATE | _SDP_SOURCE):
        for address in _SDP_C_RE.findall(body):
            text = address.decode("latin-1")
            if t & _SDP_PRIVATE and is_private(text):
                found |= _SDP_PRIVATE
            if t & _SDP_SOURCE and not _same_ip(text, source_host):
                found |= _SDP_SOURCE
    return NatTest(found)


_CONTACT_PRIVATE = NatTest.CONTACT_PRIVATE.value
_VIA_RECEIVED = NatTest.VIA_RECEIVED.value
_VIA_PRIVATE = NatTest.VIA_PRIVATE.value
_SDP_PRIVATE = NatTest.SDP_PRIVATE.value
_VIA_PORT = NatTest.VIA_PORT.value
_SOURCE_PRIVATE = NatTest.SOURCE_PRIVATE.value
_WEBSOCKET = NatTest.WEBSOCKET.value
_CONTACT_PORT = NatTest.CONTACT_PORT.value
_SDP_SOURCE = NatTest.SDP_SOURCE.value


def encode_alias(host: str, port: int, transport: str) -> str:
    """``192.0.2.7~5060~5``; ``[2001:db8::7]~5060~6`` for IPv6."""
    host = host.strip("[]")
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}~{port}~{PROTO_DIGITS[transport.lower()]}"


def split_alias_mac(value: str) -> tuple[str, str | None]:
    """A signed alias ``ip~port~proto~mac`` as ``(ip~port~proto, mac)``; an unsigned one
    as ``(value, None)``. The MAC is sipgw's own addition (``sipgw.proxy.signing``)."""
    if value.count("~") == 3:
        alias, _, mac = value.rpartition("~")
        return alias, mac
    return value, None


def decode_alias(value: str) -> tuple[str, int, str]:
    """``(host, port, transport)`` from an alias value, signed or not; ``ParseError`` (400)
    if malformed."""
    parts = split_alias_mac(value)[0].split("~")
    if len(parts) != 3:
        raise ParseError("Bad alias parameter: expected ip~port~proto")
    host, port_text, digit = parts
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ParseError("Bad alias parameter: not an IP address") from None
    if (ip.version == 6) != bracketed:
        raise ParseError("Bad alias parameter: IPv6 must be in brackets, IPv4 must not")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ParseError("Bad alias parameter: bad port")
    transport = _DIGIT_PROTOS.get(digit)
    if transport is None or transport == "sctp":
        raise ParseError("Bad alias parameter: unknown protocol")
    # As written, not normalised: it must match the address the flow was recorded under.
    return host[1:-1] if bracketed else host, int(port_text), transport


def add_alias(uri: SipURI, host: str, port: int, transport: str,
              sign: Callable[[str], str] | None = None) -> SipURI:
    """The URI with our alias as its first parameter (right after host:port), replacing
    an alias it already had; ``sign`` gives the MAC appended to it as a fourth field."""
    rest = tuple((k, v) for k, v in uri.params if k.lower() != "alias")
    value = encode_alias(host, port, transport)
    if sign is not None:
        value = f"{value}~{sign(value)}"
    return uri.replace(params=(("alias", value),) + rest)


def needs_alias(uri: SipURI, host: str, port: int, transport: str) -> bool:
    """Kamailio's shortcut: no alias when the Contact already names the source exactly."""
    return not (
        _same_ip(uri.host, host)
        and (uri.port or 5060) == port
        and (uri.transport or "udp") == transport
    )


def take_alias(uri: SipURI) -> tuple[SipURI, tuple[str, int, str] | None]:
    """``handle_ruri_alias``: the URI without its alias, and where the alias points."""
    value = uri.param("alias")
    if value is None:
        return uri, None
    return uri.without_param("alias"), decode_alias(value)
