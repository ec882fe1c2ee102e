"""The proxy: bytes in from any transport, parsed, routed, relayed; bytes out.

``Proxy.receive`` is the one entry point every listener calls. Requests go through the route
script (``router``), responses to the relay. Bad input never escapes as an exception: a
malformed request gets a 400 naming the bad part (when a reply is possible at all), a
malformed response is dropped, and both are counted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipgw.proxy.identity import Identity
from sipgw.proxy.nat import WEBSOCKET, Nat
from sipgw.proxy.registrar import Registrar
from sipgw.proxy.relay import Relay
from sipgw.proxy.router import Router
from sipgw.proxy.signing import RouteSigner
from sipgw.proxy.stats import Stats
from sipgw.proxy.transport import Destination, Source
from sipgw.sip.errors import ParseError
from sipgw.sip.message import Field, Request, Response, make_response
from sipgw.sip.parser import Limits, parse_message
from sipgw.sip.headers import header_key
from sipgw.sip.timers import TimerConfig
from sipgw.sip.uri import parse_port

if TYPE_CHECKING:
    from sipgw.proxy.auth import Authenticator

log = Logger(namespace="sipgw.core")

SendFunction = Callable[[bytes, Destination], None]
STREAMS = frozenset({"tcp", "tls"})  # framed by Content-Length (RFC 3261 §18.3)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """The single backend of the foundation (the dispatcher replaces it later)."""

    uri: str
    destination: Destination


class Proxy:
    def __init__(
        self,
        *,
        clock: IReactorTime,
        identity: Identity,
        backend: Backend,
        send: SendFunction,
        stats: Stats | None = None,
        timers: TimerConfig | None = None,
        limits: Limits | None = None,
        max_forwards: int = 70,
        record_route: bool = True,
        server_header: str = "sipgw",
        timer_c: float = 180.0,
        max_transactions: int = 100_000,
        route_key: bytes | None = None,
    ) -> None:
        self.clock = clock
        self.identity = identity
        self.backend = backend
        self.send = send
        self.stats = stats or Stats()
        self.timers = timers or TimerConfig()
        self.limits = limits or Limits()
        self.max_forwards = max_forwards
        self.record_route = record_route
        self.server_header = server_header
        self.timer_c = timer_c
        self.max_transactions = max_transactions
        self.draining = False  # set on SIGTERM: new initial requests get 503
        # Signs our Record-Route and contact aliases (a key of this start unless given).
        self.signer = RouteSigner(route_key or os.urandom(32))
        self.nat = Nat(self.signer, is_client=self._is_client)  # the service gives it flows
        self.registrar = Registrar(clock, identity, boot=os.urandom(3).hex())
        # The pool of backends (sipgw.proxy.dispatcher.Dispatcher), set by the service;
        # without one, every request goes to ``backend``.
        self.dispatcher = None
        self.relay = Relay(self)
        self.router = Router(self)
        self.auth: Authenticator | None = None  # the AUTH step; set by the service
        self.trace_in = None  # set by the tracer while somebody listens (sipgw trace)
        self.dialogs = None  # dialog tracking for dlg.* (proxy.dialogs), set by the service
        self.pike = None  # flood detection (sipgw.proxy.pike.Pike), set by the service
        self.acl = None  # REQINIT policy (sipgw.proxy.acl.Acl): User-Agents, addresses
        self.admits = None  # acl.admits when [acl] lists addresses, else None (no cost)
        self.max_ruri_length = 1024  # limits.max_ruri_length

    # -- entry point --------------------------------------------------------------------

    def receive(self, data: bytes, source: Source) -> None:
        admits, pike = self.admits, self.pike
        if (admits is not None and not admits(source)) or (
                pike is not None and not pike.check(source, data[:4] != b"SIP/"
                                                    and data[:1] not in b"\r\n")):
            # Refused by the [acl] address lists, or blocked by pike: dropped unread and
            # unanswered (REQINIT, before any parsing, so that a flood costs as little as
            # possible); a connection is closed.
            if source.flow_id is not None:
                self.close_flow(source.flow_id)
            return
        if not data.strip(b"\r\n\t "):
            return  # a UDP keepalive (CRLF or empty)
        if self.trace_in is not None:
            self.trace_in(data, source)
        try:
            # RFC 7118 §5: a WebSocket message is one SIP message, framed like a datagram.
            msg = parse_message(data, datagram=source.transport not in STREAMS,
                                limits=self.limits)
        except ParseError as e:
            self.refuse(data, source, e)
            return
        try:
            if type(msg) is Request:
                self.stats.inc("core:rcv_requests")
                self.router.on_request(msg, source)
            else:
                self.stats.inc("core:rcv_replies")
                self.stats.inc(_REPLY_CLASS[msg.status // 100 % 7])  # type: ignore[union-attr]
                if source.transport in WEBSOCKET or (self.nat.tests and
                                                     not self.is_backend(source)):
                    self.nat.from_client(msg, source)  # a browser's 200 names .invalid
                self.relay.on_response(msg, source)  # type: ignore[arg-type]
        except ParseError as e:
            # A header parsed lazily by routing turned out bad.
            self.stats.inc("core:bad_msg")
            if type(msg) is Request:
                self._reply_error(msg, source, e)  # type: ignore[arg-type]
        except Exception:
            # A bug must cost one message, never the proxy.
            log.failure("internal error handling a message from {h}:{p}", h=source.host,
                        p=source.port)
            if type(msg) is Request and msg.method != "ACK":  # type: ignore[union-attr]
                self.reply(msg, source, 500, "Server Internal Error")  # type: ignore[arg-type]

    def refuse(self, data: bytes, source: Source, error: ParseError) -> None:
        """A message that could not be parsed or framed: answer it if possible, count it."""
        self.stats.inc("core:bad_msg")
        log.info(
            "bad message from {t}:{h}:{p}: {why}",
            t=source.transport, h=source.host, p=source.port, why=error.reason,
        )
        if error.status is None:
            return
        req = _loose_request(data)
        if req is None or req.method == "ACK":
            return  # nothing to reply to (no Via), or a request that never gets a reply
        self._reply_error(req, source, error)

    def _reply_error(self, req: Request, source: Source, error: ParseError) -> None:
        self.stats.inc("core:err_requests")
        status = error.status or 400
        reason = error.reason if status == 400 else _REASONS.get(status, error.reason)
        # Our reply goes straight back to the source: the Via may be what was broken.
        dest = Destination(
            transport=source.transport, host=source.host, port=source.port,
            flow_id=source.flow_id,
        )
        self._send_local(req, status, reason, None, dest)

    def _is_client(self, host: str, port: int) -> bool:
        """May a contact alias send us there? Anywhere but ourselves and our backends."""
        probe = Source(transport="udp", host=host, port=port, local_host="", local_port=0)
        return not self.identity.is_us(host, port) and not self.is_backend(probe)

    def pending_requests(self) -> int:
        """Requests received that have not had their final answer yet (for draining)."""
        return sum(1 for ctx in self.relay.servers.values() if not ctx.final_sent)

    def screen(self, transport: str, host: str) -> str:
        """Why a new connection from ``host`` is closed unheard ("" when it is not): the
        [acl] lists refuse the address, or pike has blocked it."""
        if self.admits is not None and not self.acl.allowed(transport, host):
            return "address refused by [acl]"
        if self.pike is not None and self.pike.blocked(host):
            return "address blocked by pike"
        return ""

    def close_flow(self, flow_id: int) -> None:
        flows = self.nat.flows
        flow = flows.get(flow_id) if flows is not None else None
        if flow is not None:
            flow.close()

    def is_backend_host(self, host: str) -> bool:
        """Is ``host`` the address of a backend, whatever the port it sends from?"""
        if self.dispatcher is not None:
            return self.dispatcher.is_backend_host(host)
        return host == self.backend.destination.host

    def is_backend(self, source: Source) -> bool:
        """Did this come from a backend (trusted: no auth, routed towards clients)?"""
        if self.dispatcher is not None:
            return self.dispatcher.is_backend(source)
        dest = self.backend.destination
        return source.host == dest.host and source.port == dest.port

    # -- replies generated by sipgw -----------------------------------------------------

    def local_response(
        self, request: Request, status: int, reason: str, extra=None
    ) -> Response:
        # A deterministic To tag: retransmissions of the request get the same reply.
        tag = None
        if status > 100:
            seed = f"{request.call_id}|{request.from_tag}|{request.header('via')}"
            tag = hashlib.blake2s(seed.encode("latin-1"), digest_size=8).hexdigest()
        headers = list(extra or ())
        if self.server_header:
            headers.append(("Server", self.server_header))
        resp = make_response(request, status, reason, to_tag=tag, extra=headers)
        self.stats.inc("sl:sent_replies")
        cls = f"sl:{status // 100}xx_replies"
        if cls in self.stats.values:
            self.stats.inc(cls)
        return resp

    def reply(self, request: Request, source: Source, status: int, reason: str, extra=None):
        """A stateless reply (Kamailio's ``sl_send_reply``)."""
        if request.method == "ACK":
            return
        self._send_local(request, status, reason, extra, self.response_destination(request, source))

    def _send_local(self, request, status, reason, extra, dest: Destination) -> None:
        resp = self.local_response(request, status, reason, extra)
        self.send(resp.to_bytes(), dest)

    # -- where replies go (RFC 3261 §18.2.2, RFC 3581) ----------------------------------

    def response_destination(self, request: Request, source: Source) -> Destination:
        if source.reliable:
            return Destination(
                transport=source.transport, host=source.host, port=source.port,
                flow_id=source.flow_id,
            )
        via = request.top_via
        port = source.port if via.rport is not None else (via.port or 5060)
        return Destination(transport="udp", host=source.host, port=port)

    def via_destination(self, response: Response) -> Destination | None:
        """Where a response goes when no transaction remembers: by its top Via."""
        try:
            via = response.top_via
            # RFC 3581 §4: rport is a port number; a reply naming anything else is dropped.
            rport = parse_port(via.rport) if via.rport else None
        except ParseError:
            return None
        transport = via.transport.lower()
        host = via.received or via.host
        if rport:
            port = rport
        else:
            port = via.port or (5061 if transport == "tls" else 5060)
        return Destination(transport=transport, host=host.strip("[]"), port=port)


# Kamailio's core:rcv_replies_Nxx, by the first digit of the status (0 for nonsense).
_REPLY_CLASS = ("core:rcv_replies_6xx",) + tuple(f"core:rcv_replies_{n}xx" for n in range(1, 7))

_REASONS = {
    400: "Bad Request",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    501: "Not Implemented",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def _loose_request(data: bytes) -> Request | None:
    """Enough of a malformed request to answer it: start line and raw header lines.

    Only Via, From, To, Call-ID and CSeq are copied into the reply (RFC 3261 §8.2.6.2);
    without a Via there is nobody to answer.
    """
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2 or lines[0][:4].upper() == "SIP/":
        return None
    fields = []
    seen = set()
    for line in lines[1:]:
        if not line or line[0] in " \t":
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = header_key(name.strip())
        # One copy of each singleton, even when the request carried two (RFC 4475 multi01).
        if key in ("via", "from", "to", "call-id", "cseq") and (key == "via" or key not in seen):
            seen.add(key)
            fields.append(Field(key, name.strip(), value.strip(), line))
    if not any(f.key == "via" for f in fields):
        return None
    return Request(parts[0], parts[1], fields)
