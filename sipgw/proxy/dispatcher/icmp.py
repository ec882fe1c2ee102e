"""Notice a dead UDP backend from the ICMP "port unreachable" its host sends back.

The listener's socket is not connected, and Linux reports ICMP errors only on connected
UDP sockets (udp(7)); turning on IP_RECVERR on the listener would make the reactor see an
error event and close it. So each probe round also sends an RFC 5626 keepalive (CRLF CRLF,
which SIP receivers ignore) to each UDP destination from a small connected socket of its
own, and reads that socket's pending error a moment later: ECONNREFUSED (or host/network
unreachable) means nobody listens there any more, and the dispatcher takes the destination
down at once instead of after ``ping_timeout``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from twisted.logger import Logger

from sipgw.proxy.transport import Destination

log = Logger(namespace="sipgw.dispatcher")

KEEPALIVE = b"\r\n\r\n"
UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})
# Loopback answers in microseconds, a LAN in well under this.
CHECK_AFTER = 0.1


class UnreachableDetector:
    def __init__(self, clock, on_unreachable: Callable[[Destination], None], *,
                 check_after: float = CHECK_AFTER) -> None:
        self.clock = clock
        self.on_unreachable = on_unreachable
        self.check_after = check_after
        self._sockets: dict[tuple[str, int], socket.socket] = {}

    def ping(self, dest: Destination) -> None:
        if dest.transport != "udp":
            return  # TCP reports a refused connection by itself
        key = (dest.host, dest.port)
        sock = self._sockets.get(key)
        try:
            if sock is None:
                family = socket.AF_INET6 if ":" in dest.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sockets[key] = sock
                sock.connect(key)
            sock.send(KEEPALIVE)
        except OSError as e:
            self._failed(dest, e.errno)
            return
        self.clock.callLater(self.check_after, self._check, dest, sock)

    def _check(self, dest: Destination, sock: socket.socket) -> None:
        if self._sockets.get((dest.host, dest.port)) is not sock:
            return  # closed meanwhile
        code: int | None
        try:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            while True:  # a pong, if the peer answers keepalives: read and drop
                sock.recv(2048)
        except BlockingIOError:
            pass
        except OSError as e:
            code = e.errno
        self._failed(dest, code)

    def _failed(self, dest: Destination, code: int | None) -> None:
        if code in UNREACHABLE:
            log.debug("{h}:{p} unreachable: {err}", h=dest.host, p=dest.port,
                      err=errno.errorcode.get(code or 0, code))
            self.on_unreachable(dest)

    def forget(self, keep: set[tuple[str, int]]) -> None:
        """Close the sockets of destinations no longer listed."""
        for key in [k for k in self._sockets if k not in keep]:
            self._sockets.pop(key).close()

    def close(self) -> None:
        self.forget(set())
