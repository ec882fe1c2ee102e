#!/usr/bin/env python3
"""WebSocket capacity of sipgw, and of Kamailio 5.6 with the same load client:
registrations per second with 100 clients connecting at once, and memory per connection.

sipgw.tools.wsload (N WebSocket connections, each REGISTERs, answers the 401 with digest
MD5 and stays open) → the server under test (WS listener; digest against the subscribers
in a real Redis) → SIPp UAS answering REGISTER over UDP. The server is sipgw, or Debian's
Kamailio configured as the equivalent gateway (bench/kamailio/ws-gateway.cfg: auth_db on
db_redis against the very same Redis records, which ``sipgw users import`` writes in
Kamailio's layout; force_rport, contact alias, REGISTER relayed statefully with a Path; 4
UDP and 4 TCP workers, as the issue's reference rate was measured with four). Every
connection registers a user of its own (one Redis record each, none asked twice by a
server). Each run starts a fresh server and UAS, warms up with 200 registrations, then:

1. memory: ``--count`` connections registered and held; the server's PSS
   (/proc/PID/smaps_rollup, summed over its processes) before and while they are held,
   divided by the count (``--count 0`` skips it). First, so that no earlier phase has
   left memory touched that the held connections would reuse unseen;
2. rate: ``--rate-count`` connections, ``--concurrency`` connecting/registering at once
   (each stays open until the last has registered), then closed; prints the time until
   all were registered, registrations/s, the server's CPU-s per 1,000 registrations
   (summed over its processes, /proc), the Redis commands per registration and the load
   client's own CPU (a client-bound number is not the server's).

The SIPp UAS's own counters must match the registrations the client saw answered: every
one really reached the backend. ``--target both`` interleaves the runs (sipgw, kamailio,
sipgw, kamailio...), as the machine is shared, and ends with a table beside the load
average at the start of each run, and sipgw's time over Kamailio's per round.

    .venv/bin/python bench/ws.py                            # sipgw: 10,000 held, 10,000 rate
    .venv/bin/python bench/ws.py --target both --count 2000 --rate-count 3000
    .venv/bin/python bench/ws.py --target kamailio --rounds 3
    .venv/bin/python bench/ws.py --workers 2                # sipgw serve --workers 2
    .venv/bin/python bench/ws.py --no-digest                # loopback trusted: no Redis

``--no-digest`` measures the WebSocket edge alone (both servers trust loopback, nothing is
asked of Redis), as this bench did before digest. Everything listens on 127.0.0.1 and every
process is stopped at the end. Numbers go in notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import targets
from redisdb import KEY_TEMPLATE, Redis
from sipprate import REALM, last_stats
from targets import Server, cpu_seconds, load_average, stop, wait_idle

from sipgw.tools.loopback import free_port  # targets put the tree on sys.path
from sipgw.tools.wsload import LoadResult, run_load

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE.parent / "tests" / "integration" / "scenarios"
WARMUP = 200
PASSWORD = "bench-secret"  # every account's: the load client has one password
FIRST_USER = 100_000  # accounts FIRST_USER, FIRST_USER + 1, ...: warm-up, memory, rate


@contextlib.contextmanager
def sipgw(work: Path, uas_port: int, max_connections: int,
          workers: int | None, redis: Redis | None) -> Iterator[Server]:
    sip_port, ws_port = free_port(), free_port()
    # Digest against the subscribers in Redis, or loopback trusted. Every client comes from
    # 127.0.0.1: pike off, as Kamailio's gateway has none (bench/register.py's too).
    auth = (f'[subscribers]\nurl = "{redis.url}"\nkey_template = "{KEY_TEMPLATE}"\n'
            f'[auth]\nrealm = "{REALM}"\n' if redis is not None
            else '[auth]\ntrusted = ["127.0.0.0/8"]\n')
    config = (
        f'[listen]\nudp = ["127.0.0.1:{sip_port}"]\ntcp = []\nws = ["127.0.0.1:{ws_port}"]\n'
        f'[dispatcher]\ndestinations = ["sip:127.0.0.1:{uas_port}"]\nping_interval = 0\n'
        f"{auth}[pike]\nenabled = false\n"
        f"[limits]\nws_max_connections = {max_connections}\n"
        f"ws_max_connections_per_address = {max_connections}\nws_register_timeout = 0\n"
        f'[control]\nsocket = "{work}/sipgw.ctl"\n[state]\ndirectory = "{work}"\n'
        f'[log]\nlevel = "warning"\n'
    )
    with targets.sipgw(work, config, sip_port, workers=workers,
                       ws_url=f"ws://127.0.0.1:{ws_port}/") as server:
        yield server


@contextlib.contextmanager
def kamailio(work: Path, uas_port: int, max_connections: int,
             workers: int | None, redis: Redis | None) -> Iterator[Server]:
    defines = {"BACKEND": f'"sip:127.0.0.1:{uas_port}"',
               "MAX_CONNECTIONS": str(max_connections)}
    if redis is not None:
        defines["DB_URL"] = f'"{redis.url}"'
    else:
        defines["TRUSTED"] = "1"
    with targets.kamailio(
        work, "ws-gateway.cfg", defines,
        modules=(("websocket.so", "kamailio-websocket-modules"),
                 ("db_redis.so", "kamailio-redis-modules")),
        # Shared memory holds every connection; the pools' untouched pages cost no PSS.
        shm_mb=256 + max_connections // 10, pkg_mb=8,
    ) as server:
        yield server


SERVERS: dict[str, Callable[[Path, int, int, int | None, Redis | None],
                             contextlib.AbstractContextManager[Server]]] = {
    "sipgw": sipgw, "kamailio": kamailio,
}


class Uas:
    """SIPp answering every REGISTER with 200; its counters, read when it is stopped, say
    how many really reached the backend."""

    def __init__(self, work: Path, limit: int):
        self.port = free_port()
        self.stats = work / "uas.csv"
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "uas_register.xml"), "-i", "127.0.0.1",
             "-p", str(self.port), "-bind_local", "-ci", "127.0.0.1", "-cp", str(free_port()),
             "-t", "u1", "-m", str(limit), "-nostdin", "-trace_stat", "-stf", str(self.stats)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)

    def stop(self) -> dict[str, int]:
        stop(self.proc)  # SIPp writes its final counters on SIGTERM
        row = last_stats(self.stats)
        return {key: int(row.get(column, 0)) for key, column in (
            ("answered", "SuccessfulCall(C)"), ("failed", "FailedCall(C)"),
            ("retransmissions", "Retransmissions(C)"))}


@dataclass(slots=True)
class Run:
    target: str
    round: int
    load: str  # /proc/loadavg at the start
    rate: LoadResult
    cpu_ms: float  # server CPU per registration in the rate phase = CPU-s per 1,000
    kb_per_connection: float | None
    uas_ok: bool

    def row(self) -> str:
        fails = sum(self.rate.failures.values())
        kb = self.kb_per_connection
        memory = f"{kb:8.1f}" if kb is not None else "       -"
        cpu_percent = 100 * self.rate.cpu_seconds / max(self.rate.seconds, 1e-9)
        return (f"{self.target:<9}{self.round:>5}{self.rate.registered:>8}"
                f"{self.rate.seconds:>8.2f}{self.rate.rate:>8.0f}{fails:>7}"
                f"{self.cpu_ms:>10.3f}{cpu_percent:>9.0f}"
                f"{memory}   {'yes' if self.uas_ok else 'NO':<5}{self.load}")


HEADER = (f"{'target':<9}{'round':>5}{'reg':>8}{'s':>8}{'reg/s':>8}{'fails':>7}"
          f"{'CPU-s':>10}{'client':>9}{'kB/conn':>8}   {'UAS':<5}load (1, 5, 15 min)\n"
          f"{'':<9}{'':>5}{'':>8}{'all reg':>8}{'':>8}{'':>7}{'/1000':>10}{'% core':>9}"
          f"{'held':>8}   {'ok':<5}")


def load(server: Server, args: argparse.Namespace, count: int, first: int,
         **options) -> LoadResult:
    """``count`` clients, ``args.concurrency`` at once, accounts ``first``, ``first`` + 1...
    (with digest: the accounts provisioned in Redis)."""
    return asyncio.run(run_load(server.ws_url, count=count, concurrency=args.concurrency,
                                first=first, password=PASSWORD, domain=REALM, **options))


def memory_phase(server: Server, args: argparse.Namespace,
                 first: int) -> tuple[LoadResult, float]:
    """PSS growth per held connection. Measured right after the warm-up, before the rate
    phase: memory its connections left touched would be reused and hide the growth."""
    wait_idle(server)
    before = server.pss_kb()
    seen: dict[str, int] = {}

    def measure() -> None:
        seen["pss"] = server.pss_kb()

    held = load(server, args, args.count, first, hold=args.hold, while_held=measure)
    per_connection = (seen["pss"] - before) / max(held.registered, 1)
    print(f"  memory: {held.report()}")
    print(f"  {server.name} PSS {before} kB -> {seen['pss']} kB with {held.registered} "
          f"registered connections: {per_connection:.1f} kB each")
    return held, per_connection


def rate_phase(server: Server, uas: Uas, redis: Redis | None, args: argparse.Namespace,
               first: int) -> tuple[LoadResult, float]:
    """Registrations/s and the server's CPU per registration; the UAS's CPU beside it, so
    that a backend-bound number is not mistaken for the server's either."""
    wait_idle(server)
    cpu0, uas0 = server.cpu(), cpu_seconds(uas.proc.pid)
    commands0 = redis.commands() if redis is not None else {}
    rate = load(server, args, args.rate_count, first)
    cpu, uas_cpu = server.cpu() - cpu0, cpu_seconds(uas.proc.pid) - uas0
    cpu_ms = 1000 * cpu / max(rate.registered, 1)
    print(f"  rate ({args.concurrency} at once): {rate.report()}")

    def share(seconds: float) -> str:
        return f"{100 * seconds / max(rate.seconds, 1e-9):.0f} % of one core"

    print(f"  {server.name} CPU {cpu:.2f} s ({share(cpu)}) = {cpu_ms:.3f} CPU-s per 1,000 "
          f"registrations; SIPp UAS CPU {uas_cpu:.2f} s ({share(uas_cpu)})")
    if redis is not None:
        commands = {name: n - commands0.get(name, 0) for name, n in redis.commands().items()}
        per = {name: n / max(rate.registered, 1) for name, n in commands.items()
               if n / max(rate.registered, 1) >= 0.005}  # not a connection's SELECT
        print("  Redis commands per registration: " + (", ".join(
            f"{name} {n:.2f}" for name, n in sorted(per.items(), key=lambda i: -i[1]))
            or "none"))
    return rate, cpu_ms


