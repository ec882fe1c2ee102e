"""SIP over TCP (and, later, TLS): connections as flows, framed by ``StreamFramer``."""

from __future__ import annotations

from typing import Callable

from twisted.internet import protocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger

from sipgw.proxy.transport import FlowTable, ReceiveCallback, Source
from sipgw.sip.errors import FramingError
from sipgw.sip.framing import PING, StreamFramer
from sipgw.sip.parser import Limits

log = Logger(namespace="sipgw.tcp")


class StreamConnection(protocol.Protocol):
    """One TCP connection: a flow in the table, its bytes framed into messages."""

    transport_name = "tcp"

    def __init__(self, stack: "StreamTransport", outbound: bool) -> None:
        self.stack = stack
        self.outbound = outbound
        self.flow_id = stack.flows.new_id()
        self.framer = StreamFramer(stack.limits)
        self.source: Source | None = None
        self.pending: list[bytes] = []  # written before an outbound connect completes
        self.connected = False
        self._idle = None

    # -- Twisted ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = self.transport.getHost()
        self.source = Source(
            transport=self.transport_name,
            host=peer.host,
            port=peer.port,
            local_host=host.host,
            local_port=host.port,
            flow_id=self.flow_id,
        )
        self.connected = True
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
            self.transport.loseConnection()
            return
        self._deliver(items)

    def _deliver(self, items: list) -> None:
        for item in items:
            if item is PING:
                # RFC 5626 §4.4.1: answer a double-CRLF ping with a single CRLF.
                self.transport.write(b"\r\n")
            else:
                self.stack.receive(item, self.source)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self.source is not None:
            self.stack.flows.remove(self, self.transport_name, self.source.host, self.source.port)
        self.stack.on_flow_closed(self)

    # -- flow interface -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.connected:
            self._touch()
            self.transport.write(data)
        else:
            self.pending.append(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _touch(self) -> None:
        timeout = self.stack.idle_timeout
        if not timeout:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self.stack.clock.callLater(timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        log.info("flow {id}: idle, closing", id=self.flow_id)
        self.transport.loseConnection()


class _ServerFactory(protocol.ServerFactory):
    def __init__(self, stack: "StreamTransport") -> None:
        self.stack = stack

    def buildProtocol(self, addr) -> StreamConnection:
        return StreamConnection(self.stack, outbound=False)


class _ClientFactory(protocol.ClientFactory):
    def __init__(self, stack: "StreamTransport", conn: StreamConnection) -> None:
        self.stack = stack
        self.conn = conn

    def buildProtocol(self, addr) -> StreamConnection:
        return self.conn

    def clientConnectionFailed(self, connector, reason) -> None:
        self.stack.on_connect_failed(self.conn, reason)


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
        idle_timeout: float,
        on_send_failed: Callable[[str, int, str], None] | None = None,
        refuse: Callable[[bytes, Source, FramingError], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.flows = flows
        self.receive = receive
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.on_send_failed = on_send_failed
        self.refuse = refuse
        self._connecting: dict[tuple[str, int], StreamConnection] = {}

    def listen(self, host: str, port: int):
        return self.reactor.listenTCP(port, _ServerFactory(self), interface=host)

    def send(self, data: bytes, host: str, port: int, flow_id: int | None) -> None:
        """Send on the given flow if open, else on any flow to host:port, else connect."""
        flow = self.flows.get(flow_id) or self.flows.find(self.transport_name, host, port)
        if flow is not None:
            flow.send(data)
            return
        conn = self._connecting.get((host, port))
        if conn is None:
            conn = StreamConnection(self, outbound=True)
            self._connecting[(host, port)] = conn
            self.reactor.connectTCP(host, port, _ClientFactory(self, conn), timeout=10)
        conn.send(data)

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
        for flow in list(self.flows.by_id.values()):
            flow.close()
