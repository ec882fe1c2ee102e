"""Transports: where a message came from, where one goes, and the flows that carry them.

Every listener hands the proxy ``(bytes, Source)``; the proxy hands back ``(bytes,
Destination)``. UDP has no connections, so its "flow" is the listening socket plus the peer
address. TCP (and later TLS and WebSocket) connections are flows with an id, kept in the
``FlowTable`` so replies and in-dialog requests can go down the connection they belong to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sipgw.sip.hostport import join_hostport
from sipgw.sip.uri import SipURI

RELIABLE = frozenset({"tcp", "tls", "ws", "wss"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Where a message came from."""

    transport: str  # "udp", "tcp", "tls", "ws", "wss"
    host: str
    port: int
    local_host: str
    local_port: int
    flow_id: int | None = None  # None for UDP

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE

    def as_destination(self) -> Destination:
        return Destination(
            transport=self.transport, host=self.host, port=self.port, flow_id=self.flow_id
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """Where a message goes. A flow id, when given and still open, wins over the address."""

    transport: str
    host: str
    port: int
    flow_id: int | None = None

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE


def transport_address(transport: str, host: str, port: int) -> str:
    """``udp:10.0.0.5:5060``, ``tcp:[::1]:5060``: a listener or peer as Kamailio writes it
    (an IPv6 address in brackets, else its colons run into the port's)."""
    return f"{transport}:{join_hostport(host, port)}"


class Flow(Protocol):
    """What the flow table needs from a connection."""

    flow_id: int
    transport_name: str

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class FlowTable:
    """Open connections by id and by remote address (for reuse, RFC 3261 §18.1.1).

    Worker ``index`` of ``count`` numbers its connections ``index + 1``, then every
    ``count``-th: ids stay unique in the service, so ``ws.dump`` lists each connection
    once and ``ws.close ID`` closes one connection, in the worker that holds it.
    """

    def __init__(self, index: int = 0, count: int = 1) -> None:
        self._next = index + 1
        self._step = count
        self.by_id: dict[int, Flow] = {}
        self.by_addr: dict[tuple[str, str, int], int] = {}

    def new_id(self) -> int:
        fid = self._next
        self._next += self._step
        return fid

    def add(self, flow: Flow, transport: str, host: str, port: int) -> None:
        self.by_id[flow.flow_id] = flow
        self.by_addr[(transport, host, port)] = flow.flow_id

    def remove(self, flow: Flow, transport: str, host: str, port: int) -> None:
        self.by_id.pop(flow.flow_id, None)
        if self.by_addr.get((transport, host, port)) == flow.flow_id:
            del self.by_addr[(transport, host, port)]

    def get(self, flow_id: int | None) -> Flow | None:
        return None if flow_id is None else self.by_id.get(flow_id)

    def find(self, transport: str, host: str, port: int) -> Flow | None:
        fid = self.by_addr.get((transport, host, port))
        return None if fid is None else self.by_id.get(fid)

    def __len__(self) -> int:
        return len(self.by_id)


_ADDRESS_KIND: dict[str, int] = {}  # host → 0 name, 1 IP, 2 IP we must never send to
_KIND_CACHE_MAX = 4096


def _kind(host: str) -> int:
    # Every message asks this about its destination; ipaddress is slow, so remember.
    kind = _ADDRESS_KIND.get(host)
    if kind is not None:
        return kind
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        kind = 0
    else:
        bad = ip.is_multicast or ip.is_unspecified or ip == _BROADCAST
        kind = 2 if bad else 1
    if len(_ADDRESS_KIND) >= _KIND_CACHE_MAX:
        _ADDRESS_KIND.clear()
    _ADDRESS_KIND[host] = kind
    return kind


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def in_networks(host: str, networks) -> bool:
    """Is the address ``host`` in one of ``networks`` (ip_network objects)? A name is not."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def is_ip(host: str) -> bool:
    return _kind(host) != 0


def route_source(toward: str) -> str | None:
    """The local address the kernel would send from to reach the IP ``toward`` (no packet
    is sent: a UDP socket's connect only looks the route up); None when there is no route."""
    family = socket.AF_INET6 if ":" in toward else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((toward, 9))
            return str(s.getsockname()[0])
        except OSError:
            return None


def forbidden_target(host: str) -> bool:
    """Addresses a proxy must never send to (RFC 4475 §3.3.10: broadcast Via)."""
    return _kind(host) == 2


ReceiveCallback = Callable[[bytes, Source], None]


def uri_destination(uri: SipURI) -> Destination:
    """RFC 3263 without DNS SRV: transport param, else UDP (TLS for sips); port default."""
    transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
    if transport == "sctp":
        transport = "udp"
    host = (uri.param("maddr") or uri.host).strip("[]")
    port = uri.port or (5061 if transport == "tls" else 5060)
    return Destination(transport=transport, host=host, port=port)
