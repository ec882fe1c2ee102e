"""The sockets a supervisor opens (``sipgw.proxy.workers.sockets``), real ones on loopback."""

from __future__ import annotations

import random
import socket

import pytest

from sipgw.config import parse_config
from sipgw.proxy.workers.sockets import BACKEND_TCP, BACKEND_TLS, SocketError, SocketSet
from sipgw.tools.loopback import LOOPBACK, free_port


def public_ports() -> tuple[int, int]:
    """The listeners' ports: UDP and TCP, and TLS."""
    return free_port("both"), free_port("tcp")


def config(worker_ports: int = 0, *, tls: bool = False, public: tuple[int, int] | None = None):
    port, tls_port = public or public_ports()
    tls_line = f'tls = ["{LOOPBACK}:{tls_port}"]\n' if tls else ""
    return parse_config(f'[listen]\nudp = ["{LOOPBACK}:{port}"]\ntcp = ["{LOOPBACK}:{port}"]\n'
                        f"ws = []\n{tls_line}[proxy]\nworker_ports = {worker_ports}\n"
                        + ('[tls]\ncertificate = "/unread.pem"\n' if tls else "")).config


def own(sockets: SocketSet, index: int) -> dict[str, tuple[str, int]]:
    return {s.kind: (s.host, s.port) for s in sockets.for_worker(index)
            if s.kind.startswith("backend")}


def test_each_worker_has_one_port_of_its_own_for_udp_and_tcp_and_a_backend_can_connect_to_it():
    sockets = SocketSet(config(), 2)
    try:
        ports = []
        for index in range(2):
            mine = own(sockets, index)
            assert mine["backend"] == mine[BACKEND_TCP]
            ports.append(mine["backend"][1])
            # Listening already: a backend's connection waits in the queue for the worker.
            socket.create_connection(mine[BACKEND_TCP], timeout=2).close()
        assert len(set(ports)) == 2
        assert [(a.host, a.port) for a in sockets.backend_addresses] == \
            [(LOOPBACK, p) for p in ports]
    finally:
        sockets.close()


def test_worker_ports_gives_consecutive_ports_for_both_transports_then_tls():
    public = public_ports()
    for _ in range(20):  # base .. base + 3 must be free: another base if not
        # Below the kernel's ephemeral range, where the clients of every other test on a
        # busy machine take ports one after another.
        base = random.randrange(10000, 32000)
        try:
            sockets = SocketSet(config(base, tls=True, public=public), 2)
            break
        except SocketError:
            continue
    else:
        raise AssertionError("no four consecutive free ports on loopback")
    try:
        assert [own(sockets, i)[BACKEND_TCP][1] for i in range(2)] == [base, base + 1]
        assert [own(sockets, i)["backend"][1] for i in range(2)] == [base, base + 1]
        assert [own(sockets, i)[BACKEND_TLS][1] for i in range(2)] == [base + 2, base + 3]
    finally:
        sockets.close()


def test_with_a_tls_listener_each_worker_has_a_tls_listener_of_its_own_known_to_all():
    sockets = SocketSet(config(tls=True), 2)
    try:
        tls = [own(sockets, i)[BACKEND_TLS] for i in range(2)]
        assert len(set(tls)) == 2 and not {p for _, p in tls} & \
            {p for _, p in (own(sockets, i)["backend"] for i in range(2))}
        for address in tls:
            socket.create_connection(address, timeout=2).close()
        assert set(tls) <= set(sockets.peer_addresses)
    finally:
        sockets.close()
    without = SocketSet(config(), 2)
    try:
        assert BACKEND_TLS not in own(without, 0)
    finally:
        without.close()


def test_a_worker_port_taken_over_tcp_stops_the_start_with_a_message_naming_it():
    base = free_port("both")
    with socket.create_server((LOOPBACK, base)):
        with pytest.raises(SocketError, match=rf"{BACKEND_TCP}:{LOOPBACK}:{base}:"):
            SocketSet(config(base), 1)
