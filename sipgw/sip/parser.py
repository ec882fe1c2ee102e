"""Bytes → ``Request``/``Response``, with the checks a proxy needs before it routes.

The rule (after h11): the result is a message or a ``ParseError`` carrying the status the
peer should get — never anything else. Requests get a 400 (or 505/501) whose reason phrase
names the bad part; a bad response gets ``status=None``: it is dropped, as no reply to a
reply is possible.

Lenient where RFC 3261 is (folding, LWS around ``:``, compact names, any case, leading
zeros, RFC 2543 messages without Content-Length on UDP). Strict where two parsers on the
path could disagree: duplicate singleton headers, header names with junk, Content-Length
that does not match, numbers out of range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipgw.sip.address import parse_name_addr
from sipgw.sip.errors import LimitError, ParseError
from sipgw.sip.headers import CACHED_NAME_MAX, SINGLETON_HEADERS, display_name, header_key
from sipgw.sip.message import Field, Request, Response, parse_cseq
from sipgw.sip.via import parse_top_via

_METHOD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VERSION_RE = re.compile(r"SIP/(\d{1,3})\.(\d{1,3})\Z", re.IGNORECASE)
_STATUS_RE = re.compile(r"(SIP/\d{1,3}\.\d{1,3}) (\d{3}) (.*)\Z", re.IGNORECASE | re.DOTALL)
_URI_BAD = re.compile(r"[\x00-\x20<>\x7f]")

KNOWN_METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
        "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
    }
)
REQUIRED_REQUEST_HEADERS = ("via", "from", "to", "call-id", "cseq")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds that keep one message from costing unbounded memory or CPU."""

    max_message_size: int = 65535
    max_headers: int = 256
    max_body_size: int = 65535


DEFAULT_LIMITS = Limits()


def parse_message(
    data: bytes, *, datagram: bool = True, limits: Limits = DEFAULT_LIMITS
) -> Request | Response:
    """Parse one message. ``datagram`` selects RFC 3261 §18.3 framing rules.

    On a datagram, octets past Content-Length are discarded, and a missing Content-Length
    means "the rest of the datagram". On a stream the framer has already cut the message
    at its Content-Length, so ``data`` holds exactly one message.
    """
    if len(data) > limits.max_message_size:
        raise LimitError("Message too large", status=513)
    # RFC 3261 §7.5: ignore CRLFs before the start line.
    if data[:2] == b"\r\n":
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        # No empty line: the whole datagram is the header section (RFC 4475 baddn).
        head_bytes, body = data.rstrip(b"\r\n"), b""
    else:
        head_bytes, body = data[:end], data[end + 4 :]
    head = head_bytes.decode("latin-1")
    lines = head.split("\r\n")
    start = lines[0]
    is_response = start[:4].upper() == "SIP/"
    try:
        crlfs = len(lines) - 1
        if head.count("\n") != crlfs or head.count("\r") != crlfs:
            raise ParseError(_bare_line_end(lines))
        msg = _start_line(start, is_response)
        msg.fields = _fields(lines, limits)
        msg.body = _body(msg, body, datagram)
        if is_response:
            _check_response(msg)  # type: ignore[arg-type]
        else:
            _check_request(msg)  # type: ignore[arg-type]
        if end < 0:
            # §7: the empty line MUST be present. Checked last, so that a message with
            # worse faults is refused for those (RFC 4475 baddn: its display names), and
            # a datagram cut inside its headers is never relayed as if complete.
            raise ParseError("No empty line after the headers")
    except ParseError as e:
        if is_response:
            e.status = None
        raise
    return msg


def _bare_line_end(lines: list[str]) -> str:
    """§7: every line ends in CRLF, and no header value may hold a CR or LF (not even in a
    quoted-string, §25.1). Forwarding one would let a parser downstream that takes a bare
    LF for a line end see a header we never saw."""
    for i, line in enumerate(lines):
        if "\r" in line or "\n" in line:
            if i == 0:
                return "Bare CR or LF in start line"
            name = line.split(":", 1)[0].strip(" \t")
            return f"Bare CR or LF in header line {name[:32]!r}"
    return "Bare CR or LF in header section"


