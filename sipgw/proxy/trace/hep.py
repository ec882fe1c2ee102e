"""HEP v3 export to a Homer collector (``trace.hep``), from the proxy itself.

The exporter is a permanent subscriber of the live trace: every SIP message in and out is
encoded (``sipgw.wire.hep``) and sent in one UDP datagram to the collector. A full socket
buffer or an unreachable collector loses captures, never SIP: the send cannot block and
its errors are counted (``trace:hep_send_errors``), not raised.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipgw.proxy.stats import StatDef, Stats
from sipgw.proxy.trace import Filters, Subscriber, Tracer
from sipgw.wire.hep import encode

if TYPE_CHECKING:
    from twisted.internet import udp

log = Logger(namespace="sipgw.hep")

HEP_STATS = (
    StatDef(group="trace", name="hep_sent", help="messages sent to the HEP collector"),
    StatDef(group="trace", name="hep_send_errors",
            help="messages the HEP collector could not be sent (lost captures)"),
)


class HepExporter(DatagramProtocol):
    transport: udp.Port | None  # for mypy: the protocol says "IUDPTransport | None"
    def __init__(self, collector: tuple[str, int], stats: Stats, *, agent_id: int = 0,
                 password: str = "") -> None:
        self.collector = collector
        self.stats = stats
        self.agent_id = agent_id
        self.password = password
        self.subscription: Subscriber | None = None
        stats.declare(HEP_STATS)

    def attach(self, tracer: Tracer) -> None:
        self.subscription = tracer.subscribe(Filters(), True, self.emit)

    def detach(self, tracer: Tracer) -> None:
        if self.subscription is not None:
            tracer.unsubscribe(self.subscription)
            self.subscription = None

    def emit(self, method: str, rec: dict) -> None:
        try:
            packet = encode(time=rec["time"], transport=rec["transport"], src=rec["src"],
                            dst=rec["dst"], payload=rec["raw"].encode("utf-8"),
                            agent_id=self.agent_id, password=self.password,
                            correlation=rec.get("call_id"))
            self.send(packet)
        except (OSError, ValueError):
            self.stats.inc("trace:hep_send_errors")
            return
        self.stats.inc("trace:hep_sent")

    def send(self, packet: bytes) -> None:
        if self.transport is None:
            raise OSError("HEP socket not open")
        self.transport.socket.sendto(packet, self.collector)


def resolve(host: str, port: int) -> tuple[str, int]:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return str(info[0][4][0]), port


def start_hep(service, tracer: Tracer) -> HepExporter | None:
    """``trace.hep`` on: a UDP socket and a permanent trace subscriber."""
    trace_config = getattr(service.loaded.config, "trace", None)
    address = getattr(trace_config, "hep", None)
    if trace_config is None or address is None:
        return None
    try:
        collector = resolve(address.host, address.port)
    except OSError as e:
        log.error("trace.hep {a}: cannot resolve: {err}; no HEP export", a=str(address), err=e)
        return None
    exporter = HepExporter(collector, service.stats, agent_id=trace_config.hep_agent_id,
                           password=trace_config.hep_password)
    family_any = "::" if ":" in collector[0] else "0.0.0.0"
    service.reactor.listenUDP(0, exporter, interface=family_any)
    exporter.attach(tracer)
    log.info("HEP v3 export to {h}:{p} (agent id {i})", h=collector[0], p=collector[1],
             i=trace_config.hep_agent_id)
    return exporter
