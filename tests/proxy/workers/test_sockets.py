"""The supervisor's sockets: one SO_REUSEPORT group per listener, one socket per worker,
and a UDP socket of each worker's own toward the backends."""

from __future__ import annotations

import socket

import pytest

from sipgw.config import parse_config
from sipgw.proxy.workers.sockets import SocketError, SocketSet
from sipgw.tools.loopback import free_port


def config(text: str):
    return parse_config(text, "sipgw.toml").config


def test_each_listener_is_a_group_of_one_socket_per_worker_on_the_same_port():
    port, ws = free_port(), free_port()
    sockets = SocketSet(config(f'[listen]\nudp = ["127.0.0.1:{port}"]\ntcp = ["127.0.0.1:{port}"]\n'
                               f'ws = ["127.0.0.1:{ws}"]\n'), 3)
    try:
        per_worker = [sockets.for_worker(i) for i in range(3)]
        kinds = [[s.kind for s in mine] for mine in per_worker]
        assert kinds == [["udp", "tcp", "ws", "backend", "backend_tcp"]] * 3
        for n in range(3):  # the same address in every worker, a distinct socket each
            assert len({(mine[n].host, mine[n].port) for mine in per_worker}) == 1
            assert len({mine[n].fd for mine in per_worker}) == 3
        assert [s.port for s in per_worker[0][:3]] == [port, port, ws]
        own = [mine[-2].port for mine in per_worker]
        assert len(set(own)) == 3 and port not in own
    finally:
        sockets.close()


def test_a_client_keeps_reaching_the_same_worker_socket():
    """The kernel hashes the source address: a caller's retransmissions reach the worker
    that holds its transaction, and several callers are spread over the workers."""
    port = free_port()
    sockets = SocketSet(config(f'[listen]\nudp = ["127.0.0.1:{port}"]\ntcp = []\nws = []\n'), 2)
    callers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        receivers = [socket.socket(fileno=socket.dup(sockets.for_worker(i)[0].fd))
                     for i in range(2)]

        def who_got_what() -> dict[bytes, int]:
            for n, caller in enumerate(callers):
                caller.sendto(b"caller %d" % n, ("127.0.0.1", port))
            got: dict[bytes, int] = {}
            for index, receiver in enumerate(receivers):
                receiver.settimeout(0.5)
                while len(got) < len(callers):
                    try:
                        got[receiver.recv(100)] = index
                    except TimeoutError:
                        break
            return got

        first, again = who_got_what(), who_got_what()
        assert len(first) == 16 and first == again
        assert set(first.values()) == {0, 1}
        for receiver in receivers:
            receiver.close()
    finally:
        for caller in callers:
            caller.close()
        sockets.close()


def test_a_port_in_use_fails_the_start_naming_the_listener_and_leaves_nothing_open():
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        with pytest.raises(SocketError, match=rf"tcp:127\.0\.0\.1:{port}"):
            SocketSet(config(f'[listen]\nudp = ["127.0.0.1:{port}"]\n'
                             f'tcp = ["127.0.0.1:{port}"]\nws = []\n'), 2)
        # the UDP group opened before the failure was closed again
        again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        again.bind(("127.0.0.1", port))
        again.close()
    finally:
        busy.close()