def _start_line(start: str, is_response: bool) -> Request | Response:
    if is_response:
        code = start[8:11]
        if start[:8] == "SIP/2.0 " and start[11:12] == " " and code.isascii() and code.isdigit():
            # The usual status line, taken apart as _STATUS_RE would.
            return Response(int(code), start[12:], version="SIP/2.0")
        m = _STATUS_RE.match(start)
        if m is None:
            raise ParseError("Bad status line", status=None)
        version = m.group(1)
        if version.upper() != "SIP/2.0":
            raise ParseError("Unsupported SIP version", status=None)
        return Response(int(m.group(2)), m.group(3), version="SIP/2.0")
    parts = start.split(" ")
    # Exactly one SP between the three elements (RFC 3261 §7.1); RFC 4475 lwsstart, trws
    # and lwsruri are all refused here rather than guessed at.
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ParseError("Bad request line")
    method, uri, version = parts
    if method not in KNOWN_METHODS and _METHOD_RE.match(method) is None:
        raise ParseError("Bad request method")
    if _URI_BAD.search(uri) or ":" not in uri:
        raise ParseError("Bad Request-URI")
    if version == "SIP/2.0":
        return Request(method, uri, version="SIP/2.0")
    m = _VERSION_RE.match(version)
    if m is None:
        raise ParseError("Bad SIP version")
    if (m.group(1), m.group(2)) != ("2", "0"):
        raise ParseError("Version Not Supported", status=505)
    return Request(method, uri, version="SIP/2.0")


def _fields(lines: list[str], limits: Limits) -> list[Field]:
    fields: list[Field] = []
    append = fields.append
    seen_singletons: set[str] = set()
    last: Field | None = None
    names = _VALID_NAMES
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        known = names.get(name)
        if known is None or not colon:
            # Not the usual line: a name that passed _learn_name (so not empty, and not
            # starting with SP or HT: no continuation line), then the colon.
            if not line:
                continue
            first = line[0]
            if first == " " or first == "\t":
                # Folded continuation (RFC 3261 §7.3.1): the value goes on after one SP.
                if last is None:
                    raise ParseError("Bad header folding")
                last.raw = f"{last.raw}\r\n{line}"
                cont = line.strip(" \t")
                if cont:  # a blank continuation is trailing LWS: "70 " must stay "70"
                    last.value = f"{last.value} {cont}" if last.value else cont
                continue
            if not colon or not name:
                raise ParseError("Bad header line")
            known = _learn_name(name)
        key, spelled, singleton = known
        if singleton:
            if key in seen_singletons:
                raise ParseError(f"Duplicate {_pretty(key)} header")
            seen_singletons.add(key)
        last = Field(key, spelled, value.strip(" \t"), line)
        append(last)
    if len(fields) > limits.max_headers:
        # The message size limit already bounds the work done to get here.
        raise LimitError("Too many headers")
    return fields


def _learn_name(written: str) -> tuple[str, str, bool]:
    """Validate a header name not seen before; remember it (bounded) with its key, its
    spelling without trailing LWS, and whether it may appear only once."""
    stripped = written.rstrip(" \t")
    if not stripped or _NAME_RE.match(stripped) is None:
        raise ParseError(f"Bad header name {stripped[:32]!r}")
    key = header_key(stripped)
    known = (key, stripped, key in SINGLETON_HEADERS)
    if len(written) <= CACHED_NAME_MAX:  # bounded in bytes too, as header_key's
        if len(_VALID_NAMES) >= _VALID_NAMES_MAX:
            _VALID_NAMES.clear()
        _VALID_NAMES[written] = known
    return known