def run_once(target: str, round_: int, redis: Redis | None, args: argparse.Namespace) -> Run:
    load_avg = load_average()
    with tempfile.TemporaryDirectory(prefix=f"sipgw-bench-ws-{target}-") as tmp:
        work = Path(tmp)
        uas = Uas(work, 10 * (WARMUP + args.count + args.rate_count))
        registered = 0
        try:
            with SERVERS[target](work, uas.port, args.open_at_once + 1000,
                                 args.workers, redis) as server:
                print(f"\n[{target}, round {round_}] {server.about}; "
                      f"{'digest MD5 on Redis' if redis else 'no digest'}; "
                      f"load average {load_avg}")
                # Warm-up: imports and first allocations are not per-connection costs.
                warm = load(server, args, WARMUP, FIRST_USER)
                registered += warm.registered
                per_connection = None
                if args.count:
                    held, per_connection = memory_phase(server, args, FIRST_USER + WARMUP)
                    registered += held.registered
                rate, cpu_ms = rate_phase(server, uas, redis, args,
                                          FIRST_USER + WARMUP + args.count)
                registered += rate.registered
                if registered < WARMUP + args.count + args.rate_count:
                    print(f"  failures: the last lines of {server.name}'s log:\n"
                          f"{server.log_tail()}")
        finally:
            counts = uas.stop()
        uas_ok = (counts["answered"] == registered and counts["failed"] == 0)
        print(f"  SIPp UAS: {counts['answered']} REGISTERs answered, {counts['failed']} failed, "
              f"{counts['retransmissions']} retransmissions; the client saw "
              f"{registered} 200s: {'match' if uas_ok else 'MISMATCH'}")
    return Run(target, round_, load_avg, rate, cpu_ms, per_connection, uas_ok)


