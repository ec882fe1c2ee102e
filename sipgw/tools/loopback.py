"""Free ports on 127.0.0.1, for the peers that tests and benchmarks start on loopback.

SIP listens on UDP and TCP on the same port, so a port is asked for by kind: "udp", "tcp"
or "both" at once. A port is free when ``free_port`` returns it; nothing holds it until the
process it is meant for binds it, so a port is never handed out twice by one process (two
quick calls would otherwise get the same one back from the kernel).
"""

from __future__ import annotations

import contextlib
import socket

LOOPBACK = "127.0.0.1"

_SOCKET_KINDS: dict[str, tuple[socket.SocketKind, ...]] = {
    "udp": (socket.SOCK_DGRAM,), "tcp": (socket.SOCK_STREAM,)}
_SOCKET_KINDS["both"] = _SOCKET_KINDS["udp"] + _SOCKET_KINDS["tcp"]
_handed_out: set[int] = set()


class NoFreePort(OSError):
    """The kernel gave no port that is free for every kind asked for."""


def free_port(kind: str = "both") -> int:
    """A port on 127.0.0.1 that is free for ``kind``: "udp", "tcp" or "both" at once."""
    kinds = _SOCKET_KINDS[kind]
    for _ in range(100):
        sockets = [socket.socket(socket.AF_INET, k) for k in kinds]
        try:
            sockets[0].bind((LOOPBACK, 0))
            port = sockets[0].getsockname()[1]
            for other in sockets[1:]:
                other.bind((LOOPBACK, port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise NoFreePort(f"no free {kind} port on {LOOPBACK} after 100 tries")


def free_ports(count: int, host: str = LOOPBACK) -> int:
    """The first of ``count`` consecutive ports on ``host`` free for UDP and TCP (a sipgw's
    workers' own ports, ``proxy.worker_ports``; a node's listener on another loopback
    address)."""
    for _ in range(100):
        base = free_port()
        ports = range(base, base + count)
        if (all(p == base or p not in _handed_out for p in ports)
                and all(_bindable(host, p) for p in ports)):
            _handed_out.update(ports)
            return base
    raise NoFreePort(f"no {count} consecutive free ports on {host} after 100 tries")


def _bindable(host: str, port: int) -> bool:
    """Can UDP and TCP both bind ``host:port`` now?"""
    with contextlib.ExitStack() as held:
        try:
            for kind in _SOCKET_KINDS["both"]:
                held.enter_context(socket.socket(socket.AF_INET, kind)).bind((host, port))
        except OSError:
            return False
    return True
