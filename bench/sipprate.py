"""SIPp at fixed rates through a server under test: what bench/register.py and
bench/calls.py share.

SIPp UAC → the server (UDP) → SIPp UAS as the backend, the subscribers in a real Redis.
The server is sipgw or Debian's Kamailio 5.6 configured as the same gateway
(``bench/kamailio/udp-gateway.cfg``: digest MD5 against the same Redis records, 401 for
REGISTER and 407 for the rest, REGISTER relayed to the backend, which is the registrar,
INVITEs record-routed, everything relayed statefully; 4 UDP and 4 TCP workers). Both
benches use the same gateway; only the SIPp scenarios differ.

The UAC sends each call from a socket of its own (``-t un``), as many phones would: a
single source port would put every call on one of sipgw's workers, since the kernel hashes
the source address to pick one. Each step runs the UAC at a fixed rate for a fixed time and
reads SIPp's counters, the server's CPU time summed over its whole process group (/proc),
each SIPp's own CPU, Redis's ``INFO commandstats``, and the CPU the rest of the machine
took meanwhile (/proc/stat: the machine is shared). A run starts a fresh server and offers
rising rates until a step fails 0.5 % of its operations or more, or falls behind: its calls
(99.5 % of them, as a few whose answer was lost wait 10 s for their timeout) end at under
95 % of its rate: by default a search (×``--growth`` from ``--start``, then ``--refine``
halvings between the highest rate sustained and the lowest not), with ``--rates`` the rates
given, in turn. The machine may be shared: each step waits (``--quiet-wait``, bounded)
until the rest of the machine takes under a quarter of a core, and a rate not sustained is
offered again (``--retry``, twice) once the server is idle. A step's verdict says what
limited it: SIPp (its caller or backend at 85 % of a core or more, or the caller sending
behind its rate while its calls in progress were below its cap: a slow server fills the cap
first), "busy" (other processes took half a core or more), or the server. A rate SIPp or
others failed is no limit of the server's, and the table says "≥". ``--target both``
interleaves the runs (sipgw, kamailio, sipgw, kamailio...), as the machine may be shared,
and ends with a table: the rate sustained, CPU-s per 1,000 operations at that rate and
Redis commands per operation, and sipgw's over Kamailio's.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import targets
from redisdb import KEY_TEMPLATE, Redis
from targets import Server, cpu_seconds, load_average, stop, wait_idle

from sipgw.rpc.client import Client  # targets put the tree on sys.path
from sipgw.tools.loopback import free_port

REALM = "bench.test"
TARGETS = ("sipgw", "kamailio")
SUSTAINED_FAILED_PCT = 0.5
SUSTAINED_ACHIEVED = 0.95
# SIPp is one thread: at this share of a core it, not the server, sets the pace.
SIPP_BUSY = 0.85
# The UAC's calls in progress reached this share of its cap (-l): the server was slow.
CAP_REACHED = 0.9
# A step's pace is the time this share of its calls took to end (caller_pace).
FINISHED = 0.995
# Other processes took this share of a core during a step: a failure there says nothing
# of the server's limit (the machine is shared). A step waits for them to stay under QUIET.
OTHERS_BUSY = 0.5
QUIET = 0.25
# The gateway's own listener only; Redis for its digest; SIPp does not answer OPTIONS, so
# the dispatcher does not probe it.
SIPGW_CONFIG = """\
[listen]
udp = ["127.0.0.1:{sip_port}"]
tcp = []
ws = []
[dispatcher]
destinations = ["sip:127.0.0.1:{uas_port}"]
ping_interval = 0
[subscribers]
url = "{redis}"
key_template = "{key_template}"
[auth]
realm = "{realm}"
{trusted}
[control]
socket = "{work}/sipgw.ctl"
[state]
directory = "{work}"
# One address sends everything; Kamailio's gateway has no pike either.
[pike]
enabled = false
[log]
level = "warning"
"""


def last_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` file: its counters when it stopped."""
    with path.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False))


@dataclass(frozen=True, slots=True)
class Scenario:
    """One operation (a SIPp call): what it is called, the UAC's and the UAS's scenario
    files, the UAC's extra arguments (its injection file)."""

    operation: str
    uac: Path
    uas: Path
    uac_args: tuple[str, ...] = ()