def summary(runs: list[Run]) -> None:
    print("\n" + HEADER)
    for run in runs:
        print(run.row())
    for target in dict.fromkeys(r.target for r in runs):
        mine = [r for r in runs if r.target == target]
        memory = [r.kb_per_connection for r in mine if r.kb_per_connection is not None]
        print(f"{target} median of {len(mine)}: "
              f"{statistics.median(r.rate.seconds for r in mine):.2f} s until all registered, "
              f"{statistics.median(r.rate.rate for r in mine):.0f} registrations/s, "
              f"{statistics.median(r.cpu_ms for r in mine):.3f} CPU-s per 1,000 registrations"
              + (f", {statistics.median(memory):.1f} kB per held connection" if memory else ""))
    rounds = {r.round: {} for r in runs}
    for r in runs:
        rounds[r.round][r.target] = r
    ratios = [(n, pair["sipgw"], pair["kamailio"]) for n, pair in rounds.items()
              if {"sipgw", "kamailio"} <= set(pair)]
    for n, ours, theirs in ratios:
        complete = (not ours.rate.failures and not theirs.rate.failures
                    and ours.uas_ok and theirs.uas_ok)
        print(f"round {n}: sipgw's time until all registered over Kamailio's: "
              f"{ours.rate.seconds / max(theirs.rate.seconds, 1e-9):.2f}×, CPU per "
              f"registration {ours.cpu_ms / max(theirs.cpu_ms, 1e-9):.2f}×"
              + ("" if complete else " (NOT all registered: see the failures above)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=("sipgw", "kamailio", "both"), default="sipgw")
    ap.add_argument("--rounds", type=int, default=None,
                    help="runs of each target (default: 2 with --target both, else 1)")
    ap.add_argument("--count", type=int, default=10_000, help="connections held (memory)")
    ap.add_argument("--rate-count", type=int, default=10_000, help="registrations (rate)")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--hold", type=float, default=2.0, help="seconds to hold them")
    ap.add_argument("--workers", type=int, default=None,
                    help="sipgw serve --workers N (not passed when not given)")
    ap.add_argument("--no-digest", action="store_true",
                    help="no digest and no Redis: loopback is trusted by both servers")
    args = ap.parse_args()
    if args.count < 0 or args.rate_count < 0 or args.concurrency < 1:
        ap.error("--count, --rate-count: 0 or more; --concurrency: at least 1")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The servers started from here inherit it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Both phases keep every connection open until the last one has registered.
    args.open_at_once = max(args.count, args.rate_count)
    if args.open_at_once + 100 > hard:
        raise SystemExit(f"need {args.open_at_once + 100} file descriptors, the limit is {hard}")
    names = ["sipgw", "kamailio"] if args.target == "both" else [args.target]
    rounds = args.rounds or (2 if args.target == "both" else 1)
    with tempfile.TemporaryDirectory(prefix="sipgw-bench-ws-") as tmp:
        redis = None if args.no_digest else Redis(free_port(), Path(tmp))
        try:
            if redis is not None:
                users = WARMUP + args.count + args.rate_count
                t0 = time.monotonic()
                redis.provision(users, REALM, Path(tmp), first=FIRST_USER, password=PASSWORD)
                print(f"{users} subscribers written to Redis in {time.monotonic() - t0:.1f} s")
            runs = [run_once(target, n, redis, args)
                    for n in range(1, rounds + 1) for target in names]
        finally:
            if redis is not None:
                redis.stop()
    summary(runs)


if __name__ == "__main__":
    main()
