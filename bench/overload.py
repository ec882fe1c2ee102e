#!/usr/bin/env python3
"""Calls, or REGISTERs with digest, offered at 1x, 2x and 4x a server's capacity: what it
completes, and how fast; sipgw and Kamailio 5.6 as the same gateway.

SIPp callers on several loopback addresses → the server (UDP) → a SIPp backend answering
every call (bench/scenarios/uas.xml); the callers are trusted (no digest). With
``--register``, phones registering with digest (REGISTER → 401 → REGISTER with credentials
→ 200, the subscribers in a real Redis, the same records for both servers) and a backend
accepting every REGISTER. The servers are bench/register.py's and bench/calls.py's
(bench/sipprate.py, bench/targets.py): sipgw, or Kamailio on bench/kamailio/udp-gateway.cfg.

Each server is measured on its own, freshly started. Its capacity first: its CPU time per
call at a rate it keeps up with (summed over all its processes), hence the calls a second
on the cores it can use (``--cores``; by default the machine's CPUs, at most one per SIP
worker process: sipgw's ``--workers``, one per CPU by default; Kamailio's 4 UDP children;
on a machine the SIPp processes share, that overestimates: ``--cores 1``). Each step offers a
multiple of its own capacity for a fixed time and reports, for the calls completed during
the step: goodput (calls a second, and as a share of the capacity), the callers'
retransmissions, the time from the first INVITE or REGISTER to its 200 (p50, p99: SIPp's
-trace_rtt), what sipgw refused with 503 or dropped unread (core:shed_*; Kamailio sheds
nothing), what the kernel dropped on sipgw's full UDP queues (kdrops,
load:udp_kernel_drops), the server's CPU, and the time from the step's end until the
server takes new calls again: until the first of three probe calls in a row (one SIPp
call each, the same flow) is completed without a retransmission. ``sent`` is the rate
the callers reached: below ``offered`` when the SIPp processes, sharing the machine,
cannot send more.

    .venv/bin/python bench/overload.py                      # sipgw, calls, 1x 2x 4x, 10 s
    .venv/bin/python bench/overload.py --target both --seconds 5 --cores 1
    .venv/bin/python bench/overload.py --register --target both --factors 2,4
    .venv/bin/python bench/overload.py --no-shed --workers 1

``--no-shed`` runs sipgw with ``[overload] enabled = false``: the collapse it prevents.
Everything listens on loopback and every process is stopped at the end. Numbers go in
notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sipprate
from redisdb import Redis
from targets import Server, load_average

from sipgw.rpc.client import Client  # targets put the tree on sys.path
from sipgw.tools.loopback import free_port

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
TEST_SCENARIOS = HERE.parent / "tests" / "integration" / "scenarios"
USERS = 5000
CALLERS = [f"127.0.3.{n}" for n in range(1, 5)]
PROBE = "127.0.3.100"
CALIBRATION_RATE = 600
CALIBRATION_SECONDS = 6.0
KAMAILIO_CHILDREN = 4  # udp-gateway.cfg's children
PROBES_IN_A_ROW = 3
RECOVERY_LIMIT = 60.0


def sipp(work: Path, name: str, scenario: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["sipp", "-sf", str(scenario), "-bind_local", "-nostdin",
         "-ci", "127.0.0.1", "-cp", str(free_port()), "-p", str(free_port()),
         "-trace_stat", "-stf", str(work / f"{name}.csv"), "-fd", "1", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)


def callers(work: Path, step: str, proxy: str, rate: float, seconds: float,
            flow: list[str]) -> list:
    """``flow``: the caller's scenario and its options."""
    per = rate / len(CALLERS)
    return [sipp(work, f"{step}-{n}", Path(flow[0]), *flow[1:], proxy, "-i", ip,
                 "-r", f"{per:g}",
                 "-m", str(int(per * seconds) + 1), "-l", "10000", "-trace_rtt",
                 "-rtt_freq", "1", "-timeout", str(int(seconds + 40)))
            for n, ip in enumerate(CALLERS)]


