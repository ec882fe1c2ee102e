"""The proxy: bytes in from any transport, parsed, routed, relayed; bytes out.

``Proxy.receive`` is the one entry point every listener calls. Requests go through the route
script (``router``), responses to the relay. Bad input never escapes as an exception: a
malformed request gets a 400 naming the bad part (when a reply is possible at all), a
malformed response is dropped, and both are counted.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipgw.config import LimitsConfig
from sipgw.proxy.acl import Acl
from sipgw.proxy.auth import Authenticator
from sipgw.proxy.backends import Backends
from sipgw.proxy.dialogs import Dialogs
from sipgw.proxy.identity import Identity
from sipgw.proxy.nat import WEBSOCKET, Nat
from sipgw.proxy.overload import Overload
from sipgw.proxy.pike import Pike
from sipgw.proxy.registrar import Registrar
from sipgw.proxy.relay import Relay
from sipgw.proxy.replies import Replies
from sipgw.proxy.router import Router
from sipgw.proxy.signing import RouteSigner
from sipgw.proxy.stats import Stats
from sipgw.proxy.trace import Tap
from sipgw.proxy.transport import FlowTable, Source
from sipgw.sip.errors import ParseError
from sipgw.sip.headers import header_key
from sipgw.sip.message import Field, Request
from sipgw.sip.parser import Limits, parse_message

log = Logger(namespace="sipgw.core")

STREAMS = frozenset({"tcp", "tls"})  # framed by Content-Length (RFC 3261 §18.3)


class Proxy:
    """The assembled core: the entry point and the components it routes through.

    Built by ``sipgw.proxy.service.build_core``, bottom-up, each component with what it
    needs; this class only takes messages in.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        stats: Stats,
        identity: Identity,
        signer: RouteSigner,
        replies: Replies,
        relay: Relay,
        router: Router,
        nat: Nat,
        registrar: Registrar,
        backends: Backends,
        flows: FlowTable,
        tap: Tap,
        limits: LimitsConfig,
        overload: Overload,
        dialogs: Dialogs | None = None,
        auth: Authenticator | None = None,
        pike: Pike | None = None,
        acl: Acl | None = None,
    ) -> None:
        self.clock = clock
        self.stats = stats
        self.identity = identity
        self.signer = signer
        self.replies = replies
        self.relay = relay
        self.router = router
        self.nat = nat
        self.registrar = registrar
        self.backends = backends
        self.dispatcher = backends.dispatcher
        self.flows = flows
        self.tap = tap
        self.overload = overload
        self.dialogs = dialogs
        self.auth = auth
        self.pike = pike
        self.acl = acl
        self.configure(limits)

    def configure(self, limits: LimitsConfig) -> None:
        """[limits] message sizes, and whether the [acl] lists name any address."""
        self.limits = Limits(max_message_size=limits.max_message_size,
                             max_headers=limits.max_headers,
                             max_body_size=limits.max_message_size)
        acl = self.acl
        # The check before parsing costs nothing when no address is listed.
        self.admits = acl.admits if acl is not None and acl.by_address else None

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
        overload = self.overload
        if (overload.shedding and source.transport == "udp"
                and overload.drops_unread(data, source)):
            return  # far behind: a new request shed unread (``overload.py``)
        if not data.strip(b"\r\n\t "):
            return  # a UDP keepalive (CRLF or empty)
        trace = self.tap.inbound
        if trace is not None:
            trace(data, source)
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
                                                     not self.backends.is_backend(source)):
                    self.nat.from_client(msg, source)  # a browser's 200 names .invalid
                self.relay.on_response(msg, source)  # type: ignore[arg-type]
        except ParseError as e:
            # A header parsed lazily by routing turned out bad.
            self.stats.inc("core:bad_msg")
            if type(msg) is Request:
                self._reply_error(msg, source, e)
        except Exception:
            # A bug must cost one message, never the proxy.
            log.failure("internal error handling a message from {h}:{p}", h=source.host,
                        p=source.port)
            if type(msg) is Request and msg.method != "ACK":
                self.replies.reply(msg, source, 500,
                                   "Server Internal Error")

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
        self.replies.reply_to_source(req, source, status, reason)

    def pending_requests(self) -> int:
        """Requests received that have not had their final answer yet (for draining)."""
        return sum(1 for ctx in self.relay.servers.values() if not ctx.final_sent)

    def screen(self, transport: str, host: str) -> str:
        """Why a new connection from ``host`` is closed unheard ("" when it is not): the
        [acl] lists refuse the address, or pike has blocked it."""
        if self.admits is not None and not self.acl.allowed(transport, host):  # type: ignore[union-attr]
            return "address refused by [acl]"
        if self.pike is not None and self.pike.blocked(host):
            return "address blocked by pike"
        return ""

    def close_flow(self, flow_id: int) -> None:
        flow = self.flows.get(flow_id)
        if flow is not None:
            flow.close()



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