@dataclass(slots=True)
class Step:
    target: str
    round: int
    rate: int
    ok: int
    failed: int
    seconds: float  # from the caller's start to its end, as this bench saw them
    end_rate: float  # calls ended a second (caller_pace)
    cpu: float  # the server's, summed over its processes
    uac_cpu: float  # SIPp's caller's
    uas_cpu: float  # SIPp's backend's
    others_cpu: float  # the rest of the machine's: Redis, other users of a shared machine
    sent_rate: float  # new calls a second the caller started, while it started them
    peak_open: int  # the caller's calls in progress, at most (a second's sample)
    open_cap: int  # its cap (-l)
    retransmissions: int
    redis: dict[str, int] = field(default_factory=dict)  # commands during the step

    @property
    def failed_pct(self) -> float:
        return 100.0 * self.failed / max(self.ok + self.failed, 1)

    @property
    def achieved(self) -> float:
        return self.end_rate

    @property
    def sustained(self) -> bool:
        return (self.failed_pct < SUSTAINED_FAILED_PCT
                and self.achieved >= SUSTAINED_ACHIEVED * self.rate)

    @property
    def sipp_limit(self) -> str:
        """Why SIPp, not the server, may have set the pace of a step ("" when not): a SIPp
        at a full core, or a caller behind its rate with room under its cap."""
        for who, cpu in (("caller", self.uac_cpu), ("backend", self.uas_cpu)):
            if cpu / max(self.seconds, 1e-9) >= SIPP_BUSY:
                return f"SIPp's {who} at {100 * cpu / self.seconds:.0f} % of a core"
        if (self.sent_rate < SUSTAINED_ACHIEVED * self.rate
                and self.peak_open < CAP_REACHED * self.open_cap):
            return (f"SIPp's caller started {self.sent_rate:.0f} calls/s with "
                    f"{self.peak_open} of {self.open_cap} open")
        return ""

    @property
    def contended(self) -> bool:
        return self.others_cpu >= OTHERS_BUSY * self.seconds

    @property
    def verdict(self) -> str:
        """What limited a step: "ok" (sustained), "SIPp", "busy" (other processes took
        half a core or more: inconclusive) or "server"."""
        if self.sustained:
            return "ok"
        return "SIPp" if self.sipp_limit else "busy" if self.contended else "server"

    @property
    def cpu_per_1000(self) -> float:
        """CPU-seconds per 1,000 successful operations."""
        return 1000.0 * self.cpu / max(self.ok, 1)

    def redis_per_op(self) -> str:
        ops = max(self.ok + self.failed, 1)
        total = sum(self.redis.values()) / ops
        parts = ", ".join(f"{name} {n / ops:.2f}" for name, n in
                          sorted(self.redis.items(), key=lambda item: -item[1])
                          if n / ops >= 0.005)  # not a connection's SELECT
        return f"{total:.2f}" + (f" ({parts})" if parts else "")

    def row(self) -> str:
        share = 100.0 / max(self.seconds, 1e-9)
        return (f"{self.target:<9}{self.round:>3}{self.rate:>7}{self.ok:>8}"
                f"{self.failed_pct:>8.2f}%{self.achieved:>9.0f}{self.cpu_per_1000:>9.3f}"
                f"{self.cpu * share:>7.0f}%{self.uac_cpu * share:>6.0f}%"
                f"{self.uas_cpu * share:>5.0f}%{self.others_cpu * share:>7.0f}%"
                f"{self.retransmissions:>8}  {self.verdict:<7}{self.redis_per_op()}")


