"""Who we are on the wire: the addresses we write in Via and Record-Route, and recognise.

RFC 3261 §16.6 step 8 (our Via brings the reply back), §16.3 step 4 (loop detection from
our branch), §16.4 (a Route or Request-URI naming us is ours to consume).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sipgw.sip.hostport import join_hostport, split_hostport
from sipgw.sip.message import Request

BRANCH_PREFIX = "z9hG4bKsg"  # RFC 3261 magic cookie + our mark


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    transport: str
    host: str  # the address written in headers (advertised), never 0.0.0.0
    port: int


@dataclass(slots=True, kw_only=True)
class Identity:
    listeners: list[Listener]
    aliases: set[str] = field(default_factory=set)  # extra host names meaning "us"
    # A worker's own UDP address (``sipgw.proxy.workers``): what it writes in what it
    # sends to the backends, so that what they send back reaches this worker. None in a
    # single process: the public listeners face the backends too.
    backend: Listener | None = None
    backend_tcp: Listener | None = None  # the same, for backends over TCP
    backend_tls: Listener | None = None  # and over TLS (a port of its own)
    peers: tuple[tuple[str, int], ...] = ()  # every worker's own address, all of them us
    _hostports: set[tuple[str, int]] = field(default_factory=set)
    _ports: set[int] = field(default_factory=set)
    _hosts: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.refresh()

    def configure(self, aliases: set[str]) -> None:
        """proxy.aliases (and our own addresses when listening on a wildcard), on reload."""
        self.aliases = aliases
        self.refresh()

    def refresh(self) -> None:
        self._hostports = {(lst.host.lower(), lst.port) for lst in self.listeners}
        self._ports = {lst.port for lst in self.listeners}
        self._hosts = {lst.host.lower() for lst in self.listeners}
        self._hostports.update((host.lower(), port) for host, port in self.peers)
        for own in (self.backend, self.backend_tcp, self.backend_tls):
            if own is not None:
                self._hostports.add((own.host.lower(), own.port))
        for alias in self.aliases:
            host, alias_port = split_hostport(alias.lower())
            if alias_port is None:
                self._hosts.add(host)
            else:
                self._hostports.add((host, alias_port))

    def listener(self, transport: str) -> Listener:
        """The listener whose address we advertise for messages sent over ``transport``."""
        for lst in self.listeners:
            if lst.transport == transport:
                return lst
        # A transport we do not listen on (outbound TCP without a TCP listener): use the
        # first address; the peer replies on the same connection anyway.
        first = self.listeners[0]
        return Listener(transport=transport, host=first.host, port=first.port)

    def facing(self, transport: str, backend: bool) -> Listener:
        """The listener we write toward a peer: a worker's own address toward a backend
        (UDP, TCP or TLS), else the public listener of the transport."""
        if backend and self.backend is not None:
            own = {"udp": self.backend, "tcp": self.backend_tcp,
                   "tls": self.backend_tls}.get(transport)
            if own is not None:
                return own
        return self.listener(transport)

    def is_us(self, host: str, port: int | None, transport: str | None = None) -> bool:
        """Does host[:port] name this proxy? A missing port means the default 5060.

        A host alias (an address of ours) counts only with a port we listen on: a backend
        on 127.0.0.1:5080 is not us just because we listen on 0.0.0.0:5060.
        """
        h = host.lower()
        p = port if port is not None else (5061 if transport == "tls" else 5060)
        if (h, p) in self._hostports:
            return True
        return h in self._hosts and p in self._ports

    def is_our_host(self, host: str) -> bool:
        return host.lower() in self._hosts

    def via(self, transport: str, branch: str, *, backend: bool = False) -> str:
        lst = self.facing(transport, backend)
        return f"SIP/2.0/{transport.upper()} {join_hostport(lst.host, lst.port)};branch={branch}"

    def record_route(self, transport: str, params: str = "", *, backend: bool = False) -> str:
        """Our Record-Route for messages sent over ``transport``; ``params`` (such as
        ``;sg=MAC``, ``sipgw.proxy.signing``) follow ``;lr``."""
        return _record_route(self.facing(transport, backend), params)

    def record_route_pair(self, inbound: str, outbound: str, params: str = "", *,
                          from_backend: bool = False, to_backend: bool = False) -> list[str]:
        """One Record-Route, or two with ``r2=on`` when the two sides face different
        addresses of ours: another transport, or a worker's own address on the backend side.

        The first value faces the next hop (downstream uses it first), the second faces
        the previous hop (upstream's route set is the list reversed).
        """
        toward_next = self.facing(outbound, to_backend)
        toward_previous = self.facing(inbound, from_backend)
        if toward_next == toward_previous:
            return [_record_route(toward_next, params)]
        params = ";r2=on" + params
        return [_record_route(toward_next, params), _record_route(toward_previous, params)]


def _record_route(lst: Listener, params: str) -> str:
    # RFC 7118 §5.2: "ws" names both WS and WSS in URIs (with a sips: scheme for WSS
    # elsewhere; Kamailio writes transport=ws for both and browsers expect it).
    name = _URI_TRANSPORT.get(lst.transport, lst.transport)
    tparam = "" if lst.transport == "udp" else f";transport={name}"
    return f"<sip:{join_hostport(lst.host, lst.port)}{tparam};lr{params}>"


_URI_TRANSPORT = {"wss": "ws"}


def loop_hash(request: Request) -> str:
    """RFC 3261 §16.6 step 8: the part of our branch that detects loops (§16.3 step 4).

    It covers what a spiral changes (Request-URI, Route) and what identifies the request,
    so the same request coming back unchanged to us is a loop, a spiral is not.
    """
    found: dict[str, list[str]] = {}
    for f in request.fields:  # one pass, not one per header name
        if f.key in _LOOP_KEYS:
            found.setdefault(f.key, []).append(f.value)
    parts = [request.uri]
    for name in _LOOP_KEYS:
        for v in found.get(name, ()):
            parts.append(v)
    return hashlib.blake2s("\x00".join(parts).encode("latin-1"), digest_size=6).hexdigest()


# What identifies a request and what a spiral changes (§16.3 step 4), in a fixed order.
_LOOP_KEYS = ("call-id", "from", "to", "cseq", "route", "proxy-require")


def make_branch(loop: str, txid: str) -> str:
    return f"{BRANCH_PREFIX}{loop}.{txid}"


def branch_loop_part(branch: str) -> str | None:
    if not branch.startswith(BRANCH_PREFIX):
        return None
    rest = branch[len(BRANCH_PREFIX) :]
    dot = rest.find(".")
    return rest[:dot] if dot > 0 else None
