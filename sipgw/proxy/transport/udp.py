"""SIP over UDP: one protocol per listening socket, a thin adapter over the proxy."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipgw.proxy.transport import ReceiveCallback, Source, transport_address

if TYPE_CHECKING:
    from twisted.internet import udp

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
        try:
            self.transport.socket.sendto(data, (host, port))
        except BlockingIOError:
            return True  # a full socket buffer loses the datagram, as UDP may
        except OSError as e:  # e.g. EHOSTUNREACH, ENETUNREACH, EMSGSIZE, ECONNREFUSED
            log.warn("udp send to {host}:{port} failed: {err}", host=host, port=port, err=e)
            return False
        return True