STEP_HEADER = (f"{'target':<9}{'rnd':>3}{'rate':>7}{'ok':>8}{'failed':>9}{'achieved':>9}"
               f"{'CPU-s':>9}{'server':>8}{'SIPp':>7}{'SIPp':>6}{'others':>8}{'retrans':>8}"
               f"  {'limit':<7}Redis commands\n"
               f"{'':<9}{'':>3}{'/s':>7}{'':>8}{'':>9}{'/s':>9}{'/1000':>9}{'% core':>8}"
               f"{'UAC %':>7}{'UAS %':>6}{'% core':>8}{'':>8}  {'':<7}per operation")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> float:
    """CPU-seconds the whole machine's processes spent (all cores), from /proc/stat: user,
    nice and system, as a process's own time counts them (not interrupts: the loopback
    traffic's own kernel work lands there, and in no process's time)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:3]) / targets.CLK_TCK


def wait_quiet(server: Server, redis: Redis, bound: float) -> None:
    """Until the rest of the machine (all but the server and Redis; no SIPp runs between
    steps) has taken under ``QUIET`` of a core for two seconds in a row; bounded. On a
    shared machine the others' load comes in bursts: a step started in one measures them."""
    deadline, quiet, waited = time.monotonic() + bound, 0, time.monotonic()
    while time.monotonic() < deadline:
        before = machine_cpu() - server.cpu() - cpu_seconds(redis.proc.pid)
        time.sleep(1.0)
        others = machine_cpu() - server.cpu() - cpu_seconds(redis.proc.pid) - before
        quiet = quiet + 1 if others < QUIET else 0
        if quiet == 2:
            if time.monotonic() - waited > 3:
                print(f"  (waited {time.monotonic() - waited:.0f} s for the rest of the "
                      "machine to be quiet)")
            return
    print(f"  (the rest of the machine still busy after {bound:.0f} s; measuring anyway)")


def caller_pace(path: Path) -> tuple[float, float, int]:
    """From a SIPp ``-trace_stat`` file written every second: the rate at which the
    calls ended (``FINISHED`` of them, ok or failed: a few calls whose answer was lost wait
    for their 10 s timeout and would halve the rate of a 10 s step, though the failed share
    counts them), the rate at which it started them (up to its last sample before it had
    started them all) and the most calls it had in progress at once. Between two samples
    the time a count was reached is interpolated."""
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    if not rows:
        return 0.0, 0.0, 0

    def elapsed(row: dict[str, str]) -> float:  # "DATE\tTIME\tEPOCH"
        return (float(row["CurrentTime"].split("\t")[-1])
                - float(row["StartTime"].split("\t")[-1]))

    def ended(row: dict[str, str]) -> int:
        return int(row["SuccessfulCall(C)"]) + int(row["FailedCall(C)"])

    total = int(rows[-1]["OutgoingCall(C)"])
    starting = [r for r in rows if 0 < int(r["OutgoingCall(C)"]) < total and elapsed(r) > 0]
    pace = (int(starting[-1]["OutgoingCall(C)"]) / elapsed(starting[-1]) if starting
            else total / max(elapsed(rows[-1]), 1e-9))
    goal = FINISHED * total
    end_rate = ended(rows[-1]) / max(elapsed(rows[-1]), 1e-9)
    for before, row in itertools.pairwise(rows):
        if ended(row) >= goal > ended(before):
            at = elapsed(before) + (elapsed(row) - elapsed(before)) * (
                (goal - ended(before)) / (ended(row) - ended(before)))
            end_rate = goal / max(at, 1e-9)
            break
    return end_rate, pace, max(int(r["CurrentCall"]) for r in rows)


