"""SIP over WebSocket (RFC 7118) with autobahn: connections as flows, one message per frame.

The handshake follows Kamailio's websocket module, which our users' browsers already pass:

* a plain HTTP GET (no ``Upgrade``, no ``Sec-WebSocket-Key``) is not a WebSocket: the
  test phone page (``websocket.phone_page``, ``sipgw.proxy.transport.ws.phone``) for its own paths,
  404 for anything else;
* a WebSocket request missing ``Host``, ``Upgrade: websocket``, ``Connection: upgrade``,
  ``Sec-WebSocket-Key`` or ``Sec-WebSocket-Version``, or not offering the ``sip``
  subprotocol: 400;
* ``Sec-WebSocket-Version`` other than 13: 426 with ``Sec-WebSocket-Version: 13``;
* an ``Origin`` outside ``websocket.allowed_origins`` (when set): 403;
* a ``Host`` outside ``websocket.allowed_hosts`` (when set): 403;
* a handshake not finished within ``websocket.handshake_timeout``: dropped.

After it, every text or binary message is one SIP message (RFC 7118 §5), handed to the proxy
with the connection's flow as its source. autobahn enforces the framing rules: a message
over ``limits.max_message_size`` closes with 1009, a protocol error (unmasked client frame,
unknown opcode, fragmented control frame...) with 1002. A connection idle for
``websocket.keepalive_interval`` seconds gets a ping; without a pong within the next
interval it is dropped (a peer gone without a FIN).

Limits (``[limits]``): connections at once, overall and per client address (beyond them
the handshake gets 503); a connection that sends no REGISTER within
``ws_register_timeout`` is closed with 1008; a client that stops reading is dropped once
``max_write_queue`` bytes wait for it. Reaching a limit is logged at most once per
interval (``sipgw.proxy.limits.CapLog``), whatever the number of connections.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as _autobahn_protocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger

from sipgw.config import LimitsConfig, WebSocketConfig
from sipgw.proxy.limits import TCP_STATS, CapLog, ConnectionCaps, SendQueue, tell_slow_reader
from sipgw.proxy.load import StreamBacklog
from sipgw.proxy.runtime.log import LEVELS, current_level
from sipgw.proxy.stats import StatDef, Stats
from sipgw.proxy.transport import FlowTable, ReceiveCallback, Source, in_networks, transport_address
from sipgw.proxy.transport.listen import listen_stream
from sipgw.proxy.transport.ws import autobahn_log as wslog
from sipgw.proxy.transport.ws.fast import FastPaths, protocol_options
from sipgw.proxy.transport.ws.phone import phone_asset
from sipgw.rpc.registry import RpcError, rpc

log = Logger(namespace="sipgw.ws")
wslog.install()

SUBPROTOCOL = "sip"
VERSION = "13"
MAX_HANDSHAKE = 8192  # bytes of HTTP request head we buffer before refusing it
GOING_AWAY = 1001  # RFC 6455 §7.4.1: the server is going down
CLOSE_REASONS = {1000: None, GOING_AWAY: b"going away"}

WS_STATS = (
    StatDef(group="websocket", name="ws_current_connections", help="WebSocket connections open now", gauge=True),  # noqa: E501
    StatDef(group="websocket", name="ws_max_concurrent_connections", help="most WebSocket connections open at once", gauge=True),  # noqa: E501
    StatDef(group="websocket", name="ws_successful_handshakes", help="WebSocket handshakes accepted"),  # noqa: E501
    StatDef(group="websocket", name="ws_failed_handshakes", help="WebSocket handshakes refused or timed out"),  # noqa: E501
    StatDef(group="websocket", name="ws_local_closed_connections", help="WebSocket connections closed by sipgw"),  # noqa: E501
    StatDef(group="websocket", name="ws_remote_closed_connections", help="WebSocket connections closed by the client"),  # noqa: E501
    StatDef(group="websocket", name="ws_received_frames", help="WebSocket frames received (messages, pings and pongs)"),  # noqa: E501
    StatDef(group="websocket", name="ws_transmitted_frames", help="WebSocket frames sent (messages and pings)"),  # noqa: E501
)


class HandshakeRefused(Exception):
    """The HTTP answer to a handshake we do not accept."""

    def __init__(self, status: int, reason: str, headers: tuple = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


class PlainGet(HandshakeRefused):
    """Not a WebSocket at all: a browser asking for a page (404 unless it is the phone's)."""

    def __init__(self, path: str) -> None:
        super().__init__(404, "Not Found")
        self.path = path


@dataclass(frozen=True, slots=True, kw_only=True)
class Handshake:
    """An opening handshake's request head, parsed."""

    line: str  # the request line
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lowercase names; a repeated header's values joined by ", "
    repeated: frozenset[str]  # names that came more than once
    # True when only CRLF ends its lines: autobahn, splitting on any line break, sees
    # the same headers.
    clean_lines: bool


def parse_head(head: bytes) -> Handshake:
    """The request line and headers of an HTTP request head (without its blank line)."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HandshakeRefused(400, "Bad Request")
    headers: dict[str, str] = {}
    repeated: set[str] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            if key in headers:
                repeated.add(key)
                headers[key] = f"{headers[key]}, {value.strip()}"
            else:
                headers[key] = value.strip()
    return Handshake(line=lines[0], method=parts[0], target=parts[1], version=parts[2],
                     headers=headers, repeated=frozenset(repeated),
                     clean_lines=len(text.splitlines()) == len(lines))


def check_handshake(
    head: bytes, allowed_origins: tuple[str, ...], allowed_hosts: tuple[str, ...] = ()
) -> Handshake:
    """Kamailio's rules for an opening handshake; returns it parsed.

    Raises ``HandshakeRefused`` with the status to answer. autobahn checks the same
    request again afterwards (key format, duplicates) unless ``FastPaths`` finds it
    needs not; these are the answers it would give differently from Kamailio.
    """
    request = parse_head(head)
    headers = request.headers
    if request.method != "GET":
        raise HandshakeRefused(405, "Method Not Allowed")
    if "upgrade" not in headers and "sec-websocket-key" not in headers:
        raise PlainGet(request.target)
    upgrade = _tokens(headers.get("upgrade", ""))
    connection = _tokens(headers.get("connection", ""))
    if (
        "host" not in headers
        or "websocket" not in upgrade
        or "upgrade" not in connection
        or not headers.get("sec-websocket-key")
        or not headers.get("sec-websocket-version")
    ):
        raise HandshakeRefused(400, "Bad Request")
    if headers["sec-websocket-version"] != VERSION:
        raise HandshakeRefused(426, "Upgrade Required", (("Sec-WebSocket-Version", VERSION),))
    # Tokens are case-sensitive (RFC 6455 §4.1): autobahn, answering "sip", would find
    # it missing from an offer of "SIP" and never answer.
    offered = [t.strip() for t in headers.get("sec-websocket-protocol", "").split(",")]
    if SUBPROTOCOL not in offered:
        raise HandshakeRefused(400, "Bad Request")
    origin = headers.get("origin")
    if allowed_origins and (origin is None or origin.rstrip("/") not in allowed_origins):
        raise HandshakeRefused(403, "Forbidden")
    if allowed_hosts and not _host_allowed(headers["host"], allowed_hosts):
        raise HandshakeRefused(403, "Forbidden")
    return request


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """``Host: name[:port]`` matches an entry as written, or by its name alone when the
    entry has no port (Kamailio's websocket Host check, case-insensitive)."""
    host = host.strip().lower()
    if host in allowed:
        return True
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in allowed


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def client_address(peer_host: str, headers: dict[str, str], trusted: tuple) -> str:
    """The client's address: the peer's, or, when the peer is a trusted reverse proxy,
    the one it names in ``X-Real-IP`` or (the last untrusted hop of) ``X-Forwarded-For``."""
    if not trusted or not in_networks(peer_host, trusted):
        return peer_host
    real = headers.get("x-real-ip", "").strip()
    if real and _is_ip(real):
        return real
    hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_ip(hop):
            break
        if not in_networks(hop, trusted):
            return hop
    return peer_host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# autobahn pretty-prints its whole option table for a debug log line on every new
# connection, whether or not anyone logs debug: 0.6 ms per connection, half of what a
# WebSocket REGISTER costs us (bench/ws.py profile). We never show autobahn's debug lines.
_autobahn_protocol.pformat = lambda _options: ""  # type: ignore[assignment, misc]  # all it is given


class _ClockTimer:
    """autobahn's timer interface on our clock, so its handshake timeouts run on the
    reactor we were given (and on ``task.Clock`` in tests) rather than the global one."""

    __slots__ = ("clock",)

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def call_later(self, delay: float, fn, *args, **kwargs):
        return self.clock.callLater(delay, fn, *args, **kwargs)


# autobahn's own two bases disagree on the types of peer and _transport_details.
class WsConnection(FastPaths, WebSocketServerProtocol):  # type: ignore[misc]
    """One WebSocket connection: a flow once its handshake succeeds."""

    def __init__(self, stack: WsTransport) -> None:
        super().__init__()
        self.stack = stack
        self.flow_id = stack.flows.new_id()
        self.transport_name = "ws"  # "wss" when its factory is secure (set by buildProtocol)
        self.source: Source | None = None
        self.client_host: str | None = None
        self.opened_at = 0.0
        self.last_used = 0.0
        self._idle: IDelayedCall | None = None
        self._awaiting_pong = False
        self._checked = False
        self._dropped_by_us = False
        # The timer closing a connection that never registers.
        self._unregistered: IDelayedCall | None = None
        self.queue = SendQueue(stack.limits.max_write_queue)
        self.unasked = 0  # bytes read since the load signal last looked (load.StreamBacklog)

    # -- handshake ----------------------------------------------------------------------

    def processHandshake(self) -> None:
        if not self._checked:
            end = self.data.find(b"\r\n\r\n")
            if end < 0:
                if len(self.data) > MAX_HANDSHAKE:
                    self._refuse(HandshakeRefused(431, "Request Header Fields Too Large"))
                return
            try:
                request = check_handshake(self.data[:end], self.stack.settings.allowed_origins,
                                          self.stack.allowed_hosts)
            except PlainGet as get:
                asset = phone_asset(get.path) if self.stack.settings.phone_page else None
                if asset is None:
                    self._refuse(get)
                else:
                    self._serve(*asset)
                return
            except HandshakeRefused as refused:
                self._refuse(refused)
                return
            peer = self.transport.getPeer()
            self.client_host = client_address(peer.host, request.headers,
                                              self.stack.settings.trusted_proxies)
            screen = self.stack.screen
            if screen is not None and screen(self.transport_name, self.client_host):
                # Refused by [acl] or blocked by pike: no handshake, no answer, no log line
                # per connection (a flood of them is what pike is about).
                self.stack.stats.inc("websocket:ws_failed_handshakes")
                self.dropConnection(abort=True)
                return
            full = self.stack.caps.refusal(self.client_host)
            if full:
                self.stack.stats.inc("websocket:ws_failed_handshakes")
                self.stack.cap_log.reached("limits.ws_max_connections",
                                           "ws handshake from {h}:{p} refused with 503: {why}",
                                           h=self.client_host, p=peer.port, why=full)
                self.failHandshake("Service Unavailable", 503)
                return
            self._checked = True
            if self.accept_handshake(end, request):
                return
        super().processHandshake()

    def _refuse(self, refused: HandshakeRefused) -> None:
        self.stack.stats.inc("websocket:ws_failed_handshakes")
        peer = self.transport.getPeer()
        log.info("ws handshake from {h}:{p} refused: {status}", h=peer.host, p=peer.port,
                 status=str(refused))
        self.failHandshake(refused.reason, refused.status, list(refused.headers))

    def _serve(self, body: bytes, content_type: str) -> None:
        """The phone page's file, then close: one request per connection keeps this simple."""
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-cache\r\n"
                "Connection: close\r\n\r\n").encode()
        self.sendData(head + body)
        self.wasClean = True  # an HTTP exchange that ended as it should: no warning
        self.dropConnection(abort=False)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders=None) -> None:
        # sipgw logs each refusal itself (_refuse, the caps' CapLog); autobahn would add a
        # WARNING "dropping connection ... abort=False" to every one, a browser's GET of
        # /favicon.ico included. The HTTP answer is a clean end of that exchange.
        self.wasClean = True
        super().failHandshake(reason, code, responseHeaders)

    def onConnect(self, request):
        return SUBPROTOCOL  # check_handshake made sure the client offered it

    def onOpenHandshakeTimeout(self) -> None:
        if self.state == WebSocketProtocol.STATE_CONNECTING:
            self.stack.stats.inc("websocket:ws_failed_handshakes")
            log.info("ws handshake timeout from {h}", h=self.transport.getPeer().host)
        super().onOpenHandshakeTimeout()

    def onOpen(self) -> None:
        peer = self.transport.getPeer()
        local = self.transport.getHost()
        self.source = Source(
            transport=self.transport_name,
            host=self.client_host or peer.host,
            port=peer.port,
            local_host=local.host,
            local_port=local.port,
            flow_id=self.flow_id,
        )
        self.opened_at = self.last_used = self.stack.clock.seconds()
        self.queue.attach(self.transport)
        self.stack.opened(self)
        self._arm_keepalive()
        timeout = self.stack.limits.ws_register_timeout
        if timeout > 0:
            self._unregistered = self.stack.clock.callLater(timeout, self._no_register)

    # -- frames -------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)  # FastPaths': without autobahn's adapter's debug line
        self.stack.backlog.read(self, len(data))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._used()
        if self._unregistered is not None and payload.startswith(b"REGISTER "):
            self._unregistered.cancel()
            self._unregistered = None
        self.stack.stats.inc("websocket:ws_received_frames")
        assert self.source is not None  # set in onOpen, before any message
        self.stack.receive(payload, self.source)

    def onPing(self, payload: bytes) -> None:
        self._used()
        self.stack.stats.inc("websocket:ws_received_frames")
        super().onPing(payload)  # answers with a pong

    def onPong(self, payload: bytes) -> None:
        self._used()
        self.stack.stats.inc("websocket:ws_received_frames")

    def onClose(self, wasClean: bool, code, reason) -> None:
        for call in (self._idle, self._unregistered):
            if call is not None and call.active():
                call.cancel()
        self._idle = self._unregistered = None
        if self.source is not None:
            source, self.source = self.source, None
            by_us = self.closedByMe or self.failedByMe or self._dropped_by_us
            self.stack.closed(self, source, by_us=bool(by_us))

    def connectionLost(self, reason=connectionDone) -> None:
        super().connectionLost(reason)
        # autobahn fires ``is_closed`` with the protocol itself, so the protocol and the
        # Deferred it holds refer to each other: a cycle per connection, freed only by the
        # collector's rare full pass (gcpolicy). Nothing in sipgw waits on it, and autobahn
        # touches it no more once the connection is closed.
        self.is_closed = None

    def _no_register(self) -> None:
        self._unregistered = None
        src = self.source
        self.stack.cap_log.reached(
            "limits.ws_register_timeout", "{t} flow {id} from {h}:{p}: no REGISTER within "
            "{s:g}s; closed with 1008", t=self.transport_name, id=self.flow_id,
            h=src.host if src else "?", p=src.port if src else 0,
            s=self.stack.limits.ws_register_timeout)
        # 1008, policy violation (RFC 6455 §7.4.1); autobahn's sendClose only takes
        # application codes, so the frame is sent as its own protocol errors are.
        self.sendCloseFrame(code=1008, reasonUtf8=b"no REGISTER", isReply=False)

    # -- keepalive ----------------------------------------------------------------------

    def _used(self) -> None:
        self.last_used = self.stack.clock.seconds()
        self._awaiting_pong = False

    def _arm_keepalive(self) -> None:
        interval = self.stack.settings.keepalive_interval
        if interval > 0:
            self._idle = self.stack.clock.callLater(interval, self._keepalive)

    def _keepalive(self) -> None:
        self._idle = None
        if self.source is None:
            return
        idle = self.stack.clock.seconds() - self.last_used
        interval = self.stack.settings.keepalive_interval
        if self._awaiting_pong:
            # A whole interval since our ping and nothing came back: the peer is gone.
            self.stack.cap_log.reached("websocket.keepalive_interval",
                                       "{t} flow {id}: no pong; dropped",
                                       t=self.transport_name, id=self.flow_id)
            self._dropped_by_us = True
            self.dropConnection(abort=True)
            return
        if idle >= interval:
            self._awaiting_pong = True
            self.stack.stats.inc("websocket:ws_transmitted_frames")
            self.sendPing()
            self._idle = self.stack.clock.callLater(interval, self._keepalive)
        elif interval > 0:
            self._idle = self.stack.clock.callLater(interval - idle, self._keepalive)

    # -- flow interface -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        self.last_used = self.stack.clock.seconds()
        self.stack.stats.inc("websocket:ws_transmitted_frames")
        # RFC 7118 §5.1: text frames for UTF-8 messages, binary for anything else.
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            self.send_message(data, True)
        else:
            self.send_message(data, False)
        if self.queue.over(len(data)):
            self.stack.slow_reader(self)

    def close(self, code: int = 1000) -> None:
        """A close frame (1000, or 1001 going away when sipgw stops), then the closing
        handshake: the client answers and autobahn drops the TCP connection, or drops it
        after ``closeHandshakeTimeout`` without an answer. A connection still in its opening
        handshake is dropped; one already closing is left to finish."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            # autobahn's sendClose takes only 1000 and application codes; 1001 is the
            # protocol's own (RFC 6455 §7.4.1), sent as autobahn sends its own codes.
            self.sendCloseFrame(code=code, reasonUtf8=CLOSE_REASONS.get(code), isReply=False)
        elif self.state == WebSocketProtocol.STATE_CLOSING:
            return  # the handshake under way ends it, bounded by closeHandshakeTimeout
        elif self.transport is not None:
            self._dropped_by_us = True
            self.dropConnection(abort=False)

    def describe(self, now: float) -> dict:
        src = self.source
        return {
            "id": self.flow_id,
            "proto": self.transport_name,
            "src": f"{src.host}:{src.port}" if src else "",
            "dst": f"{src.local_host}:{src.local_port}" if src else "",
            "state": "open" if self.state == WebSocketProtocol.STATE_OPEN else "closing",
            "idle": round(now - self.last_used, 1),
            "age": round(now - self.opened_at, 1),
            "sub_protocol": SUBPROTOCOL,
        }


class _Factory(WebSocketServerFactory):
    def __init__(self, stack: WsTransport, secure: bool) -> None:
        super().__init__(reactor=stack.reactor)
        self.stack = stack
        self.isSecure = secure
        self.transport_name = "wss" if secure else "ws"
        self._batched_timer = _ClockTimer(stack.clock)
        self.apply()

    def apply(self) -> None:
        """The stack's settings as autobahn's options (at start and after a reload)."""
        max_message_size = self.stack.limits.max_message_size
        self.setProtocolOptions(
            versions=[13],
            webStatus=False,
            failByDrop=False,  # answer protocol errors with a close frame (1002, 1009)
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            openHandshakeTimeout=self.stack.settings.handshake_timeout,
            closeHandshakeTimeout=1,
            autoPingInterval=0,  # our own idle-based keepalive instead
            requireMaskedClientFrames=True,
            utf8validateIncoming=True,
            tcpNoDelay=True,
        )
        self.protocol_options = protocol_options(self)

    def buildProtocol(self, addr) -> WsConnection:
        proto = WsConnection(self.stack)
        proto.factory = self
        proto.transport_name = self.transport_name
        return proto


class WsTransport:
    """The WS and WSS listeners and their flows; ``ws.dump`` and ``ws.close``."""

    def __init__(
        self,
        reactor,
        clock: IReactorTime,
        flows: FlowTable,
        receive: ReceiveCallback,
        stats: Stats,
        settings: WebSocketConfig,
        limits: LimitsConfig,
        *,
        on_closed: Callable[[int, Source], None] | None = None,
        users_of: Callable[[int], list[str]] = lambda flow_id: [],
        flows_of: Callable[[str], list[int]] = lambda user: [],
        screen: Callable[[str, str], str] | None = None,
        backlog: StreamBacklog | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.flows = flows
        self.receive = receive
        self.stats = stats
        self.on_closed = on_closed
        self.connections: dict[int, WsConnection] = {}
        self.caps = ConnectionCaps("limits.ws_max_connections",
                                   "limits.ws_max_connections_per_address",
                                   max_total=limits.ws_max_connections,
                                   max_per_address=limits.ws_max_connections_per_address)
        self.factories: list[_Factory] = []
        self.reconfigure(settings, limits)
        self.cap_log = CapLog(log, clock.seconds)
        # From the registrar: who registered on a flow, and the flows of a user.
        self.users_of = users_of
        self.flows_of = flows_of
        # (transport, client address) → why its handshake is dropped, "" if not
        # (Proxy.screen: the [acl] lists and pike).
        self.screen = screen
        # What the connections report their reads to (the load signal's, ``load.py``).
        self.backlog = backlog or StreamBacklog()
        stats.declare(WS_STATS)
        stats.declare(TCP_STATS)  # tcp:sendq_full counts WebSocket slow readers too

    def factory(self, *, secure: bool = False) -> _Factory:
        f = _Factory(self, secure=secure)
        self.factories.append(f)
        return f

    def listen(self, host: str, port: int, tls=None, fd: int | None = None):
        """A WS listener, or a WSS one when given a TLS context factory."""
        listening = listen_stream(self.reactor, host, port, self.factory(secure=tls is not None),
                                  tls=tls, fd=fd)
        log.info("listening on {a}",
                 a=transport_address("ws" if tls is None else "wss", host, port))
        return listening

    def reconfigure(self, settings: WebSocketConfig, limits: LimitsConfig) -> None:
        """``[websocket]`` and the ws_* keys, max_message_size and max_write_queue of
        ``[limits]``, at start and reload (new connections get the new write bound)."""
        self.settings = settings
        self.limits = limits
        self.allowed_hosts = tuple(host.lower() for host in settings.allowed_hosts)
        self.caps.max_total = limits.ws_max_connections
        self.caps.max_per_address = limits.ws_max_connections_per_address
        for f in self.factories:
            f.apply()

    # -- connections come and go --------------------------------------------------------

    def slow_reader(self, conn: WsConnection) -> None:
        """The client left more than ``max_write_queue`` bytes unread: drop what waits."""
        tell_slow_reader(self.stats, self.cap_log, conn)
        conn._dropped_by_us = True
        conn.dropConnection(abort=True)

    def opened(self, conn: WsConnection) -> None:
        src = conn.source
        assert src is not None
        self.connections[conn.flow_id] = conn
        self.caps.add(src.host)
        self.flows.add(conn, src.transport, src.host, src.port)
        s = self.stats
        s.inc("websocket:ws_successful_handshakes")
        s.inc("websocket:ws_current_connections")
        current = s.get("websocket:ws_current_connections")
        if current > s.get("websocket:ws_max_concurrent_connections"):
            s.set("websocket:ws_max_concurrent_connections", current)
        # One event per connection costs when nobody reads it.
        if current_level() >= LEVELS["debug"]:
            log.debug("flow {id} from {t}:{h}:{p}", id=conn.flow_id, t=src.transport,
                      h=src.host, p=src.port)

    def closed(self, conn: WsConnection, source: Source, *, by_us: bool) -> None:
        self.connections.pop(conn.flow_id, None)
        self.caps.remove(source.host)
        self.flows.remove(conn, source.transport, source.host, source.port)
        s = self.stats
        s.inc("websocket:ws_current_connections", -1)
        s.inc("websocket:ws_local_closed_connections" if by_us
              else "websocket:ws_remote_closed_connections")
        if self.on_closed is not None:
            self.on_closed(conn.flow_id, source)

    def close_all(self) -> None:
        """sipgw stops: every connection gets 1001, going away, on which browsers
        reconnect (through nginx, to another node)."""
        for conn in list(self.connections.values()):
            conn.close(GOING_AWAY)

    # -- RPC ----------------------------------------------------------------------------

    @rpc("ws.dump", help="Open WebSocket connections: id, protocol, client and local "
                         "address, state, seconds idle and open.")
    def rpc_dump(self) -> dict:
        now = self.clock.seconds()
        conns = []
        for conn in sorted(self.connections.values(), key=lambda c: c.flow_id):
            conns.append({**conn.describe(now), "users": self.users_of(conn.flow_id)})
        return {"connections": conns, "info": {"wscounter": len(conns)}}

    @rpc("ws.close", help="Close a WebSocket connection: its id (from ws.dump), or a user "
                          "(sip:5001@domain, or 5001 when no connection has that id) to close "
                          "every connection it registered on.")
    def rpc_close(self, which: int | str) -> str:
        text = str(which)
        # A connection id first; a number that names no connection may be a user (5001).
        ids = [int(text)] if text.isdigit() and int(text) in self.connections else []
        ids = ids or self.flows_of(text)
        conns = [self.connections[i] for i in ids if i in self.connections]
        if not conns:
            raise RpcError(f"no WebSocket connection for {which}")
        for conn in conns:
            conn.close()
        return "ok"
