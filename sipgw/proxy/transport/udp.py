"""SIP over UDP: one protocol per listening socket, a thin adapter over the proxy."""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Callable

from twisted.internet import udp
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipgw.proxy.transport import ReceiveCallback, Source, transport_address

log = Logger(namespace="sipgw.udp")

# The kernel's default (about 200 kB, a few hundred datagrams) overflows in the bursts a
# busy link brings while Python is busy with earlier messages; every datagram lost there
# costs a retransmission 500 ms later, and at high load those feed on each other. Kamailio
# raises its UDP buffers at start for the same reason. The kernel caps the request at
# net.core.rmem_max.
RECEIVE_BUFFER = 4 * 1024 * 1024


def _grow_receive_buffer(sock: socket.socket) -> int:
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:
        pass  # keep the default: smaller, never fatal
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


class UdpListener(DatagramProtocol):
    """Feeds every datagram to the proxy; sends what the proxy asks for."""

    transport: udp.Port  # for mypy: the protocol says "IUDPTransport | None" until started

    def __init__(self, host: str, port: int, receive: ReceiveCallback) -> None:
        self.host = host
        self.port = port
        self._receive = receive
        self._sources: dict[tuple[str, int], Source] = {}

    def startProtocol(self) -> None:
        bound = self.transport.getHost()
        self.port = bound.port
        rcvbuf = _grow_receive_buffer(self.transport.socket)
        log.info("listening on {a} (receive buffer {kb} kB)",
                 a=transport_address("udp", self.host, self.port), kb=rcvbuf // 1024)

    def datagramReceived(self, data: bytes, addr: tuple) -> None:
        key = (addr[0], addr[1])
        src = self._sources.get(key)
        if src is None:
            src = Source(
                transport="udp",
                host=addr[0],
                port=addr[1],
                local_host=self.host,
                local_port=self.port,
            )
            # Sources are immutable and a busy peer sends many datagrams; keep a bounded
            # cache so a scan from many ports cannot grow it without limit.
            if len(self._sources) > 4096:
                self._sources.clear()
            self._sources[key] = src
        self._receive(data, src)

    def send(self, data: bytes, host: str, port: int) -> bool:
        # Straight to the socket: Twisted's Port.write re-validates the address with a
        # regex on every datagram, which is measurable at thousands of messages a second.
        # The proxy only ever passes IP literals here.
        sock = self.transport.socket if self.transport is not None else None
        if sock is None:
            return False  # stopped: a retransmission timer firing while the service stops
        try:
            sock.sendto(data, (host, port))
        except BlockingIOError:
            return True  # a full socket buffer loses the datagram, as UDP may
        except OSError as e:  # e.g. EHOSTUNREACH, ENETUNREACH, EMSGSIZE, ECONNREFUSED
            log.warn("udp send to {host}:{port} failed: {err}", host=host, port=port, err=e)
            return False
        return True


# Linux: the kernel stamps each datagram as it arrives (CLOCK_REALTIME, a struct timespec)
# and hands the stamp over as ancillary data of recvmsg.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)


class TimestampingPort(udp.Port):
    """Twisted's UDP port, telling ``on_delay`` how long datagrams waited in the kernel.

    Only the first datagram of each wake-up is read with ``recvmsg`` and its stamp: it is
    the oldest in the queue, so its wait is the queue's; the others are read with
    ``recvfrom`` as Twisted does (a stamp costs about 0.5 µs more per datagram, and at high
    load one wake-up reads hundreds of them). Everything else is Twisted's ``doRead``: the
    same bound on bytes per wake-up, the same errors ignored or reported as refused.
    """

    def __init__(self, port: int, proto: DatagramProtocol, interface: str, maxPacketSize: int,
                 reactor, on_delay: Callable[[float], None]) -> None:
        super().__init__(port, proto, interface=interface, maxPacketSize=maxPacketSize,
                         reactor=reactor)
        self.on_delay = on_delay

    def _bindSocket(self) -> None:
        super()._bindSocket()
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            log.warn("udp {a}: no kernel receive timestamps; no queueing delay measured",
                     a=transport_address("udp", self.interface, self.getHost().port))

    def doRead(self) -> None:
        read = 0
        first = True
        sock = self.socket
        while read < self.maxThroughput:
            try:
                if first:
                    data, ancillary, _, addr = sock.recvmsg(self.maxPacketSize, _ANCILLARY_SIZE)
                else:
                    data, addr = sock.recvfrom(self.maxPacketSize)
            except OSError as se:
                no = se.args[0]
                if no in udp._sockErrReadIgnore:
                    return
                if no in udp._sockErrReadRefuse:
                    if self._connectedAddr:
                        self.protocol.connectionRefused()
                    return
                raise
            if first:
                first = False
                for level, kind, stamp in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = _TIMESPEC.unpack(stamp)
                        self.on_delay(time.time() - seconds - nanoseconds * 1e-9)
            read += len(data)
            if self.addressFamily == socket.AF_INET6:
                addr = addr[:2]  # without flow info and scope id, as Twisted gives it
            try:
                self.protocol.datagramReceived(data, addr)
            except BaseException:
                log.failure("udp datagram handler failed")


def listen_udp(reactor, listener: UdpListener, on_delay: Callable[[float], None],
               fd: int | None = None):
    """Open ``listener``'s socket on ``reactor``, or adopt ``fd`` (a worker's inherited
    socket, bound by the supervisor): a ``TimestampingPort`` on Linux with a real
    reactor, else Twisted's own port (no queueing delay is measured there)."""
    if sys.platform.startswith("linux") and isinstance(reactor, PosixReactorBase):
        port = TimestampingPort(listener.port, listener, listener.host, 65535, reactor,
                                on_delay)
        if fd is not None:
            port._preexistingSocket = _adopted(fd, listener.host)  # type: ignore[assignment]
        port.startListening()
        return port
    if fd is not None:
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        try:
            return reactor.adoptDatagramPort(fd, family, listener, maxPacketSize=65535)
        finally:
            os.close(fd)
    return reactor.listenUDP(listener.port, listener, interface=listener.host,
                             maxPacketSize=65535)


def _adopted(fd: int, host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.fromfd(fd, family, socket.SOCK_DGRAM)  # a duplicate
    finally:
        os.close(fd)
    sock.setblocking(False)
    return sock