def stop(procs: list) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def last_row(path: Path) -> dict[str, str]:
    with path.open() as f:
        rows = [row for row in csv.reader(f, delimiter=";") if row]
    return dict(zip(rows[0], rows[-1], strict=False))


def response_times_ms(work: Path, before: set[Path]) -> list[float]:
    """INVITE→200 times of the calls the step's callers completed (SIPp's -trace_rtt files:
    ``Date_ms;response_time_ms;rtd_no``, to the millisecond)."""
    times = []
    for path in set(work.glob("*_rtt.csv")) - before:
        with path.open() as f:
            for row in csv.reader(f, delimiter=";"):
                if len(row) == 3 and row[1] != "response_time_ms":
                    times.append(float(row[1]))
    return times


def cores(server: Server, args: argparse.Namespace) -> int:
    """The cores a server can use: ``--cores``, else the machine's, at most one per SIP
    worker process."""
    if args.cores:
        return args.cores
    processes = KAMAILIO_CHILDREN if server.name == "kamailio" else args.workers
    return min(os.cpu_count() or 1, processes or os.cpu_count() or 1)


def recovery(work: Path, step: str, proxy: str, flow: list[str]) -> float | None:
    """Seconds from now until the first of PROBES_IN_A_ROW probe calls in a row, each
    completed without a retransmission (a 503 fails it, so does a request dropped unread);
    None when that did not happen within RECOVERY_LIMIT."""
    ended = time.monotonic()
    first, in_a_row, n = 0.0, 0, 0
    while time.monotonic() - ended < RECOVERY_LIMIT:
        n += 1
        started = time.monotonic()
        name = f"{step}-probe-{n}"
        probe = sipp(work, name, Path(flow[0]), *flow[1:], proxy, "-i", PROBE, "-m", "1",
                     "-recv_timeout", "2000", "-timeout", "10")
        try:
            probe.wait(15)
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.wait()
        row = last_row(work / f"{name}.csv") if (work / f"{name}.csv").exists() else {}
        if (probe.returncode == 0 and row.get("SuccessfulCall(C)") == "1"
                and row.get("Retransmissions(C)") == "0"):
            first = first if in_a_row else started
            in_a_row += 1
            if in_a_row == PROBES_IN_A_ROW:
                return first - ended
        else:
            in_a_row = 0
    return None


@dataclass(slots=True)
class Step:
    factor: float
    offered: float
    sent: float
    goodput: float
    share: float
    retransmissions: int
    p50: float
    p99: float
    shed_503: int | None  # None: the server does not count it (Kamailio)
    dropped: int | None
    kernel_drops: int | None  # datagrams the kernel dropped, sipgw's sockets' queues full
    cpu: float  # share of one core
    recover: float | None

    def row(self) -> str:
        def maybe(value: float | None, width: int, form: str) -> str:
            return f"{'-' if value is None else format(value, form):>{width}}"

        return (f"{self.offered:>8.0f} {self.factor:>3g} {self.sent:>7.0f} {self.goodput:>8.0f} "
                f"{self.share:>6.0%} {self.retransmissions:>8} {self.p50:>7.0f} "
                f"{self.p99:>7.0f} {maybe(self.shed_503, 7, 'd')} "
                f"{maybe(self.dropped, 8, 'd')} {maybe(self.kernel_drops, 8, 'd')} "
                f"{self.cpu:>5.0%} "
                f"{maybe(self.recover, 9, '.1f')}")


STEP_HEADER = (f"{'offered':>8} {'x':>3} {'sent':>7} {'goodput':>8} {'share':>6} "
               f"{'retrans':>8} {'p50 ms':>7} {'p99 ms':>7} {'503':>7} {'dropped':>8} "
               f"{'kdrops':>8} {'cpu':>5} {'recover s':>9}")


