"""SIP over UDP: one protocol per listening socket, a thin adapter over the proxy."""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipgw.proxy.transport import ReceiveCallback, Source

log = Logger(namespace="sipgw.udp")


class UdpListener(DatagramProtocol):
    """Feeds every datagram to the proxy; sends what the proxy asks for."""

    def __init__(self, host: str, port: int, receive: ReceiveCallback) -> None:
        self.host = host
        self.port = port
        self._receive = receive
        self._sources: dict[tuple[str, int], Source] = {}

    def startProtocol(self) -> None:
        bound = self.transport.getHost()
        self.port = bound.port
        log.info("listening on udp:{host}:{port}", host=self.host, port=self.port)

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
