"""Hypothesis strategies: SIP messages we build, and bytes meant to break the parser.

``requests()``, ``responses()`` and ``messages`` build ``Request``/``Response`` objects from
the model (random methods, URIs, Via stacks, addresses, extension headers in odd spellings,
binary bodies), always well-formed, so ``to_bytes()`` is something the parser must accept.
``mutated_torture()`` takes an RFC 4475 message and flips, inserts, deletes or truncates.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

from sipgw.sip.headers import header_key
from sipgw.sip.message import Field, Request, Response
from tests.helpers.torture import load, torture_paths

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
KNOWN_METHODS = ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "SUBSCRIBE",
                 "NOTIFY", "MESSAGE", "INFO", "UPDATE", "PRACK", "REFER", "PUBLISH"]
# Headers the parser checks itself; extension headers never use these names.
CHECKED = frozenset({"via", "from", "to", "call-id", "cseq", "max-forwards",
                     "content-length", "content-type"})


def _over(alphabet: str, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    """Text over ``alphabet``, drawn as bytes: much cheaper than ``st.text`` per example."""
    n = len(alphabet)
    return st.binary(min_size=min_size, max_size=max_size).map(
        lambda b: "".join(alphabet[x % n] for x in b)
    )


LATIN1 = "".join(map(chr, range(256)))
tokens = _over(TOKEN_CHARS, 1)
methods = st.sampled_from(KNOWN_METHODS) | tokens

_labels = st.sampled_from(["a", "example", "host-1", "x9", "sip", "edge-proxy", "0a"])
_tops = st.sampled_from(["com", "net", "org", "example", "a1", "Test"])
hostnames = st.builds(lambda ls, top: ".".join([*ls, top]), st.lists(_labels, max_size=3), _tops)
_octet = st.integers(0, 255)
hosts = st.one_of(
    hostnames,
    st.tuples(_octet, _octet, _octet, _octet).map(lambda t: "{}.{}.{}.{}".format(*t)),
    st.sampled_from(["[2001:db8::1]", "[::1]", "[fe80::1:2:3:4]", "[2001:db8:0:0:1:0:0:1]",
                     "[::ffff:192.0.2.1]"]),
)
ports = st.none() | st.integers(1, 65535)
_user_chars = string.ascii_letters + string.digits + "-_.!~*'()&=+$,;?/"
users = st.none() | _over(_user_chars, 1, 10)
_param = st.tuples(_over(string.ascii_letters + "-", 1, 6),
                   st.none() | _over(string.ascii_letters + string.digits, 1, 6))
uri_params = st.lists(_param, max_size=3)


def _hostport(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


@st.composite
def sip_uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["sip", "sips", "SIP"]))
    user = draw(users)
    out = f"{scheme}:" + (f"{user}@" if user else "") + _hostport(draw(hosts), draw(ports))
    for k, v in draw(uri_params):
        out += f";{k}" if v is None else f";{k}={v}"
    return out


request_uris = sip_uris() | st.sampled_from(
    ["tel:+15555550100", "urn:service:sos", "nobodyKnowsThisScheme:totallyopaquecontent"]
)


@st.composite
def vias(draw: st.DrawFn) -> str:
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"]))
    out = f"SIP/2.0/{transport} {_hostport(draw(hosts), draw(ports))}"
    out += f";branch=z9hG4bK{draw(tokens)}"
    if draw(st.booleans()):
        out += ";rport"
    if draw(st.booleans()):
        out += f";received={draw(_octet)}.0.2.{draw(_octet)}"
    return out


# qdtext: any octet from SP up but '"', '\\' and DEL (§25.1; UTF-8 octets included).
_qdtext = "".join(c for c in LATIN1[0x20:] if c not in '"\\\x7f')
display_names = st.none() | st.one_of(
    _over(_qdtext).map(lambda s: f'"{s}"'),
    st.lists(tokens, min_size=1, max_size=3).map(" ".join),
)


@st.composite
def addresses(draw: st.DrawFn, *, tag: bool | None) -> str:
    """A From/To/Contact value: ``[display] <uri>;params`` or a bare ``uri;params``."""
    uri = draw(sip_uris())
    display = draw(display_names)
    # §20.10: a URI holding ";", "?" or "," must be in <> (RFC 4475 regbadct).
    bracketed = display is not None or any(c in uri for c in ";?,") or draw(st.booleans())
    out = (f"{display} " if display else "") + f"<{uri}>" if bracketed else uri
    if tag is None:
        tag = draw(st.booleans())
    if tag:
        out += f";tag={draw(tokens)}"
    return out


# Any octet but CR and LF (which would end the line): NUL, BEL, DEL and UTF-8 included.
header_values = _over(LATIN1.replace("\r", "").replace("\n", ""), 0, 40)
extension_names = st.one_of(
    tokens,
    st.sampled_from(["Subject", "s", "User-Agent", "X-Odd", "ROUTE", "record-route", "m",
                     "Contact", "k", "Supported", "o", "u", "r", "b", "x", "y", "e",
                     "Authorization", "Date", "Accept", "Allow"]),
).filter(lambda name: header_key(name) not in CHECKED)
extension_headers = st.lists(st.tuples(extension_names, header_values), max_size=6)


def _field(name: str, value: str) -> Field:
    return Field(header_key(name), name, value)


@st.composite
def _common_fields(draw: st.DrawFn, method: str, *, request: bool) -> list[Field]:
    """Via, From, To, Call-ID, CSeq (+ Max-Forwards, extensions) in a random order."""
    names = {k: draw(st.sampled_from([long, short]))
             for k, (long, short) in {"via": ("Via", "v"), "from": ("From", "f"),
                                      "to": ("To", "t"), "call-id": ("Call-ID", "i")}.items()}
    via_values = draw(st.lists(vias(), min_size=1, max_size=3))
    if draw(st.booleans()):
        via_fields = [_field(names["via"], v) for v in via_values]
    else:
        via_fields = [_field(names["via"], ", ".join(via_values))]
    fields = [
        _field(names["from"], draw(addresses(tag=True))),
        _field(names["to"], draw(addresses(tag=None if request else True))),
        _field(names["call-id"], draw(tokens) + draw(st.sampled_from(["", "@example.com"]))),
        _field("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}"),
    ]
    if request and draw(st.booleans()):
        fields.append(_field("Max-Forwards", str(draw(st.integers(0, 255)))))
    fields.extend(_field(n, v) for n, v in draw(extension_headers))
    fields = draw(st.permutations(fields))
    # Vias first, as every sender writes them; their order is the route back.
    return via_fields + list(fields)


def _with_content_length(draw: st.DrawFn, fields: list[Field], body: bytes) -> list[Field]:
    """No Content-Length (to_bytes adds it), the right one (maybe with leading zeros), or a
    stale one for to_bytes to correct."""
    kind = draw(st.sampled_from(["none", "right", "zeros", "stale"]))
    if kind == "none":
        return fields
    n = len(body)
    value = {"right": str(n), "zeros": f"{n:05d}", "stale": str(n + 1)}[kind]
    at = draw(st.integers(0, len(fields)))
    name = draw(st.sampled_from(["Content-Length", "l"]))
    return fields[:at] + [_field(name, value)] + fields[at:]


bodies = st.binary(max_size=200) | st.sampled_from(
    [b"", b"v=0\r\n\r\n", b"\r\n\r\nINVITE sip:x SIP/2.0\r\n\r\n", b"\x00\r\r\n\n"]
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(methods)
    body = draw(bodies)
    fields = draw(_common_fields(method, request=True))
    return Request(method, draw(request_uris), _with_content_length(draw, fields, body), body)


reasons = _over("".join(c for c in LATIN1[0x20:] if c != "\x7f"), 0, 30)


@st.composite
def responses(draw: st.DrawFn) -> Response:
    method = draw(methods)
    body = draw(bodies)
    fields = draw(_common_fields(method, request=False))
    status = draw(st.integers(100, 699))
    return Response(status, draw(reasons), _with_content_length(draw, fields, body), body)


messages = requests() | responses()

# -- bytes meant to break things -----------------------------------------------------------

NASTY = [b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"\x00", b" ", b"\t", b":", b";", b",", b'"',
         b"<", b">", b"%", b"%0", b"\\", b"\xb2", b"\xb9", b"\xa0", b"\x85", b"\xff",
         b"\r\n ", b"Content-Length: 99999\r\n", b"l: -1\r\n", b"Via: SIP/2.0/UDP ;;,\r\n",
         b"CSeq: 1 INVITE\r\n", b"SIP/2.0 "]
insertions = st.sampled_from(NASTY) | st.binary(min_size=1, max_size=8)
torture_bytes = st.sampled_from(sorted(torture_paths())).map(load)


@st.composite
def mutated_torture(draw: st.DrawFn) -> bytes:
    """An RFC 4475 message with 1-4 byte flips, insertions, deletions or a truncation."""
    data = bytearray(draw(torture_bytes))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, len(data)))
        if op == "flip" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(insertions)
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)