@contextlib.contextmanager
def backend(work: Path, scenario: Path) -> Iterator[int]:
    """The SIPp UAS the server relays to; yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port),
         "-bind_local", "-nostdin", "-ci", "127.0.0.1", "-cp", str(free_port()),
         "-buff_size", str(4 << 20), "-timeout", "3600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


class Shed:
    """sipgw's core:shed_* counters over its control socket; None for a server without."""

    def __init__(self, server: Server, work: Path):
        self.client = Client(str(work / "sipgw.ctl"), timeout=5) \
            if server.name == "sipgw" else None

    def fetch(self) -> dict[str, int] | None:
        if self.client is None:
            return None
        got = self.client.call("stats.fetch", ["core:shed_503", "core:shed_dropped",
                                               "load:udp_kernel_drops"])
        return {k.split(".", 1)[1]: v for k, v in got.items()}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def run_target(target: str, redis: Redis, flow: list[str], uas: Path, what: str,
               args: argparse.Namespace, work: Path) -> tuple[float, list[Step]]:
    """A fresh server: its capacity, then a step per factor; (capacity, steps)."""
    run_work = work / target
    run_work.mkdir()
    options = argparse.Namespace(no_auth=not args.register, workers=args.workers, profile="")
    extra = "[overload]\nenabled = false\n" if args.no_shed else ""
    load = load_average()
    with (backend(run_work, uas) as uas_port,
          sipprate.start(target, run_work, uas_port, redis, options,
                         sipgw_extra=extra) as server):
        proxy = f"127.0.0.1:{server.sip_port}"
        shed = Shed(server, run_work)
        try:
            cpu = server.cpu()
            calibration = callers(run_work, "calibration", proxy, CALIBRATION_RATE,
                                  CALIBRATION_SECONDS, flow)
            for proc in calibration:
                proc.wait(CALIBRATION_SECONDS + 30)
            done = sum(int(last_row(run_work / f"calibration-{n}.csv")["SuccessfulCall(C)"])
                       for n in range(len(CALLERS)))
            spent = server.cpu() - cpu
            if not done or spent <= 0:
                raise SystemExit(f"{target} completed {done} {what} in {spent:.2f} CPU-s at "
                                 f"{CALIBRATION_RATE}/s: no capacity to measure; its log's "
                                 f"end:\n{server.log_tail(5)}")
            n_cores = cores(server, args)
            capacity = done / spent * n_cores
            print(f"\n[{target}] {server.about}"
                  + (", without overload control" if args.no_shed and target == "sipgw"
                     else "") + f"; load average {load}")
            print(f"capacity: {capacity:.0f} {what}/s ({1000 * spent / done:.3f} CPU-ms per "
                  f"one at {CALIBRATION_RATE}/s, {n_cores} core{'s' if n_cores > 1 else ''})")
            print(STEP_HEADER)
            steps = []
            for factor in args.factors:
                steps.append(step(server, shed, run_work, proxy, flow, capacity, factor,
                                  args.seconds))
                print(steps[-1].row(), flush=True)
                time.sleep(1)  # the backend's last retransmissions die out
        finally:
            shed.close()
    return capacity, steps


def step(server: Server, shed: Shed, work: Path, proxy: str, flow: list[str],
         capacity: float, factor: float, seconds: float) -> Step:
    rtt_before = set(work.glob("*_rtt.csv"))
    before, cpu = shed.fetch(), server.cpu()
    name = f"x{factor:g}"
    procs = callers(work, name, proxy, factor * capacity, seconds, flow)
    started = time.monotonic()
    time.sleep(seconds)  # the step itself
    stop(procs)
    elapsed = time.monotonic() - started
    cpu = (server.cpu() - cpu) / elapsed
    after = shed.fetch()
    recover = recovery(work, name, proxy, flow)
    rows = [last_row(work / f"{name}-{n}.csv") for n in range(len(CALLERS))]
    ok = sum(int(r["SuccessfulCall(C)"]) for r in rows)
    times = sorted(response_times_ms(work, rtt_before))

    def shed_delta(key: str) -> int | None:
        return None if before is None or after is None \
            else after.get(key, 0) - before.get(key, 0)

    return Step(
        factor=factor, offered=factor * capacity,
        sent=sum(int(r["OutgoingCall(C)"]) for r in rows) / elapsed,
        goodput=ok / elapsed, share=ok / elapsed / capacity,
        retransmissions=sum(int(r["Retransmissions(C)"]) for r in rows),
        p50=statistics.median(times) if times else float("nan"),
        p99=times[int(len(times) * 0.99)] if times else float("nan"),
        shed_503=shed_delta("shed_503"), dropped=shed_delta("shed_dropped"),
        kernel_drops=shed_delta("udp_kernel_drops"),
        cpu=cpu, recover=recover)


