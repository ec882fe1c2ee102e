"""The sockets of a service with several workers, opened once by the supervisor.

Every public listener (``listen.udp``, ``tcp``, ``tls``, ``ws``, ``wss``) becomes a
``SO_REUSEPORT`` group of one socket per worker, bound in worker order. The kernel spreads
datagrams and connections over a group by a hash of the source and destination
addresses, so a client's retransmissions reach the same socket every time -- the worker
holding its transaction. The supervisor keeps every socket open for the life of the
service and hands worker *i* the same socket again when it restarts it: the group never
changes size, so the hash never moves the other workers' clients, and what arrives for a
dead worker waits in its socket's queue for the new one.

Each worker also gets a UDP socket and a TCP listener of its own, on one port, its
*backend address*: what it writes in the Via, the backend-side Record-Route and the Path of
what it sends to the backends, so that their replies, in-dialog requests and calls to a
browser come back to the worker that holds the transaction or the connection
(``proxy.worker_ports``: the first of consecutive ports, or 0 for ports the kernel picks
when the service starts). The TCP listener is for a backend over TCP, which sends an
in-dialog request or a call by Path on a connection of its own: at the public port the
group would hand that connection to any worker. With a TLS listener, each worker has a
TLS listener of its own too, for a backend over TLS, on the port ``count`` above its UDP
port (the next ``count`` consecutive ports), or one the kernel picks.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from sipgw.config import Config
from sipgw.config.kinds import Address
from sipgw.proxy.transport.listen import BACKLOG

STREAM_KINDS = ("tcp", "tls", "ws", "wss")
BACKEND_TCP = "backend_tcp"  # the kind of a worker's own TCP listener
BACKEND_TLS = "backend_tls"  # the kind of a worker's own TLS listener (with listen.tls)
PORT_TRIES = 50  # kernel-picked UDP ports tried for one whose TCP twin is free too
RECEIVE_BUFFER = 4 * 1024 * 1024  # as transport/udp.py, set before any datagram arrives


class SocketError(Exception):
    """A listener could not be opened; the message names it."""


@dataclass(frozen=True, slots=True)
class Inherited:
    """One socket a worker gets: what it is for, where it is bound, its descriptor."""

    kind: str  # "udp", "tcp", "tls", "ws", "wss"; "backend", "backend_tcp", "backend_tls":
    # the worker's own
    host: str
    port: int
    fd: int


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _open(kind: str, host: str, port: int, *, reuse_port: bool) -> socket.socket:
    stream = kind in STREAM_KINDS or kind in (BACKEND_TCP, BACKEND_TLS)
    sock = socket.socket(_family(host), socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if stream:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                pass  # the kernel's default: smaller, never fatal
        sock.bind((host, port))
        if stream:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise SocketError(f"cannot listen on {kind}:{Address(host, port)}: {e.strerror}") from e
    return sock


def backend_host(config: Config) -> str:
    """Where the workers' own sockets are bound: the first UDP listener's address."""
    for kind in ("udp", *STREAM_KINDS):
        addresses = getattr(config.listen, kind)
        if addresses:
            return addresses[0].host
    return "0.0.0.0"


@dataclass(frozen=True, slots=True)
class OwnSockets:
    """A process's own sockets toward its backends (a worker's, or a single process's)."""

    backend: Inherited  # UDP
    backend_stream: Inherited | None  # TCP, on the same port
    backend_tls: Inherited | None  # with listen.tls only
    peers: tuple[tuple[str, int], ...]  # every worker's own addresses, ours included


def own_sockets(config: Config) -> OwnSockets:
    """A single process's own sockets toward its backends, as a worker has: under a storm
    of datagrams on the public port its kernel queue overflows, and the backends' answers
    must not be lost with it. The descriptors are the caller's to adopt (and close)."""
    sockets = SocketSet(config, 1, public=False)
    udp, tcp, *tls = sockets.for_worker(0)
    own = OwnSockets(udp, tcp, tls[0] if tls else None, tuple(sockets.peer_addresses))
    sockets.release()
    return own


