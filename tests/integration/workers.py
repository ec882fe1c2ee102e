"""A sipgw of several workers in a test, and which worker a client's packets reach.

The supervisor binds each public port once per worker as a ``SO_REUSEPORT`` group, and the
kernel picks a group's socket by a hash of the source and destination addresses: a test
cannot choose a client's worker, but it can ask. :meth:`Workers.sources` sends an OPTIONS
to sipgw itself from candidate ``(address, port)`` pairs (UDP datagrams, or a TCP
connection reset when done so that the pair is free again at once) and reads which worker
counted it (``core:rcv_requests`` on each worker's own control socket, ``sipgw.ctl.wN``).
A SIPp then bound to that pair (``ip=``, ``port=``) reaches that worker, every time.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sipgw.rpc.client import Client
from sipgw.tools.loopback import free_port
from sipgw.tools.process import SipgwProcess

WORKERS = 2
# Loopback addresses the sources are taken from (all of 127/8 is the loopback interface).
SOURCE_HOSTS = tuple(f"127.0.0.{n}" for n in range(2, 40))
PROBE_TIMEOUT = 5.0
PROBES = 200  # sources tried at most: the odds that they all go to one worker are nil


@contextlib.contextmanager
def control_directory() -> Iterator[Path]:
    """A short directory for the control sockets: a unix socket path has 107 bytes at
    most, and pytest's tmp_path with a long test name and ``.w1`` can be longer."""
    directory = Path(tempfile.mkdtemp(prefix="sipgw-ctl-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def control_toml(directory: Path) -> str:
    return f'[control]\nsocket = "{directory / "sipgw.ctl"}"\n'


class Workers:
    """The worker side of one running sipgw: ``core.workers`` through the service's
    control socket, each worker's own statistics through its own."""

    def __init__(self, gw: SipgwProcess, control_dir: Path, count: int = WORKERS) -> None:
        self.gw = gw
        self.path = str(control_dir / "sipgw.ctl")
        self.count = count

    def call(self, method: str, params=None, *, worker: int | None = None):
        path = self.path if worker is None else f"{self.path}.w{worker}"
        with Client(path, timeout=10) as client:
            return client.call(method, params)

    def table(self) -> list[dict]:
        """``core.workers``: index, pid, restarts, backend_address, ... per worker."""
        return self.call("core.workers")

    def backend_ports(self) -> dict[int, int]:
        """Each worker's own backend-facing UDP port → its index."""
        return {int(w["backend_address"].rsplit(":", 1)[1]): w["index"] for w in self.table()}

    def statistic(self, worker: int, name: str) -> int:
        return self.call("stats.fetch", [name], worker=worker)[name.replace(":", ".", 1)]

    def received(self) -> list[int]:
        return [self.statistic(i, "core:rcv_requests") for i in range(self.count)]

    def worker_of(self, transport: str, host: str, port: int) -> int:
        """The worker an OPTIONS from ``host:port`` over ``transport`` reaches."""
        before = self.received()
        (_probe_udp if transport == "udp" else _probe_tcp)(self.gw, host, port)
        after = self.received()
        moved = [i for i in range(self.count) if after[i] > before[i]]
        assert len(moved) == 1, f"OPTIONS from {host}:{port} counted by {moved}"
        return moved[0]

    def sources(self, transport: str, per_worker: int,
                hosts: tuple[str, ...] = SOURCE_HOSTS) -> list[list[tuple[str, int]]]:
        """``per_worker`` source ``(address, port)`` pairs for each worker, in worker order:
        what a client bound there sends over ``transport`` reaches that worker."""
        found: list[list[tuple[str, int]]] = [[] for _ in range(self.count)]
        for attempt in range(PROBES):
            if all(len(f) >= per_worker for f in found):
                return found
            host = hosts[attempt % len(hosts)]
            port = free_port(transport)
            index = self.worker_of(transport, host, port)
            if len(found[index]) < per_worker:
                found[index].append((host, port))
        raise AssertionError(f"the kernel gave every probe to the same worker: {found}")


def _options(transport: str, host: str, port: int, gw: SipgwProcess) -> bytes:
    tag = uuid.uuid4().hex
    return (
        f"OPTIONS sip:{gw.address} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {host}:{port};branch=z9hG4bK{tag};rport\r\n"
        f"From: <sip:probe@{host}>;tag={tag[:8]}\r\n"
        f"To: <sip:{gw.address}>\r\n"
        f"Call-ID: probe-{tag}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _probe_udp(gw: SipgwProcess, host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        sock.settimeout(PROBE_TIMEOUT)
        sock.sendto(_options("udp", host, port, gw), gw.hostport)
        answer = sock.recv(65535)
    assert answer.startswith(b"SIP/2.0 200 "), answer


def _probe_tcp(gw: SipgwProcess, host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.settimeout(PROBE_TIMEOUT)
        sock.connect(gw.hostport)
        sock.sendall(_options("tcp", host, port, gw))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65535)
            assert chunk, f"connection closed before the answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"SIP/2.0 200 "), answer
        # A reset, not a close: no TIME_WAIT keeps the pair from the client that follows.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()
