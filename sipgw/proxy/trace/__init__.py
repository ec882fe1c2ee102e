"""Live SIP trace: every message in and out, to whoever subscribed (``trace.subscribe``).

Two taps, one in ``Proxy.receive`` (every message in, before parsing) and one in the
outbound ``send`` (every message out), both on the one ``Tap`` they are built with. Each
tap is ``None`` while nobody listens, so tracing costs an attribute test per message then;
the tracer, which owns the ``Tap``, sets them for the first subscriber and clears them
when the last one leaves.

A message is summarised with plain text operations (it may be malformed: the trace shows
what arrived, even what the parser refuses), filtered per subscriber, and sent as a
``trace.message`` notification::

    {"time": 1795705527.123, "dir": "in", "transport": "udp",
     "src": "192.0.2.7:5060", "dst": "198.51.100.1:5060",
     "method": "INVITE", "status": null, "reason": null, "ruri": "sip:5002@example.com",
     "call_id": "a84b4c76e66710", "cseq": "314159 INVITE",
     "from": "sip:5001@example.com", "to": "sip:5002@example.com",
     "raw": "INVITE sip:5002@example.com SIP/2.0\\r\\n..."}

``raw`` is only included for subscribers that ask for it (``raw: true``).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from sipgw.proxy.limits import CapLog
from sipgw.rpc.registry import RpcError, rpc
from sipgw.rpc.stream import Emit, Stream
from sipgw.sip.hostport import join_hostport, split_hostport

log = Logger(namespace="sipgw.trace")

_COMPACT = {"i": "call-id", "f": "from", "t": "to"}
_WANTED = {"call-id", "from", "to", "cseq"}
_URI = re.compile(r"<([^>]*)>|((?:sips?|tel):[^\s;,>]+)", re.I)
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+\Z")
_STATUS_CLASS = re.compile(r"^([1-6])(xx|\d\d)$", re.I)


def summarize(data: bytes) -> dict[str, Any]:
    """Start line, Call-ID, CSeq, From and To URIs of a message; never raises."""
    head = data[:8192].split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.replace("\r\n", "\n").split("\n")
    first = lines[0].strip() if lines else ""
    out: dict[str, Any] = {"method": None, "status": None, "reason": None, "ruri": None,
                           "call_id": None, "cseq": None, "from": None, "to": None}
    parts = first.split(" ", 2)
    # Three ASCII digits only: int() refuses "²" (isdigit() does not), and a status of
    # thousands of digits (Python's int limit) — either would escape Proxy.receive.
    status = parts[1] if len(parts) >= 2 else ""
    if first.upper().startswith("SIP/") and len(status) == 3 and status.isascii() \
            and status.isdigit():
        out["status"] = int(parts[1])
        out["reason"] = parts[2] if len(parts) > 2 else ""
    elif len(parts) == 3 and parts[2].upper().startswith("SIP/") and _TOKEN.match(parts[0]):
        out["method"], out["ruri"] = parts[0], parts[1]
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[0] in " \t":
            continue
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        if key in _WANTED and out[key.replace("-", "_")] is None:
            value = value.strip()
            if key in ("from", "to"):
                match = _URI.search(value)
                value = (match.group(1) or match.group(2)) if match else value
            out[key.replace("-", "_")] = value
    return out


def _user(uri: str | None) -> str | None:
    if not uri:
        return None
    rest = uri.split(":", 1)[-1]
    return rest.split("@", 1)[0] if "@" in rest else None


@dataclass(slots=True, kw_only=True)
class Filters:
    """What one subscriber wants to see; every filter given must match."""

    methods: frozenset[str] = frozenset()
    user: str | None = None
    call_id: str | None = None
    address: str | None = None
    status: str | None = None  # "4xx", "404"

    def match(self, rec: dict[str, Any]) -> bool:
        if self.methods:
            method = rec["method"] or (rec["cseq"] or " ").split(" ")[-1]
            if method.upper() not in self.methods:
                return False
        if self.call_id is not None and rec["call_id"] != self.call_id:
            return False
        if self.user is not None:
            users = {_user(rec["from"]), _user(rec["to"]), _user(rec["ruri"])}
            if self.user not in users:
                return False
        if self.address is not None:
            hosts = set()
            for hostport in (rec["src"], rec["dst"]):
                hosts.add(hostport)
                hosts.add(split_hostport(hostport)[0])
            if self.address not in hosts:
                return False
        if self.status is not None:
            status = rec["status"]
            if status is None:
                return False
            if self.status[1:].lower() == "xx":
                return str(status)[0] == self.status[0]
            return str(status) == self.status
        return True


@dataclass(eq=False, slots=True)
class Subscriber:
    filters: Filters
    raw: bool
    emit: Emit | None = None
    sent: int = field(default=0)


class Tap:
    """Where the message paths look for a tracer: ``None`` while nobody listens."""

    __slots__ = ("inbound", "outbound")

    def __init__(self) -> None:
        self.inbound: Callable[[bytes, Any], None] | None = None
        self.outbound: Callable[[bytes, Any], None] | None = None


class Tracer:
    """The subscribers, and the ``Tap`` it turns on while there are any."""

    def __init__(self, tap: Tap, clock: Callable[[], float] = time.time,
                 max_streams: Callable[[], int] = lambda: 8,
                 local_of: Callable[[Any], tuple[str, int] | None] = lambda dest: None) -> None:
        self.tap = tap
        self.clock = clock
        self.max_streams = max_streams  # limits.max_trace_subscribers, read at each call
        self.streams = 0  # trace.subscribe calls not yet stopped (HEP is not one)
        self.cap_log = CapLog(log, clock)
        self.subscribers: list[Subscriber] = []
        # ``local_of(destination)``: our address a message to it leaves from.
        self._local_of = local_of

    def _set_taps(self) -> None:
        on = bool(self.subscribers)
        self.tap.inbound = self.on_in if on else None
        self.tap.outbound = self.on_out if on else None

    # -- subscribers ------------------------------------------------------------------

    def subscribe(self, filters: Filters, raw: bool, emit: Emit) -> Subscriber:
        sub = Subscriber(filters, raw, emit)
        self.subscribers.append(sub)
        self._set_taps()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        self._set_taps()

    @rpc("trace.subscribe",
         help="Stream every SIP message in and out as trace.message notifications; filters "
              "(named): method, user, call_id, address, status (4xx or 404), raw (true: "
              "whole messages).")
    def rpc_subscribe(self, method: str | list | None = None, user: str | None = None,
                      call_id: str | None = None, address: str | None = None,
                      status: str | int | None = None, raw: bool = False) -> Stream:
        filters = _filters(method, user, call_id, address, status)
        # Every subscriber costs a summary and a socket write per message: capped.
        if self.streams >= self.max_streams():
            self.cap_log.reached("limits.max_trace_subscribers",
                                 "trace.subscribe refused: {n} subscribers already",
                                 n=self.streams)
            raise RpcError(f"{self.streams} trace subscribers already, the most "
                           "limits.max_trace_subscribers allows; try again when one ends")
        self.streams += 1
        holder: dict[str, Any] = {"counted": True}

        def start(emit: Emit) -> None:
            holder["sub"] = self.subscribe(filters, bool(raw), emit)

        def stop() -> None:
            if holder.pop("counted", False):
                self.streams -= 1
            if "sub" in holder:
                self.unsubscribe(holder.pop("sub"))

        first = {"subscribed": True, "filters": {
            "method": sorted(filters.methods) or None, "user": filters.user,
            "call_id": filters.call_id, "address": filters.address, "status": filters.status}}
        return Stream(first, start, stop)

    # -- the taps ---------------------------------------------------------------------

    def on_in(self, data: bytes, source) -> None:
        self._record(data, "in", source.transport, f"{join_hostport(source.host, source.port)}",
                     join_hostport(source.local_host, source.local_port))

    def on_out(self, data: bytes, dest) -> None:
        if not _is_ip(dest.host):
            return  # sent again, and traced, once the name is resolved
        local = self._local_of(dest)
        here = join_hostport(*local) if local else "0.0.0.0:0"
        self._record(data, "out", dest.transport, here, join_hostport(dest.host, dest.port))

    def _record(self, data: bytes, direction: str, transport: str, src: str, dst: str) -> None:
        if not data.strip(b"\r\n\t "):
            return  # keepalives are not messages
        try:
            rec = summarize(data)
        except Exception:  # a tap must never cost the proxy a message
            return
        rec.update(time=self.clock(), dir=direction, transport=transport, src=src, dst=dst)
        raw_text = None
        for sub in list(self.subscribers):
            if not sub.filters.match(rec):
                continue
            out = rec
            if sub.raw:
                if raw_text is None:
                    raw_text = data.decode("utf-8", errors="replace")
                out = dict(rec, raw=raw_text)
            sub.sent += 1
            sub.emit("trace.message", out)  # type: ignore[misc]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _filters(method, user, call_id, address, status) -> Filters:
    methods: set[str] = set()
    for item in ([method] if isinstance(method, str) else (method or [])):
        methods |= {m.strip().upper() for m in str(item).split(",") if m.strip()}
    if status is not None:
        status = str(status).strip()
        if not _STATUS_CLASS.match(status):
            raise RpcError(f"status filter {status!r}: use a class such as 4xx or a code such "
                           "as 404")
    return Filters(methods=frozenset(methods), user=user or None, call_id=call_id or None,
                   address=address or None, status=status)