class SocketSet:
    """Every socket of the service: ``for_worker(i)`` is what worker ``i`` inherits.
    ``public`` False: the workers' own sockets only."""

    def __init__(self, config: Config, count: int, *, public: bool = True) -> None:
        self.count = count
        self._sockets: list[socket.socket] = []
        self._public: list[list[Inherited]] = [[] for _ in range(count)]
        self._backend: list[Inherited] = []
        self._backend_tcp: list[Inherited] = []
        self._backend_tls: list[Inherited] = []
        try:
            for kind in ("udp", *STREAM_KINDS) if public else ():
                for addr in getattr(config.listen, kind):
                    self._group(kind, addr.host, addr.port)
            host = backend_host(config)
            base = config.proxy.worker_ports
            for index in range(count):
                udp, tcp = self._own_pair(host, base + index if base else 0)
                port = udp.getsockname()[1]
                self._backend.append(Inherited("backend", host, port, udp.fileno()))
                self._backend_tcp.append(Inherited(BACKEND_TCP, host, port, tcp.fileno()))
            if config.listen.tls:
                for index in range(count):
                    tls = self._keep(_open(BACKEND_TLS, host, base + count + index if base
                                           else 0, reuse_port=False))
                    self._backend_tls.append(Inherited(BACKEND_TLS, host,
                                                       tls.getsockname()[1], tls.fileno()))
        except BaseException:
            self.close()
            raise

    def _own_pair(self, host: str, port: int) -> tuple[socket.socket, socket.socket]:
        """A worker's own UDP socket and TCP listener on one port: ``port``, or (0) one the
        kernel picks for UDP whose TCP twin is free too."""
        for _ in range(PORT_TRIES if port == 0 else 1):
            udp = _open("udp", host, port, reuse_port=False)
            try:
                tcp = _open(BACKEND_TCP, host, udp.getsockname()[1], reuse_port=False)
            except SocketError:
                udp.close()
                if port:
                    raise
                continue
            return self._keep(udp), self._keep(tcp)
        raise SocketError(f"no port on {host} free for both UDP and TCP after {PORT_TRIES} tries")

    def _keep(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def _group(self, kind: str, host: str, port: int) -> None:
        for index in range(self.count):
            # Port 0: the kernel picks one for the first socket; the others join it there.
            sock = self._keep(_open(kind, host, port, reuse_port=True))
            port = sock.getsockname()[1]
            self._public[index].append(Inherited(kind, host, port, sock.fileno()))

    def for_worker(self, index: int) -> list[Inherited]:
        return [*self._public[index], self._backend[index], self._backend_tcp[index],
                *self._backend_tls[index:index + 1]]

    @property
    def backend_addresses(self) -> list[Inherited]:
        """Every worker's own UDP socket, in worker order."""
        return list(self._backend)

    def stop_accepting(self) -> None:
        """Close the supervisor's copies of the stream listeners (SIGTERM): once the
        draining workers close theirs too, a connection attempt is refused rather than
        queued for nobody, and nginx tries another node at once."""
        streams = [s for s in self._sockets if s.type == socket.SOCK_STREAM]
        for sock in streams:
            sock.close()
        self._sockets = [s for s in self._sockets if s.type != socket.SOCK_STREAM]

    @property
    def backend_tls_addresses(self) -> list[Inherited]:
        """Every worker's own TLS listener, in worker order; none without listen.tls."""
        return list(self._backend_tls)

    @property
    def peer_addresses(self) -> list[tuple[str, int]]:
        """Every worker's own addresses, UDP (and TCP, on the same port) and TLS: each
        worker recognises all of them as us."""
        return [(s.host, s.port) for s in (*self._backend, *self._backend_tls)]

    def release(self) -> None:
        """Let go of every socket without closing it: its descriptor is someone else's."""
        for sock in self._sockets:
            sock.detach()
        self._sockets = []

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []
