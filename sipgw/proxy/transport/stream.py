"""SIP over TCP (and TLS, ``tls.py``): connections as flows, framed by ``StreamFramer``.

What a connection may cost is bounded (``[limits]``, the ``tcp_*`` keys and
``max_write_queue``):

* connections from clients at once, overall and per address: beyond them a new
  connection is closed as soon as it is accepted (``tcp:local_reject``);
* a client connection that has not sent one complete SIP message within
  ``tcp_first_message_timeout`` seconds, or that stays silent for ``tcp_idle_timeout``, is
  closed (``tcp:con_timeout``): sockets held open for nothing are an attack, not a client;
* a peer that stops reading: once ``max_write_queue`` bytes wait beyond the socket's
  buffers, the connection is aborted (``tcp:sendq_full``); the others are not slowed.

When a connection closes, ``on_closed(flow_id, source)`` tells the registrar, so requests
for users registered over it get 430/480 at once (as for WebSocket flows).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime, ITCPTransport
from twisted.logger import Logger

from sipgw.config import LimitsConfig
from sipgw.proxy.limits import TCP_STATS, CapLog, ConnectionCaps, SendQueue, tell_slow_reader
from sipgw.proxy.load import StreamBacklog
from sipgw.proxy.stats import Stats
from sipgw.proxy.transport import FlowTable, ReceiveCallback, Source
from sipgw.proxy.transport.listen import listen_stream
from sipgw.sip.errors import FramingError
from sipgw.sip.framing import PING, StreamFramer
from sipgw.sip.parser import Limits

log = Logger(namespace="sipgw.tcp")



class StreamConnection(protocol.Protocol):
    """One TCP connection: a flow in the table, its bytes framed into messages."""

    transport_name = "tcp"
    transport: ITCPTransport  # for mypy: Protocol says "ITransport | None" until connected

    def __init__(self, stack: StreamTransport, outbound: bool) -> None:
        self.stack = stack
        self.outbound = outbound
        self.flow_id = stack.flows.new_id()
        self.framer = StreamFramer(stack.limits)
        self.source: Source | None = None
        self.pending: list[bytes] = []  # written before an outbound connect completes
        self.connected = False
        self.counted = False  # in the caps on client connections
        self.dropped = False  # closed by a limit: nothing more is written to it
        self.queue = SendQueue(stack.settings.max_write_queue)
        self.unasked = 0  # bytes read since the load signal last looked (load.StreamBacklog)
        self._idle: IDelayedCall | None = None
        # The timer closing a client that never sends a whole message.
        self._first: IDelayedCall | None = None

    # -- Twisted ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = self.transport.getHost()
        stack = self.stack
        stack.stats.inc("tcp:current_opened_connections")
        if not self.outbound:
            why = stack.screen(self.transport_name, peer.host) if stack.screen else ""
            if why:
                # Refused by [acl] or blocked by pike: closed before a byte is read.
                stack.cap_log.reached("acl, pike", "{t} connection from {h}:{p} closed: {why}",
                                      t=self.transport_name, h=peer.host, p=peer.port, why=why)
                self.dropped = True
                self.transport.abortConnection()
                return
            refused = stack.caps.refusal(peer.host)
            if refused:
                stack.stats.inc("tcp:local_reject")
                stack.cap_log.reached(
                    "limits.tcp_max_connections", "{t} connection from {h}:{p} refused: {why}",
                    t=self.transport_name, h=peer.host, p=peer.port, why=refused)
                self.dropped = True
                self.transport.abortConnection()
                return
            stack.caps.add(peer.host)
            self.counted = True
            if stack.settings.tcp_first_message_timeout > 0:
                self._first = stack.clock.callLater(stack.settings.tcp_first_message_timeout,
                                                    self._no_message)
        self.source = Source(
            transport=self.transport_name,
            host=peer.host,
            port=peer.port,
            local_host=host.host,
            local_port=host.port,
            flow_id=self.flow_id,
        )
        self.connected = True
        self.queue.attach(self.transport)
        self.stack.flows.add(self, self.transport_name, peer.host, peer.port)
        if self.outbound:
            self.stack.on_flow_connected(self)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()
        self._touch()
        log.debug(
            "flow {id} {dir} {proto}:{host}:{port}",
            id=self.flow_id,
            dir="to" if self.outbound else "from",
            proto=self.transport_name,
            host=peer.host,
            port=peer.port,
        )

    def dataReceived(self, data: bytes) -> None:
        if self.dropped:
            return  # refused or closed by a limit; a few bytes may still be on their way
        self._touch()
        try:
            items = self.framer.feed(data)
        except FramingError as e:
            log.warn("flow {id}: {reason}; closing", id=self.flow_id, reason=e.reason)
            self._deliver(e.framed)  # type: ignore[attr-defined]
            if self.stack.refuse is not None and self.source is not None:
                # Answer with the error if the headers allow it, then close: the stream
                # cannot be resynchronised (RFC 3261 §18.3, RFC 4475 ncl and mcl01).
                self.stack.refuse(e.head, self.source, e)  # type: ignore[attr-defined]
            self.lose()
            return
        self._deliver(items)
        self.stack.backlog.read(self, len(data))

    def _deliver(self, items: list) -> None:
        for item in items:
            if item is PING:
                # RFC 5626 §4.4.1: answer a double-CRLF ping with a single CRLF.
                self.transport.write(b"\r\n")
            else:
                if self._first is not None:
                    self._first.cancel()
                    self._first = None
                assert self.source is not None  # set in connectionMade, before any byte
                self.stack.receive(item, self.source)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        for call in (self._idle, self._first):
            if call is not None and call.active():
                call.cancel()
        self._idle = self._first = None
        stack = self.stack
        stack.stats.inc("tcp:current_opened_connections", -1)
        if self.counted and self.source is not None:
            self.counted = False
            stack.caps.remove(self.source.host)
        if self.source is not None:
            stack.flows.remove(self, self.transport_name, self.source.host, self.source.port)
            if stack.on_closed is not None:
                stack.on_closed(self.flow_id, self.source)
        stack.on_flow_closed(self)

    # -- flow interface -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self.connected:
            self.pending.append(data)
            return
        if self.dropped:
            return
        self._touch()
        self.transport.write(data)
        if self.queue.over(len(data)):
            self.stack.slow_reader(self)

    def close(self) -> None:
        if self.transport is not None:
            self.lose()

    def lose(self) -> None:
        """Close once what is written has gone. The write bound's producer goes first:
        Twisted's TLS layer puts off its close alert, and so the close itself, while a
        producer is registered, and ours never leaves by itself."""
        self.transport.unregisterProducer()  # type: ignore[attr-defined]  # an IConsumer too
        self.transport.loseConnection()

    def _touch(self) -> None:
        timeout = self.stack.settings.tcp_idle_timeout
        if not timeout:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self.stack.clock.callLater(timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        self.stack.timed_out(self, "limits.tcp_idle_timeout", "idle")

    def _no_message(self) -> None:
        self._first = None
        self.stack.timed_out(self, "limits.tcp_first_message_timeout",
                             "no complete SIP message")


class _ServerFactory(protocol.ServerFactory):
    def __init__(self, stack: StreamTransport) -> None:
        self.stack = stack

    def buildProtocol(self, addr) -> StreamConnection:
        return StreamConnection(self.stack, outbound=False)


class _ClientFactory(protocol.ClientFactory):
    # One factory per connection: its "Starting factory" log event would say nothing
    # and, kept by a log buffer, keep the connection alive.
    noisy = False

    def __init__(self, stack: StreamTransport, conn: StreamConnection) -> None:
        self.stack = stack
        self.conn: StreamConnection | None = conn

    def buildProtocol(self, addr) -> StreamConnection | None:
        return self.conn

    def clientConnectionFailed(self, connector, reason) -> None:
        assert self.conn is not None  # let go of only once the connection is over
        self.stack.on_connect_failed(self.conn, reason)
        self.conn = None

    def clientConnectionLost(self, connector, reason) -> None:
        # Twisted's client transport and its connector refer to each other for good, a
        # cycle left to the collector (tcp.Client.connector, Connector.transport); the
        # connector holds this factory, which lets go of the connection here.
        self.conn = None


class StreamTransport:
    """TCP listeners and outbound connections sharing one flow table."""

    transport_name = "tcp"

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        flows: FlowTable,
        receive: ReceiveCallback,
        *,
        limits: Limits,
        settings: LimitsConfig = LimitsConfig(),
        stats: Stats | None = None,
        on_send_failed: Callable[[str, int, str], None] | None = None,
        refuse: Callable[[bytes, Source, FramingError], None] | None = None,
        on_closed: Callable[[int, Source], None] | None = None,
        caps: ConnectionCaps | None = None,
        screen: Callable[[str, str], str] | None = None,
        backlog: StreamBacklog | None = None,
    ) -> None:
        """``settings``: ``[limits]`` (its tcp_* keys and max_write_queue); ``limits``: the
        message sizes the framer accepts (``Proxy.limits``, from the same section);
        ``backlog``: what the connections report their reads to (the load signal's)."""
        self.reactor = reactor
        self.clock = clock
        self.flows = flows
        self.receive = receive
        self.limits = limits
        self.settings = settings
        self.stats = stats or Stats()
        self.stats.declare(TCP_STATS)
        self.on_send_failed = on_send_failed
        self.refuse = refuse
        self.on_closed = on_closed
        self.caps = caps or ConnectionCaps("limits.tcp_max_connections",
                                           "limits.tcp_max_connections_per_address",
                                           max_total=settings.tcp_max_connections,
                                           max_per_address=settings.tcp_max_connections_per_address)
        self.cap_log = CapLog(log, clock.seconds)
        self._connecting: dict[tuple[str, int], StreamConnection] = {}
        # (transport, client address) → why its connections are closed at once, "" if not
        # (Proxy.screen: the [acl] lists and pike).
        self.screen = screen
        self.backlog = backlog or StreamBacklog()

    def reconfigure(self, settings: LimitsConfig, limits: Limits | None = None) -> None:
        """Reload: new caps and timeouts, and the message limits new connections frame
        with; live connections keep their write bound and framer."""
        self.settings = settings
        if limits is not None:
            self.limits = limits
        self.caps.max_total = settings.tcp_max_connections
        self.caps.max_per_address = settings.tcp_max_connections_per_address

    # -- limits reached -----------------------------------------------------------------

    def timed_out(self, conn: StreamConnection, key: str, what: str) -> None:
        conn.dropped = True
        self.stats.inc("tcp:con_timeout")
        src = conn.source
        self.cap_log.reached(key, "{t} flow {id} from {h}:{p}: {what}; closed",
                             t=conn.transport_name, id=conn.flow_id, what=what,
                             h=src.host if src else "?", p=src.port if src else 0)
        conn.lose()

    def slow_reader(self, conn: StreamConnection) -> None:
        """The peer left more than ``max_write_queue`` bytes unread: drop what waits."""
        conn.dropped = True
        tell_slow_reader(self.stats, self.cap_log, conn)
        conn.transport.abortConnection()

    def listen(self, host: str, port: int, fd: int | None = None):
        return listen_stream(self.reactor, host, port, _ServerFactory(self), fd=fd)

    def send(self, data: bytes, host: str, port: int, flow_id: int | None,
             name: str | None = None) -> None:
        """Send on the given flow if open, else on any flow to host:port, else connect.
        ``name``: the host name ``host`` was resolved from (what TLS verifies)."""
        flow = self.flows.get(flow_id) or self.flows.find(self.transport_name, host, port)
        if flow is not None:
            flow.send(data)
            return
        conn = self._connecting.get((host, port))
        if conn is None:
            if not self.may_connect(name or host, port):
                if self.on_send_failed is not None:
                    self.on_send_failed(host, port, self.transport_name)
                return
            conn = self.connection(outbound=True)
            self._connecting[(host, port)] = conn
            self.reactor.connectTCP(host, port,
                                    self.client_factory(_ClientFactory(self, conn), name or host),
                                    timeout=10)
        conn.send(data)

    def may_connect(self, name: str, port: int) -> bool:
        """Whether to open a connection to ``name``:``port`` (TCP: anywhere)."""
        return True

    def connection(self, *, outbound: bool) -> StreamConnection:
        return StreamConnection(self, outbound=outbound)

    def client_factory(self, factory: protocol.ClientFactory, name: str):
        """What connects to ``name``: the factory itself over TCP (TLS wraps it)."""
        return factory

    def on_connect_failed(self, conn: StreamConnection, reason) -> None:
        for key, c in list(self._connecting.items()):
            if c is conn:
                del self._connecting[key]
                log.warn(
                    "tcp connect to {host}:{port} failed: {why}",
                    host=key[0],
                    port=key[1],
                    why=reason.getErrorMessage(),
                )
                if self.on_send_failed is not None:
                    self.on_send_failed(key[0], key[1], self.transport_name)

    def on_flow_connected(self, conn: StreamConnection) -> None:
        for key, c in list(self._connecting.items()):
            if c is conn:
                del self._connecting[key]

    def on_flow_closed(self, conn: StreamConnection) -> None:
        for key, c in list(self._connecting.items()):
            if c is conn:
                del self._connecting[key]

    def close_all(self) -> None:
        """This transport's connections, each once what is written to it has gone (the
        flow table is shared: WebSocket connections close their own way)."""
        for flow in list(self.flows.by_id.values()):
            if flow.transport_name == self.transport_name:
                flow.close()