def side_by_side(results: dict[str, tuple[float, list[Step]]]) -> None:
    """A row per factor, a column group per target."""
    names = list(results)
    cell = 34
    print("\n" + " " * 5 + "".join(f"{f'{name} (capacity {results[name][0]:.0f}/s)':<{cell}}"
                                   for name in names))
    print(" " * 5 + "".join(f"{'share':>6} {'retrans':>8} {'p50/p99 ms':>11} {'rec s':>5}  "
                            for _ in names))
    for i, first in enumerate(results[names[0]][1]):
        line = f"{first.factor:>3g}x "
        for name in names:
            s = results[name][1][i]
            recover = "-" if s.recover is None else f"{s.recover:.1f}"
            line += (f"{s.share:>6.0%} {s.retransmissions:>8} "
                     f"{f'{s.p50:.0f}/{s.p99:.0f}':>11} {recover:>5}  ")
        print(line.rstrip())
    print("share: goodput over the server's own capacity; rec s: seconds after the step "
          f"until {PROBES_IN_A_ROW} probe calls in a row were answered without a "
          f"retransmission ('-': not within {RECOVERY_LIMIT:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=(*sipprate.TARGETS, "both"), default="sipgw")
    ap.add_argument("--factors", default="1,2,4", help="multiples of the capacity offered")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    ap.add_argument("--no-shed", action="store_true", help="sipgw: [overload] enabled = false")
    ap.add_argument("--register", action="store_true", help="REGISTERs with digest, not calls")
    ap.add_argument("--workers", type=int, default=None,
                    help="sipgw serve --workers N (not passed when not given)")
    ap.add_argument("--cores", type=int, default=None,
                    help="the cores a capacity counts (default: the CPUs, at most one per "
                         "SIP worker process); 1 where the SIPp processes share the machine")
    args = ap.parse_args()
    try:
        args.factors = [float(f) for f in args.factors.split(",")]
    except ValueError:
        ap.error(f"--factors: not comma-separated numbers: {args.factors!r}")
    if any(f <= 0 for f in args.factors):
        ap.error("--factors: each factor must be above 0")
    if args.seconds <= 0:
        ap.error("--seconds: must be above 0")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers: at least 1")
    if args.cores is not None and args.cores < 1:
        ap.error("--cores: at least 1")
    names = list(sipprate.TARGETS) if args.target == "both" else [args.target]

    with tempfile.TemporaryDirectory(prefix="sipgw-bench-") as tmp:
        work = Path(tmp)
        redis = Redis(free_port(), work)
        try:
            if args.register:
                inf = sipprate.provision(redis, USERS, work)
                uas, what = TEST_SCENARIOS / "uas_register.xml", "REGISTERs"
                flow = [str(TEST_SCENARIOS / "uac_register_auth.xml"), "-inf", str(inf)]
            else:
                uas, what = SCENARIOS / "uas.xml", "calls"
                flow = [str(SCENARIOS / "uac.xml")]
            results = {name: run_target(name, redis, flow, uas, what, args, work)
                       for name in names}
        finally:
            redis.stop()
    if len(results) > 1:
        side_by_side(results)


if __name__ == "__main__":
    main()
