#!/usr/bin/env python3
"""CPU time per WebSocket registration inside sipgw: no sockets, no other processes.

bench/ws.py's registration, in-process: the service as ``sipgw serve`` assembles it from
bench/ws.py's config (WS listener, one UDP backend, loopback trusted), on a fake reactor
whose clock keeps its timers in a heap. Each registration is the real load client of
bench/ws.py (``sipgw.tools.wsload``) talking to the real protocol class over in-memory
transports: the connection accepted (``buildProtocol``, ``makeConnection``), its handshake,
its REGISTER frame, the backend's 200 coming back over UDP and going down the connection as
a frame. All connections stay open until the last has registered, then the client drops
them, as bench/ws.py's rate phase does. Only the time inside sipgw's entry points is
counted (``time.process_time``): the client's and the kernel's share are not, so the
number holds on a busy machine where bench/ws.py's does not.

    .venv/bin/python bench/wscore.py                  # 3,000 registrations, best of 5
    .venv/bin/python bench/wscore.py --profile        # and cProfile's top functions

Numbers go in notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipgw.config import load_config  # noqa: E402
from sipgw.proxy.runtime import gcpolicy  # noqa: E402
from sipgw.proxy.service import make_service  # noqa: E402
from sipgw.tools.loadflows import HeapClock, uas_answer  # noqa: E402
from sipgw.tools.wsload import _Account, _Client  # noqa: E402

SIP_PORT, WS_PORT, UAS_PORT = 25060, 28080, 25080
UAS = ("127.0.0.1", UAS_PORT)
PHASES = ("accept", "handshake", "REGISTER", "200 OK", "close")
CONFIG = f"""
[listen]
udp = ["127.0.0.1:{SIP_PORT}"]
tcp = []
ws = ["127.0.0.1:{WS_PORT}"]
[dispatcher]
destinations = ["sip:127.0.0.1:{UAS_PORT}"]
ping_interval = 0
[auth]
trusted = ["127.0.0.0/8"]
[limits]
ws_max_connections = 100000
ws_max_connections_per_address = 100000
ws_register_timeout = 0
[log]
level = "warning"
"""


class Reactor(HeapClock, MemoryReactor):
    """A memory reactor (listeners recorded, nothing bound) on a heap clock."""

    def __init__(self) -> None:
        HeapClock.__init__(self)
        MemoryReactor.__init__(self)
        self.udp: dict[int, object] = {}

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udp[port] = protocol
        return self

    def stopListening(self) -> None:
        pass


class Datagrams:
    """The UDP listener's transport and its socket (the listener sends on the socket):
    what sipgw sends to the backend, kept for answering."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []
        self.socket = self

    def sendto(self, data: bytes, addr: tuple) -> None:
        self.sent.append((data, addr))


class Outcome:
    """What the load client's ``done`` future is to it: set once, with None on a 200."""

    def __init__(self) -> None:
        self.value: object = "pending"

    def done(self) -> bool:
        return self.value != "pending"

    def set_result(self, value: object) -> None:
        self.value = value


class Bench:
    def __init__(self, work: Path) -> None:
        (work / "sipgw.toml").write_text(
            CONFIG + f'[control]\nsocket = "{work}/sipgw.ctl"\n[state]\ndirectory = "{work}"\n')
        self.reactor = Reactor()
        self.service = make_service(load_config(str(work / "sipgw.toml")), self.reactor)
        self.service.startService()
        self.udp = self.reactor.udp[SIP_PORT]
        self.udp.transport = self.datagrams = Datagrams()
        self.factory = self.reactor.tcpServers[0][1]
        self.spent: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.next_port = 1024

    def timed(self, phase: str, fn, *args) -> None:
        t = time.process_time()
        fn(*args)
        self.spent[phase] += time.process_time() - t

    def register(self, n: int):
        """One connection through to its 200; sipgw's protocol for it, still open."""
        self.next_port = self.next_port % 60000 + 1
        peer = IPv4Address("TCP", "127.0.0.1", 1024 + self.next_port)
        server = StringTransport(peerAddress=peer,
                                 hostAddress=IPv4Address("TCP", "127.0.0.1", WS_PORT))
        client_side = StringTransport()
        outcome = Outcome()
        client = _Client("127.0.0.1", WS_PORT, "/", _Account(str(n), "", "127.0.0.1"), n,
                         600, outcome)
        client.connection_made(client_side)
        proto = self.factory.buildProtocol(peer)
        self.timed("accept", proto.makeConnection, server)
        for phase in ("handshake", "REGISTER"):  # the REGISTER frame answers the 101
            sending, _ = client_side.value(), client_side.clear()
            self.timed(phase, proto.dataReceived, sending)
            client.data_received(server.value())
            server.clear()
        (register, _), = self.datagrams.sent
        self.datagrams.sent.clear()
        self.timed("200 OK", self.udp.datagramReceived, uas_answer(register, "200 OK", n), UAS)
        client.data_received(server.value())
        if outcome.value is not None:
            raise SystemExit(f"registration {n}: {outcome.value!r}, not a 200")
        return proto

    def run(self, count: int, first: int) -> dict[str, float]:
        """CPU seconds inside sipgw, by phase, for ``count`` registrations and their
        connections' end."""
        self.spent = dict.fromkeys(PHASES, 0.0)
        held = []
        for n in range(first, first + count):
            held.append(self.register(n))
            if n % 500 == 499:
                self.reactor.advance(1.0)  # a few hundred a second: timers fire in bulk
        for proto in held:
            self.timed("close", proto.connectionLost, Failure(ConnectionDone()))
        self.reactor.advance(60.0)  # transactions end
        return self.spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=3_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipgw-wscore-") as tmp:
        bench = Bench(Path(tmp))
        bench.run(300, 0)  # warm-up: imports, caches, first allocations
        gcpolicy.install()  # as sipgw serve does once started
        rounds = []
        for n in range(args.rounds):
            rounds.append(bench.run(args.count, 1000 + n * args.count))
        rounds.sort(key=lambda r: sum(r.values()))
        best, median = rounds[0], rounds[len(rounds) // 2]
        ms = 1000 * sum(best.values()) / args.count
        print(f"{args.count} WebSocket registrations: {ms:.3f} ms of CPU each inside sipgw "
              f"(best of {args.rounds}; median {1000 * sum(median.values()) / args.count:.3f}), "
              f"i.e. {1000 / ms:.0f}/s on one core before sockets and the reactor")
        print("  best round by phase, µs per registration: " + ", ".join(
            f"{phase} {1e6 * best[phase] / args.count:.0f}" for phase in PHASES))
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(bench.run, args.count, 1000 + args.rounds * args.count)
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
