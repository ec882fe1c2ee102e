"""SIP message model: requests, responses and their ordered header fields.

A parsed message keeps every header line exactly as it arrived (``Field.raw``); the
serializer writes those lines back untouched and only formats the fields the proxy changed
or added. Values are ``str`` decoded with latin-1, so every octet survives the round trip.

Values that routing needs on every message (Call-ID, CSeq, tags, the top Via) are parsed
lazily and cached; any mutation of a header drops its cached value.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sipgw.sip.errors import ParseError
from sipgw.sip.grammar import split_commas
from sipgw.sip.headers import KNOWN_KEYS, LIST_HEADERS, display_name, header_key
from sipgw.sip.uri import MEMO_ENTRIES, MEMO_TEXT_MAX, parse_uri
from sipgw.sip.via import parse_top_via

if TYPE_CHECKING:
    from sipgw.sip.uri import AbsoluteURI, SipURI
    from sipgw.sip.via import Via

CRLF = "\r\n"


class Field:
    """One header field line. ``raw`` is the line as received, None once changed.

    Treated as immutable once parsed: a change replaces the Field in its message's list,
    so that ``copy()`` of a message can share Fields with the original.
    """

    __slots__ = ("key", "name", "value", "raw")

    def __init__(self, key: str, name: str, value: str, raw: str | None = None) -> None:
        self.key = key
        self.name = name
        self.value = value
        self.raw = raw

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.value!r})"

    def text(self) -> str:
        return self.raw if self.raw is not None else f"{self.name}: {self.value}"


class Message:
    """What requests and responses share: header fields, a body and cached lookups."""

    __slots__ = ("fields", "body", "_cache")

    def __init__(self, fields: list[Field] | None = None, body: bytes = b"") -> None:
        self.fields: list[Field] = fields if fields is not None else []
        self.body = body
        self._cache: dict[str, object] = {}

    # -- reading -----------------------------------------------------------------------

    def header(self, name: str) -> str | None:
        """Value of the first field called ``name`` (any spelling), or None."""
        key = KNOWN_KEYS.get(name) or header_key(name)  # header_key's cache, without a call
        for f in self.fields:
            if f.key == key:
                return f.value
        return None

    def headers(self, name: str) -> list[str]:
        """Values of every field called ``name``, one per line as received."""
        key = header_key(name)
        return [f.value for f in self.fields if f.key == key]

    def values(self, name: str) -> list[str]:
        """Every element of a list header, across all its lines (``Via``, ``Route``...)."""
        key = header_key(name)
        out: list[str] = []
        for f in self.fields:
            if f.key == key:
                out.extend(split_commas(f.value) if key in LIST_HEADERS else [f.value])
        return out

    def has(self, name: str) -> bool:
        key = header_key(name)
        return any(f.key == key for f in self.fields)

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    # -- changing ----------------------------------------------------------------------

    def _touch(self, key: str) -> None:
        cache = self._cache
        if cache:
            cache.pop(key, None)
            if key == "via":
                cache.pop("server_key", None)

    def prepend(self, name: str, value: str) -> None:
        """Add ``value`` as a new line before the first line of that header.

        A header not yet present goes to the top for Via (RFC 3261 §16.6 step 8) and
        after the Vias otherwise.
        """
        key = header_key(name)
        self._touch(key)
        new = Field(key, display_name(key), value)
        fields = self.fields
        last_via = -1
        for i, f in enumerate(fields):
            if f.key == key:
                fields.insert(i, new)
                return
            if f.key == "via":
                last_via = i
        fields.insert(0 if key == "via" else last_via + 1, new)

    def append(self, name: str, value: str) -> None:
        key = header_key(name)
        self._touch(key)
        self.fields.append(Field(key, display_name(key), value))

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first element of a list header (top Via, first Route)."""
        key = header_key(name)
        self._touch(key)
        fields = self.fields
        for i, f in enumerate(fields):
            if f.key != key:
                continue
            parts = split_commas(f.value)
            if len(parts) == 1:
                del fields[i]
            else:
                fields[i] = Field(key, f.name, ", ".join(parts[1:]))
            return parts[0]
        return None

    def replace_first(self, name: str, value: str) -> None:
        """Replace the first element of a list header, keeping the rest of its line."""
        key = header_key(name)
        self._touch(key)
        fields = self.fields
        for i, f in enumerate(fields):
            if f.key == key:
                parts = split_commas(f.value)
                parts[0] = value
                fields[i] = Field(key, f.name, ", ".join(parts))
                return
        self.prepend(name, value)

    def replace_top_via(self, via: Via) -> None:
        """Make ``via`` (a parsed ``Via``) the first Via value, keeping it parsed.

        The server transaction key survives when only parameters changed (force_rport's
        received and rport): it is made of the branch and sent-by (RFC 3261 §17.2.3).
        """
        cache = self._cache
        key = cache.get("server_key")
        old = cache.get("via")
        self.replace_first("via", str(via))
        cache["via"] = via
        if (key is not None and old is not None and len(key) == 3  # type: ignore[arg-type]
                and old.branch == via.branch and old.sent_by == via.sent_by):  # type: ignore[attr-defined]
            cache["server_key"] = key

    def set(self, name: str, value: str) -> None:
        """Make ``value`` the only line of that header, in the first one's place."""
        key = header_key(name)
        self._touch(key)
        fields = self.fields
        for i, f in enumerate(fields):
            if f.key == key:
                fields[i] = Field(key, display_name(key), value)
                # Later copies are rare; drop them in place rather than rebuild the list.
                j, n = i + 1, len(fields)
                while j < n:
                    if fields[j].key == key:
                        del fields[j]
                        n -= 1
                    else:
                        j += 1
                return
        fields.append(Field(key, display_name(key), value))

    def remove(self, name: str) -> int:
        """Remove every line of that header; returns how many there were."""
        key = header_key(name)
        self._touch(key)
        before = len(self.fields)
        self.fields = [f for f in self.fields if f.key != key]
        return before - len(self.fields)

    # -- cached lookups used by routing and transactions ----------------------------

    @property
    def call_id(self) -> str:
        return self.header("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """(number, method) of the CSeq header; parse_message has already checked it."""
        c = self._cache.get("cseq")
        if c is None:
            c = parse_cseq(self.header("cseq") or "")
            self._cache["cseq"] = c
        return c  # type: ignore[return-value]

    @property
    def top_via(self) -> Via:
        """The first Via, parsed."""
        v = self._cache.get("via")
        if v is None:
            first = self.header("via")
            if first is None:
                raise ParseError("Missing Via header")
            v = parse_top_via(first)
            self._cache["via"] = v
        return v  # type: ignore[return-value]  # the cache holds what was put here

    @property
    def from_tag(self) -> str | None:
        return _tag_of(self.header("from") or "")

    @property
    def to_tag(self) -> str | None:
        return _tag_of(self.header("to") or "")

    # -- writing -----------------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Wire form. Untouched lines are written as received; Content-Length is made true."""
        body = self.body
        lines = [self.start_line()]
        length_ok = False
        blen = len(body)
        for f in self.fields:
            if f.key == "content-length":
                # Compared as a number: a right "0040" is kept as written, not moved.
                value = f.value.strip(" \t")
                if not length_ok and value.isascii() and value.isdigit() and int(value) == blen:
                    lines.append(f.raw if f.raw is not None else f"{f.name}: {f.value}")
                    length_ok = True
                continue
            lines.append(f.raw if f.raw is not None else f"{f.name}: {f.value}")
        if not length_ok:
            # RFC 3261 §18.3/§20.14: required on streams, harmless on datagrams.
            lines.append(f"Content-Length: {blen}")
        lines.append("")
        lines.append("")
        return CRLF.join(lines).encode("latin-1") + body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: str,
        fields: list[Field] | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(fields, body)
        self.method = method
        self.uri = uri
        self.version = version

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def parsed_uri(self) -> SipURI | AbsoluteURI:
        """The Request-URI parsed (``SipURI`` or ``AbsoluteURI``), cached until it changes."""
        cached = self._cache.get("ruri")
        if cached is not None and cached[0] is self.uri:  # type: ignore[index]
            return cached[1]  # type: ignore[index, no-any-return]
        parsed = parse_uri(self.uri)
        self._cache["ruri"] = (self.uri, parsed)
        return parsed

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"

    def copy(self) -> Request:
        """A copy whose header list can be changed without touching this one."""
        r = Request(
            self.method,
            self.uri,
            self.fields.copy(),
            self.body,
            self.version,
        )
        r._cache = dict(self._cache)
        return r


class Response(Message):
    __slots__ = ("status", "reason", "version")

    def __init__(
        self,
        status: int,
        reason: str,
        fields: list[Field] | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(fields, body)
        self.status = status
        self.reason = reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason!r} call-id={self.call_id!r}>"

    def copy(self) -> Response:
        r = Response(
            self.status,
            self.reason,
            self.fields.copy(),
            self.body,
            self.version,
        )
        r._cache = dict(self._cache)
        return r


def parse_cseq(value: str) -> tuple[int, str]:
    """(number, method) of a CSeq value; raises ParseError if malformed."""
    # "1 INVITE", "2 BYE": few distinct values, on every message (kept as uri.py keeps URIs).
    if len(value) <= MEMO_TEXT_MAX:
        return _parse_cseq_memo(value)
    return _parse_cseq(value)


def _parse_cseq(value: str) -> tuple[int, str]:
    # §25.1: CSeq = 1*DIGIT LWS Method. Split on SP/HT only (str.split() also splits on
    # NBSP and other latin-1 spaces), and only ASCII digits: "²".isdigit() is True but
    # int("²") raises ValueError.
    parts = [p for p in value.replace("\t", " ").split(" ") if p]
    if len(parts) != 2:
        raise ParseError("Bad CSeq header")
    digits = parts[0]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 10:
        raise ParseError("Bad CSeq header")
    number = int(digits)
    # RFC 3261 §8.1.1.5: the sequence number MUST be expressible as a 32-bit unsigned integer.
    if number > 0xFFFFFFFF:
        raise ParseError("Bad CSeq header: number too large")
    return number, parts[1]


_parse_cseq_memo = functools.lru_cache(maxsize=MEMO_ENTRIES)(_parse_cseq)


def _tag_of(value: str) -> str | None:
    """The ``tag`` header parameter of a From/To value, without a full parse."""
    # A dialog's From and To come back on each of its messages.
    if len(value) <= MEMO_TEXT_MAX:
        return _tag_of_memo(value)
    return _find_tag(value)


def _find_tag(value: str) -> str | None:
    # Parameters start after the closing '>' of a name-addr; an addr-spec has none inside.
    gt = value.rfind(">")
    tail = value[gt + 1 :] if gt >= 0 else value
    i = tail.lower().find("tag")
    while i >= 0:
        j = i + 3
        # It must be a parameter named exactly "tag": preceded by ';' and followed by '='.
        before = tail[:i].rstrip(" \t")
        rest = tail[j:].lstrip(" \t")
        if before.endswith(";") and rest.startswith("="):
            v = rest[1:].lstrip(" \t")
            end = len(v)
            for k, ch in enumerate(v):
                if ch in "; \t,":
                    end = k
                    break
            return v[:end]
        i = tail.lower().find("tag", j)
    return None


_tag_of_memo = functools.lru_cache(maxsize=MEMO_ENTRIES)(_find_tag)


def build_cancel(invite: Request) -> Request:
    """The CANCEL for a request we sent (RFC 3261 §9.1).

    Same Request-URI, Call-ID, From, To and CSeq number; one Via, equal to the top Via of
    the request being cancelled (so it reaches the same server transaction); the same
    Route headers.
    """
    fields: list[Field] = []
    via_done = False
    for f in invite.fields:
        k = f.key
        if k == "via":
            if not via_done:
                first = split_commas(f.value)[0]
                fields.append(Field("via", "Via", first))
                via_done = True
        elif k in ("from", "to", "call-id", "route"):
            fields.append(Field(k, f.name, f.value, f.raw))
        elif k == "cseq":
            fields.append(Field("cseq", "CSeq", f"{invite.cseq[0]} CANCEL"))
    fields.append(Field("max-forwards", "Max-Forwards", "70"))
    return Request("CANCEL", invite.uri, fields)


def make_response(
    request: Request,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """Build a response to ``request`` per RFC 3261 §8.2.6.2.

    Via, From, To, Call-ID and CSeq are copied (their lines kept as received); a To tag is
    added when ``to_tag`` is given and the request had none.
    """
    fields: list[Field] = []
    for f in request.fields:
        if f.key in ("via", "from", "call-id", "cseq"):
            fields.append(Field(f.key, f.name, f.value, f.raw))
        elif f.key == "to":
            if to_tag is not None and _tag_of(f.value) is None:
                fields.append(Field(f.key, f.name, f"{f.value};tag={to_tag}"))
            else:
                fields.append(Field(f.key, f.name, f.value, f.raw))
    for name, value in extra or ():
        key = header_key(name)
        fields.append(Field(key, display_name(key), value))
    return Response(status, reason, fields, body)