# Header names as written → (key, name without trailing LWS, singleton), for names that
# passed validation once.
_VALID_NAMES: dict[str, tuple[str, str, bool]] = {}
_VALID_NAMES_MAX = 4096


def _pretty(key: str) -> str:
    return display_name(key)


def _body(msg: Request | Response, body: bytes, datagram: bool) -> bytes:
    value = None
    for f in msg.fields:
        if f.key == "content-length":
            value = f.value
            break
    if value is None:
        if not datagram and body:
            raise ParseError("Missing Content-Length header")
        return body
    # isascii(): str.isdigit() also accepts "²", "³" and "¹" (latin-1 B2, B3, B9), which
    # int() refuses with a ValueError: a crash instead of a 400.
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise ParseError("Bad Content-Length header")
    length = int(value)
    if length > len(body):
        raise ParseError("Content-Length larger than message")
    # RFC 3261 §18.3: octets past Content-Length in a datagram are discarded.
    return body[:length] if length < len(body) else body


def _check_request(req: Request) -> None:
    present = {f.key for f in req.fields}
    for key in REQUIRED_REQUEST_HEADERS:
        if key not in present:
            raise ParseError(f"Missing {_pretty(key)} header")
    number, method = parse_cseq(req.header("cseq") or "")
    req._cache["cseq"] = (number, method)
    if method != req.method:
        # RFC 4475 §3.1.2.18: an unknown method is better answered 501 at a proxy.
        status = 400 if req.method in KNOWN_METHODS else 501
        raise ParseError("CSeq method does not match request method", status=status)
    mf = req.header("max-forwards")
    if mf is not None and (
        not (mf.isascii() and mf.isdigit()) or len(mf) > 6 or int(mf) > 255
    ):
        raise ParseError("Bad Max-Forwards header")
    _check_vias(req)
    _check_addresses(req)


def _check_response(resp: Response) -> None:
    if resp.status < 100 or resp.status > 699:
        raise ParseError("Bad status code", status=None)
    present = {f.key for f in resp.fields}
    for key in ("via", "cseq", "call-id", "from", "to"):
        if key not in present:
            raise ParseError(f"Missing {_pretty(key)} header", status=None)
    resp._cache["cseq"] = parse_cseq(resp.header("cseq") or "")
    _check_vias(resp)


def _check_vias(msg: Request | Response) -> None:
    """The top Via line must parse: routing and transactions depend on it.

    Only the first Via line is parsed here; the rest are forwarded as received (RFC 4475
    transports: unknown transports below the top are none of our business) and parsed
    only when a response has to be routed by them.
    """
    for f in msg.fields:
        if f.key == "via":
            try:
                top = parse_top_via(f.value)
            except ParseError:
                raise ParseError("Bad Via header") from None
            if top.protocol != "SIP/2.0" and top.protocol.upper() != "SIP/2.0":
                raise ParseError("Version Not Supported", status=505)
            msg._cache["via"] = top
            return


# The usual From/To: an optional token or quoted display name, a bracketed sip(s) URI
# without spaces or quotes, and token parameters. Anything else takes the full parser,
# which refuses what RFC 4475 wants refused (quotbal, badaspec, baddn).
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_PLAIN_ADDRESS_RE = re.compile(
    rf'(?:"[^"\\\x00-\x1f]*" ?|{_TOKEN}(?: {_TOKEN})* ?)?'
    rf"<sips?:[^<>\"\s,]+>"
    rf"(?: ?; ?{_TOKEN}(?: ?= ?{_TOKEN})?)*\Z"
)


def _check_addresses(req: Request) -> None:
    match = _PLAIN_ADDRESS_RE.match
    for key, label in (("from", "From"), ("to", "To")):
        value = req.header(key) or ""
        if match(value) is not None:
            continue
        try:
            parse_name_addr(value)
        except ParseError:
            raise ParseError(f"Bad {label} header") from None
