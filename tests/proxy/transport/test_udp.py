"""The UDP listener's socket, as the kernel sees it."""

from __future__ import annotations

import socket
from pathlib import Path

from sipgw.proxy.transport.udp import RECEIVE_BUFFER, _grow_receive_buffer


def test_the_receive_buffer_grows_to_what_the_kernel_allows():
    # A burst of datagrams that arrives while sipgw is busy must wait in the kernel, not be
    # dropped there (each drop is a 500 ms retransmission later).
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        got = _grow_receive_buffer(sock)
        assert got == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        # Linux doubles the value asked for (bookkeeping), up to twice rmem_max.
        assert got >= min(RECEIVE_BUFFER, rmem_max)
        assert got >= default
