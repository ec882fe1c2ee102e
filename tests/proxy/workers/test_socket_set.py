"""The sockets a supervisor opens (``sipgw.proxy.workers.sockets``), real ones on loopback."""

from __future__ import annotations

import socket

import pytest

from sipgw.config import parse_config
from sipgw.proxy.workers.sockets import BACKEND_TCP, SocketError, SocketSet
from sipgw.tools.loopback import LOOPBACK, free_port


def config(worker_ports: int = 0):
    port = free_port("both")
    return parse_config(f'[listen]\nudp = ["{LOOPBACK}:{port}"]\ntcp = ["{LOOPBACK}:{port}"]\n'
                        f"ws = []\n[proxy]\nworker_ports = {worker_ports}\n").config


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


def test_worker_ports_gives_consecutive_ports_for_both_transports():
    for _ in range(20):  # base + 1 must be free for both too: another base if not
        base = free_port("both")
        try:
            sockets = SocketSet(config(base), 2)
            break
        except SocketError:
            continue
    else:
        raise AssertionError("no two consecutive free ports on loopback")
    try:
        assert [own(sockets, i)[BACKEND_TCP][1] for i in range(2)] == [base, base + 1]
        assert [own(sockets, i)["backend"][1] for i in range(2)] == [base, base + 1]
    finally:
        sockets.close()


def test_a_worker_port_taken_over_tcp_stops_the_start_with_a_message_naming_it():
    base = free_port("both")
    with socket.create_server((LOOPBACK, base)):
        with pytest.raises(SocketError, match=rf"{BACKEND_TCP}:{LOOPBACK}:{base}:"):
            SocketSet(config(base), 1)