def run_step(server: Server, uas_port: int, scenario: Scenario, rate: int, seconds: float,
             redis: Redis, round_: int, work: Path) -> Step:
    """One step; the UAS listens on the port the server names as its backend."""
    calls = int(rate * seconds)
    # Calls open at once, at most: each holds a socket of its own (-t un below).
    open_calls = min(max(rate * 4, 100), resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200)
    common = ["-i", "127.0.0.1", "-bind_local", "-nostdin", "-ci", "127.0.0.1"]
    uas = subprocess.Popen(
        ["sipp", "-sf", str(scenario.uas), "-p", str(uas_port), "-cp", str(free_port()),
         *common, "-timeout", str(int(seconds * 3 + 30))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    stf = work / f"uac-{rate}.csv"
    cpu_before, redis_before = server.cpu(), redis.commands()
    # The caller's CPU: it is reaped by the end of its run, the UAS and the server not yet.
    uac_before, machine_before = children_cpu(), machine_cpu()
    redis_cpu_before = cpu_seconds(redis.proc.pid)
    t0 = time.monotonic()
    limit = int(seconds * 2 + 20)
    try:
        subprocess.run(
            ["sipp", "-sf", str(scenario.uac), f"127.0.0.1:{server.sip_port}",
             *scenario.uac_args, "-p", str(free_port()), "-cp", str(free_port()), *common,
             # A socket per call: the calls come from many ports, as from many phones, and
             # spread over sipgw's workers (SO_REUSEPORT hashes the source address).
             "-t", "un", "-max_socket", str(open_calls + 50),
             "-m", str(calls), "-r", str(rate), "-l", str(open_calls),
             # A call whose answer was lost fails after 10 s instead of waiting for ever.
             "-recv_timeout", "10000", "-timeout", str(limit),
             "-trace_stat", "-stf", str(stf), "-fd", "1"],
            stdout=subprocess.DEVNULL, stderr=(work / "uac.err").open("w"), cwd=work,
            timeout=limit + 10)
    except subprocess.TimeoutExpired:
        # SIPp's own -timeout does not end it while calls hang; the step failed anyway
        # (its calls did not complete), and its counters are in the file once a second.
        print(f"  (SIPp UAC still running {limit + 10} s after the start: stopped)")
    elapsed = time.monotonic() - t0
    cpu = server.cpu() - cpu_before
    uac_cpu = children_cpu() - uac_before
    uas_cpu = cpu_seconds(uas.pid)
    machine = machine_cpu() - machine_before
    redis_cpu = cpu_seconds(redis.proc.pid) - redis_cpu_before
    redis_after = redis.commands()
    stop(uas)
    if not stf.exists():
        raise SystemExit("SIPp's caller did not run: "
                         + (work / "uac.err").read_text(errors="replace")[-500:])
    stats = last_stats(stf)
    end_rate, sent_rate, peak_open = caller_pace(stf)
    ok = int(stats.get("SuccessfulCall(C)", 0))
    # A call still open when SIPp was stopped failed too, though SIPp did not count it.
    failed = max(int(stats.get("FailedCall(C)", 0)), int(stats.get("OutgoingCall(C)", 0)) - ok)
    return Step(
        target=server.name, round=round_, rate=rate, ok=ok, failed=failed,
        seconds=elapsed, end_rate=end_rate, cpu=cpu, uac_cpu=uac_cpu, uas_cpu=uas_cpu,
        # This bench's own Python and the kernel's softirqs land here too (a little).
        others_cpu=max(machine - cpu - uac_cpu - uas_cpu - redis_cpu, 0.0),
        sent_rate=sent_rate, peak_open=peak_open, open_cap=open_calls,
        retransmissions=int(stats.get("Retransmissions(C)", 0)),
        redis={name: n - redis_before.get(name, 0) for name, n in redis_after.items()
               if n - redis_before.get(name, 0) > 0},
    )


@contextlib.contextmanager
def start(target: str, work: Path, uas_port: int, redis: Redis,
          args: argparse.Namespace, *, sipgw_extra: str = "") -> Iterator[Server]:
    """The gateway under test, relaying to the SIPp UAS on ``uas_port``. ``sipgw_extra``:
    TOML appended to sipgw's config (bench/overload.py's ``[overload]``)."""
    work.mkdir(parents=True, exist_ok=True)
    if target == "sipgw":
        sip_port = free_port()
        config = SIPGW_CONFIG.format(
            sip_port=sip_port, uas_port=uas_port, redis=redis.url, key_template=KEY_TEMPLATE,
            realm=REALM, work=work,
            trusted='trusted = ["127.0.0.0/8"]' if args.no_auth else "") + sipgw_extra
        python = ("-m", "cProfile", "-o", args.profile) if args.profile else ()
        with targets.sipgw(work, config, sip_port, workers=args.workers,
                           python=python) as server:
            yield server
        return
    defines = {"BACKEND": f'"sip:127.0.0.1:{uas_port}"', "DB_URL": f'"{redis.url}"'}
    if args.no_auth:
        defines["TRUSTED"] = "1"
    # Shared memory holds the transactions (tm keeps each a few seconds after it ends):
    # 512 MB ran out at 6,200 REGISTER/s ("could not allocate shared memory from shm
    # pool"), a limit of this bench's, not of Kamailio's. Pages never touched cost nothing.
    with targets.kamailio(work, "udp-gateway.cfg", defines, shm_mb=2048,
                          modules=(("db_redis.so", "kamailio-redis-modules"),)) as server:
        yield server


def search(start_rate: int, growth: float, max_rate: int, refine: int,
           grain: int) -> Generator[int, bool, None]:
    """The rates to offer, each told back whether it was sustained: ×``growth`` from
    ``start_rate`` (rounded up to ``grain``) until one is not or ``max_rate`` was, then
    ``refine`` halvings of the gap between the highest sustained and the lowest not."""
    low, rate = 0, start_rate
    while True:
        if (yield rate):
            low = rate
            if rate >= max_rate:
                return
            rate = min(max_rate, -(-int(rate * growth) // grain) * grain)
        else:
            high = rate
            break
    for _ in range(refine):
        middle = round((low + high) / 2 / grain) * grain
        if not low < middle < high:
            return
        if (yield middle):
            low = middle
        else:
            high = middle


def given(rates: list[int]) -> Generator[int, bool, None]:
    """``--rates``: each in turn until one is not sustained."""
    for rate in rates:
        if not (yield rate):
            return


def settle(server: Server, work: Path, bound: float = 30.0) -> None:
    """Before the next step, after one that was not sustained: the server idle again (its
    transactions of the step timed out), and sipgw refusing no new request (its overload
    control gives back the share it sheds in steps); bounded."""
    wait_idle(server, bound)
    if server.name != "sipgw":
        return
    client = Client(str(work / "sipgw.ctl"), timeout=5)
    try:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if not any(client.call("stats.fetch", ["core:shed_percent"]).values()):
                return
            time.sleep(0.2)
        print(f"  (sipgw still shedding after {bound:.0f} s; measuring anyway)")
    finally:
        client.close()


def run_target(target: str, round_: int, scenario: Scenario, args: argparse.Namespace,
               redis: Redis, work: Path) -> list[Step]:
    """A fresh server, and its steps at the rates ``args`` asks (a search, or the rates
    given), in the order offered."""
    steps: list[Step] = []
    load = load_average()
    run_work = work / f"{target}-{round_}"
    uas_port = free_port()
    rates = (given(args.rate_list) if args.rate_list else
             search(args.start, args.growth, args.max_rate, args.refine, args.grain))
    with start(target, run_work, uas_port, redis, args) as server:
        print(f"\n[{target}, round {round_}] {server.about}; load average {load}")
        print(STEP_HEADER)
        try:
            rate = next(rates)
            while True:
                for attempt in range(args.retry + 1):
                    if args.quiet_wait:
                        wait_quiet(server, redis, args.quiet_wait)
                    step = run_step(server, uas_port, scenario, rate, args.seconds, redis,
                                    round_, run_work)
                    print(step.row(), flush=True)
                    steps.append(step)
                    if step.sustained:
                        break
                    if step.contended:
                        print(f"  the rest of the machine took {step.others_cpu / step.seconds:.0%}"
                              " of a core meanwhile: inconclusive")
                    if step.sipp_limit:
                        print(f"  not sustained: {step.sipp_limit}; SIPp, not {target}, "
                              "may have been the limit")
                    elif step.failed:
                        print(f"  the last lines of {target}'s log:\n{server.log_tail(5)}")
                    settle(server, run_work)
                    if attempt < args.retry:
                        print(f"  not sustained: {rate}/s offered again")
                rate = rates.send(step.sustained)
        except StopIteration:
            pass
    return steps


def best(steps: list[Step]) -> Step | None:
    """The step at the highest rate sustained."""
    sustained = [s for s in steps if s.sustained]
    return max(sustained, key=lambda s: s.rate) if sustained else None


def at_rate(steps: list[Step], rate: int) -> Step | None:
    return next((s for s in steps if s.rate == rate and s.sustained), None)


def limit(steps: list[Step]) -> tuple[Step | None, str]:
    """The highest rate sustained, and what the rates above it say of the limit: "" when
    the server failed one on its own (the limit lies below it), "≥" when none was offered
    (it lies above), "≥ (SIPp)" or "≥ (busy)" when SIPp set the pace of every one or other
    processes took the CPU (the server's limit is not known)."""
    top = best(steps)
    above = {s.verdict for s in steps
             if not s.sustained and (top is None or s.rate > top.rate)}
    if not above:
        return top, "≥"
    if "server" not in above:
        return top, f"≥ ({'/'.join(sorted(above))} above)"
    return top, ""


def summary(runs: dict[tuple[str, int], list[Step]], operation: str) -> None:
    """A row per run: the highest rate sustained ("≥" when no limit was found above it),
    CPU-s per 1,000 operations and Redis commands per operation there; medians per target;
    with both, the two compared per round and at the highest rate both sustained."""
    print(f"\n{'target':<9}{'round':>6}{'sustained':>22}{'CPU-s per':>11}{'server':>8}"
          f"{'others':>8}  Redis commands per {operation}\n"
          f"{'':<9}{'':>6}{f'{operation}/s':>22}{'1,000':>11}{'% core':>8}{'% core':>8}")
    medians: dict[str, tuple[float, bool]] = {}  # sustained rate, and whether a limit
    for target in TARGETS:
        mine = {round_: steps for (t, round_), steps in runs.items() if t == target}
        if not mine:
            continue
        rates, cpus, bounded = [], [], True
        for round_, steps in mine.items():
            top, mark = limit(steps)
            bounded &= not mark
            if top is None:
                print(f"{target:<9}{round_:>6}{'none':>22}")
                rates.append(0)
                continue
            share = 100.0 / max(top.seconds, 1e-9)
            shown = f"≥{top.rate}{mark[1:]}" if mark else f"{top.rate}"
            print(f"{target:<9}{round_:>6}{shown:>22}{top.cpu_per_1000:>11.3f}"
                  f"{top.cpu * share:>7.0f}%{top.others_cpu * share:>7.0f}%  "
                  f"{top.redis_per_op()}")
            rates.append(top.rate)
            cpus.append(top.cpu_per_1000)
        print(f"{target} median of {len(mine)} ({', '.join(map(str, rates))}): "
              f"{'' if bounded else '≥'}{statistics.median(rates):.0f} {operation}/s with under "
              f"{SUSTAINED_FAILED_PCT} % failed"
              + (f", {statistics.median(cpus):.3f} CPU-s per 1,000 {operation}s there "
                 "(all its processes)" if cpus else ""))
        medians[target] = (statistics.median(rates), bounded)
    if len(medians) == 2:
        (ours, ours_bounded), (theirs, theirs_bounded) = medians["sipgw"], medians["kamailio"]
        if not theirs:
            print("Kamailio sustained none of the rates offered: offer lower rates for the "
                  "ratio")
        elif theirs_bounded:
            print(f"sipgw's sustained rate over Kamailio's (medians): "
                  f"{'' if ours_bounded else '≥'}{ours / theirs:.2f}×")
        else:
            print("Kamailio's limit was not found (see above): no ratio of the rates")
    rounds = sorted({round_ for (t, round_) in runs if t == "kamailio"}
                    & {round_ for (t, round_) in runs if t == "sipgw"})
    for round_ in rounds:
        ours, theirs = runs[("sipgw", round_)], runs[("kamailio", round_)]
        (mine, my_mark), (other, their_mark) = limit(ours), limit(theirs)
        parts = []
        if mine and other and not their_mark:
            parts.append(f"sustained rate {'≥' if my_mark else ''}"
                         f"{mine.rate / other.rate:.2f}× Kamailio's")
        common = [s.rate for s in ours if s.sustained and at_rate(theirs, s.rate)]
        if common:
            rate = max(common)
            a, b = at_rate(ours, rate), at_rate(theirs, rate)
            assert a is not None and b is not None
            parts.append(f"CPU per {operation} {a.cpu_per_1000 / b.cpu_per_1000:.2f}× "
                         f"Kamailio's at {rate}/s, the highest rate both sustained")
        if parts:
            print(f"round {round_}, sipgw: " + "; ".join(parts))


def add_arguments(ap: argparse.ArgumentParser, *, start: int, grain: int,
                  max_rate: int) -> None:
    ap.add_argument("--target", choices=(*TARGETS, "both"), default="sipgw")
    ap.add_argument("--rounds", type=int, default=None,
                    help="runs of each target (default: 2 with --target both, else 1)")
    ap.add_argument("--rates", default="",
                    help="comma-separated rates, offered in turn until one is not "
                         "sustained (default: a search, see --start)")
    ap.add_argument("--start", type=int, default=start,
                    help="the search's first rate; then x --growth until one is not "
                         "sustained, then --refine halvings of the gap")
    ap.add_argument("--growth", type=float, default=1.25)
    ap.add_argument("--refine", type=int, default=2)
    ap.add_argument("--grain", type=int, default=grain, help="the search's rates' multiple")
    ap.add_argument("--retry", type=int, default=2,
                    help="times a rate not sustained is offered again before it counts (a "
                         "shared machine's moment of contention does not end the search)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="seconds a step waits, at most, for the rest of the machine to "
                         "take under a quarter of a core (0: start at once)")
    ap.add_argument("--max-rate", type=int, default=max_rate)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each step")
    ap.add_argument("--users", type=int, default=1000, help="distinct accounts (digest)")
    ap.add_argument("--workers", type=int, default=None,
                    help="sipgw serve --workers N (not passed when not given)")
    ap.add_argument("--no-auth", action="store_true",
                    help="no digest: loopback is trusted by both servers")
    ap.add_argument("--profile", default="",
                    help="write a cProfile of sipgw to this file (--target sipgw, one "
                         "process: --workers 1)")


def check_arguments(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A bad one: argparse's one-line message and exit code 2. ``args.rate_list``: the
    rates of ``--rates``, empty for a search."""
    try:
        args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        ap.error(f"--rates: not comma-separated numbers: {args.rates!r}")
    if any(r <= 0 for r in args.rate_list):
        ap.error("--rates: each rate must be above 0")
    if min(args.start, args.grain, args.max_rate) <= 0 or args.start > args.max_rate:
        ap.error("--start, --grain, --max-rate: above 0, --start at most --max-rate")
    if args.growth <= 1 or args.refine < 0 or args.retry < 0 or args.quiet_wait < 0:
        ap.error("--growth: above 1; --refine, --retry, --quiet-wait: 0 or more")
    if args.profile and args.target != "sipgw":
        ap.error("--profile profiles sipgw: only with --target sipgw")
    if args.profile and args.workers not in (None, 1):
        ap.error("--profile profiles one process: only with --workers 1 (its default)")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers: at least 1")


def provision(redis: Redis, users: int, work: Path) -> Path:
    """``users`` subscribers in Redis, and SIPp's injection file naming them
    (``USER;REALM;[authentication ...]`` lines, taken in turn)."""
    inf = work / "users.inf"
    inf.write_text("SEQUENTIAL\n" + "".join(
        f"{user};{REALM};[authentication username={user} password={password}]\n"
        for user, password in redis.provision(users, REALM, work)))
    return inf


def main(ap: argparse.ArgumentParser, scenario_for) -> None:
    """Parse the arguments, provision Redis, run the targets interleaved, print the table.
    ``scenario_for(args, inf)``: the bench's Scenario, given SIPp's injection file of the
    provisioned users (``USER;REALM;[authentication ...]`` lines)."""
    args = ap.parse_args()
    check_arguments(ap, args)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # SIPp inherits it
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
        args.workers = 1  # a supervisor's profile would show none of the work
    names = list(TARGETS) if args.target == "both" else [args.target]
    rounds = args.rounds or (2 if args.target == "both" else 1)
    with tempfile.TemporaryDirectory(prefix="sipgw-bench-") as tmp:
        work = Path(tmp)
        redis = Redis(free_port(), work)
        try:
            scenario = scenario_for(args, provision(redis, args.users, work))
            runs = {(target, n): run_target(target, n, scenario, args, redis, work)
                    for n in range(1, rounds + 1) for target in names}
        finally:
            redis.stop()
    summary(runs, scenario.operation)
