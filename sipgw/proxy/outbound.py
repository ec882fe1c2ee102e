"""Where a message the core sends goes out: the one ``send`` of the core.

A WebSocket client cannot be connected to, so its messages go down its flow (or the flow
from its address). UDP leaves from the listener of the destination's address family; TCP
and TLS through their stream transport, which reuses or opens a connection. A name is
resolved once and remembered (bounded). A destination that cannot be reached is reported
to whoever asked (``on_failure``): the relay fails the branches waiting on it, the
dispatcher marks it down.

The core needs ``send`` before the transports exist and the transports need the core's
``receive``, so the transports register here (``attach``) once built: the one
registration ``make_service`` makes after construction, as a flow registers in the
``FlowTable``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from sipgw.proxy.trace import Tap
from sipgw.proxy.transport import Destination, FlowTable, is_ip
from sipgw.proxy.transport.stream import StreamTransport
from sipgw.proxy.transport.udp import UdpListener

log = Logger(namespace="sipgw.service")

FLOW_ONLY = frozenset({"ws", "wss"})
MAX_RESOLVED = 1024

Failure = Callable[[str, int, str], None]


class Outbound:
    def __init__(self, reactor, flows: FlowTable, tap: Tap) -> None:
        self.reactor = reactor
        self.flows = flows
        self.tap = tap
        self.udp: list[UdpListener] = []
        self.streams: dict[str, StreamTransport] = {}  # "tcp", "tls"
        self._failure: list[Failure] = []
        self._resolved: dict[str, str] = {}
        self.backend_udp: UdpListener | None = None
        self.is_backend: Callable[[Destination], bool] | None = None

    def attach(self, *, udp: list[UdpListener], streams: dict[str, StreamTransport],
               on_failure: list[Failure], backend_udp: UdpListener | None = None,
               is_backend: Callable[[Destination], bool] | None = None) -> None:
        """``backend_udp``: a worker's own socket, that what goes to a backend leaves from
        (their answers come back to this worker)."""
        self.udp = list(udp)
        self.streams = dict(streams)
        self._failure = list(on_failure)
        self.backend_udp = backend_udp
        self.is_backend = is_backend

    def send(self, data: bytes, dest: Destination) -> None:
        trace = self.tap.outbound
        if trace is not None:
            trace(data, dest)
        if dest.transport in FLOW_ONLY:
            # A browser cannot be connected to: its flow, or the flow from that address.
            flow = self.flows.get(dest.flow_id) or self.flows.find(dest.transport, dest.host,
                                                                   dest.port)
            if flow is None:
                self.failed(dest.host, dest.port, dest.transport)
            else:
                flow.send(data)
            return
        host = dest.host
        if not is_ip(host):
            ip = self._resolved.get(host)
            if ip is None:
                self._resolve_then_send(data, dest)
                return
            host = ip
        self._send_to(data, dest, host)

    def _send_to(self, data: bytes, dest: Destination, host: str) -> None:
        """``dest`` at ``host``, its address (``dest.host`` may be a name: TLS checks it)."""
        if dest.transport == "udp":
            lst = self._udp_for(host)
            if self.backend_udp is not None and self.is_backend is not None \
                    and self.is_backend(dest):
                lst = self.backend_udp
            if lst is None or not lst.send(data, host, dest.port):
                self.failed(host, dest.port, "udp")
            return
        stream = self.streams.get(dest.transport)
        if stream is not None:
            stream.send(data, host, dest.port, dest.flow_id, name=dest.host)
        else:
            log.warn("cannot send to {t}:{h}:{p}: transport not available",
                     t=dest.transport, h=host, p=dest.port)
            self.failed(host, dest.port, dest.transport)

    def _udp_for(self, host: str) -> UdpListener | None:
        v6 = ":" in host
        for lst in self.udp:
            if (":" in lst.host) == v6:
                return lst
        return self.udp[0] if self.udp else None

    def _resolve_then_send(self, data: bytes, dest: Destination) -> None:
        def ok(ip: str) -> None:
            if len(self._resolved) > MAX_RESOLVED:
                self._resolved.clear()
            self._resolved[dest.host] = ip
            self._send_to(data, dest, ip)

        def failed(f) -> None:
            log.warn("cannot resolve {h}: {err}", h=dest.host, err=f.getErrorMessage())
            self.failed(dest.host, dest.port, dest.transport)

        self.reactor.resolve(dest.host).addCallbacks(ok, failed)

    def failed(self, host: str, port: int, transport: str) -> None:
        for tell in self._failure:
            tell(host, port, transport)
