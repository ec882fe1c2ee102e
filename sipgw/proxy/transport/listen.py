"""Opening a stream listener: a socket of our own, or one a worker inherited.

A worker of a multi-process service (``sipgw.proxy.workers``) does not bind: the
supervisor bound and listens, and hands the worker its descriptor (``fd``), which is
adopted here; TLS is then Twisted's own ``TLSMemoryBIOFactory`` around the factory, as
``listenSSL`` does it.
"""

from __future__ import annotations

import os
import socket

from twisted.protocols.tls import TLSMemoryBIOFactory

# Phones re-registering after an outage and a shift's browsers connect all at once;
# Twisted's default backlog (50) would drop their SYNs and cost each a second or more.
BACKLOG = 4096  # the kernel holds it to net.core.somaxconn (4096 on current kernels)


def listen_stream(reactor, host: str, port: int, factory, *, tls=None, fd: int | None = None):
    if fd is None:
        if tls is None:
            return reactor.listenTCP(port, factory, backlog=BACKLOG, interface=host)
        return reactor.listenSSL(port, factory, tls, backlog=BACKLOG, interface=host)
    if tls is not None:
        factory = TLSMemoryBIOFactory(tls, False, factory)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return reactor.adoptStreamPort(fd, family, factory)
    finally:
        os.close(fd)  # the reactor holds its own duplicate
