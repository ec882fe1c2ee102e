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
the source address to pick one. Each step runs the UAC at a fixed rate for a fixed time
and reads SIPp's counters, the server's CPU time summed over its whole process group
(/proc), SIPp's own CPU (a client-bound number is not the server's) and Redis's
``INFO commandstats``. A run starts a fresh
server and climbs the rates until a step fails more than 0.5 % of its operations or falls
behind 95 % of its rate. ``--target both`` interleaves the runs (sipgw, kamailio, sipgw,
kamailio...), as the machine may be shared, and ends with a table: the rate sustained,
CPU-s per 1,000 operations at that rate and Redis commands per operation.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import targets
from redisdb import KEY_TEMPLATE, Redis
from targets import Server, load_average, stop

from sipgw.tools.loopback import free_port  # targets put the tree on sys.path

REALM = "bench.test"
TARGETS = ("sipgw", "kamailio")
SUSTAINED_FAILED_PCT = 0.5
SUSTAINED_ACHIEVED = 0.95
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
    seconds: float
    cpu: float  # the server's, summed over its processes
    sipp_cpu: float  # the UAC's and the UAS's
    retransmissions: int
    redis: dict[str, int] = field(default_factory=dict)  # commands during the step

    @property
    def failed_pct(self) -> float:
        return 100.0 * self.failed / max(self.ok + self.failed, 1)

    @property
    def achieved(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def sustained(self) -> bool:
        return (self.failed_pct < SUSTAINED_FAILED_PCT
                and self.achieved >= SUSTAINED_ACHIEVED * self.rate)

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
                f"{self.cpu * share:>7.0f}%{self.sipp_cpu * share:>6.0f}%"
                f"{self.retransmissions:>8}  {self.redis_per_op()}")


STEP_HEADER = (f"{'target':<9}{'rnd':>3}{'rate':>7}{'ok':>8}{'failed':>9}{'achieved':>9}"
               f"{'CPU-s':>9}{'server':>8}{'SIPp':>7}{'retrans':>8}  Redis commands\n"
               f"{'':<9}{'':>3}{'/s':>7}{'':>8}{'':>9}{'/s':>9}{'/1000':>9}{'% core':>8}"
               f"{'% core':>7}{'':>8}  per operation")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(server: Server, uas_port: int, scenario: Scenario, rate: int, seconds: float,
             redis: Redis, round_: int, work: Path) -> Step:
    """One step; the UAS listens on the port the server names as its backend."""
    calls = int(rate * seconds)
    # Calls open at once, at most: each holds a socket of its own (-t un below).
    open_calls = min(max(rate * 4, 100), resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200)
    common = ["-i", "127.0.0.1", "-bind_local", "-nostdin", "-ci", "127.0.0.1"]
    # SIPp's CPU: both are reaped by the end of the step; the servers are not yet.
    sipp_before = children_cpu()
    uas = subprocess.Popen(
        ["sipp", "-sf", str(scenario.uas), "-p", str(uas_port), "-cp", str(free_port()),
         *common, "-timeout", str(int(seconds * 3 + 30))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    stf = work / f"uac-{rate}.csv"
    cpu_before, redis_before = server.cpu(), redis.commands()
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
    redis_after = redis.commands()
    stop(uas)
    if not stf.exists():
        raise SystemExit("SIPp's caller did not run: "
                         + (work / "uac.err").read_text(errors="replace")[-500:])
    stats = last_stats(stf)
    ok = int(stats.get("SuccessfulCall(C)", 0))
    # A call still open when SIPp was stopped failed too, though SIPp did not count it.
    failed = max(int(stats.get("FailedCall(C)", 0)), int(stats.get("OutgoingCall(C)", 0)) - ok)
    return Step(
        target=server.name, round=round_, rate=rate, ok=ok, failed=failed,
        seconds=elapsed, cpu=cpu, sipp_cpu=children_cpu() - sipp_before,
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
    # Shared memory holds the transactions (tm keeps each a few seconds after it ends).
    with targets.kamailio(work, "udp-gateway.cfg", defines, shm_mb=512,
                          modules=(("db_redis.so", "kamailio-redis-modules"),)) as server:
        yield server


def run_target(target: str, round_: int, scenario: Scenario, rates: list[int],
               redis: Redis, args: argparse.Namespace, work: Path) -> list[Step]:
    """A fresh server, and its steps up the rates until one is not sustained."""
    steps: list[Step] = []
    load = load_average()
    run_work = work / f"{target}-{round_}"
    uas_port = free_port()
    with start(target, run_work, uas_port, redis, args) as server:
        print(f"\n[{target}, round {round_}] {server.about}; load average {load}")
        print(STEP_HEADER)
        for rate in rates:
            step = run_step(server, uas_port, scenario, rate, args.seconds, redis, round_,
                            run_work)
            print(step.row(), flush=True)
            steps.append(step)
            if not step.sustained:
                if step.failed:
                    print(f"  the last lines of {target}'s log:\n{server.log_tail(5)}")
                break
    return steps


def best(steps: list[Step]) -> Step | None:
    """The step at the highest rate sustained."""
    sustained = [s for s in steps if s.sustained]
    return max(sustained, key=lambda s: s.rate) if sustained else None


def at_rate(steps: list[Step], rate: int) -> Step | None:
    return next((s for s in steps if s.rate == rate and s.sustained), None)


def summary(runs: dict[tuple[str, int], list[Step]], operation: str) -> None:
    """A row per run: the highest rate sustained ("≥" when every rate offered was: the
    limit lies above), CPU-s per 1,000 operations and Redis commands per operation there;
    medians per target; with both, the two compared at the highest rate both sustained."""
    print(f"\n{'target':<9}{'round':>6}{'sustained':>11}{'CPU-s per':>11}  Redis commands "
          f"per {operation}\n{'':<9}{'':>6}{f'{operation}/s':>11}{'1,000':>11}")
    medians: dict[str, tuple[float, bool]] = {}  # sustained rate, and whether a limit
    for target in TARGETS:
        mine = {round_: steps for (t, round_), steps in runs.items() if t == target}
        if not mine:
            continue
        rates, cpus, bounded = [], [], True
        for round_, steps in mine.items():
            top = best(steps)
            if top is None:
                print(f"{target:<9}{round_:>6}{'none':>11}")
                rates.append(0)
                continue
            limit_found = not steps[-1].sustained
            bounded &= limit_found
            shown = f"{'' if limit_found else '≥'}{top.rate}"
            print(f"{target:<9}{round_:>6}{shown:>11}{top.cpu_per_1000:>11.3f}  "
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
            print("Kamailio sustained none of the rates offered: offer lower --rates for the "
                  "ratio")
        elif theirs_bounded:
            print(f"sipgw's sustained rate over Kamailio's: {'' if ours_bounded else '≥'}"
                  f"{ours / theirs:.2f}×")
        else:
            print("Kamailio sustained every rate offered: offer higher --rates for the ratio")
    rounds = sorted({round_ for (t, round_) in runs if t == "kamailio"}
                    & {round_ for (t, round_) in runs if t == "sipgw"})
    ratios = []
    for round_ in rounds:
        ours, theirs = runs[("sipgw", round_)], runs[("kamailio", round_)]
        common = [s.rate for s in ours if s.sustained and at_rate(theirs, s.rate)]
        if common:
            rate = max(common)
            mine, other = at_rate(ours, rate), at_rate(theirs, rate)
            assert mine is not None and other is not None
            ratios.append((rate, mine.cpu_per_1000 / other.cpu_per_1000))
    if ratios:
        print("sipgw's CPU per " + operation + " over Kamailio's at the highest rate both "
              "sustained: " + ", ".join(f"{ratio:.1f}× at {rate}/s" for rate, ratio in ratios))


def add_arguments(ap: argparse.ArgumentParser, *, step: int, max_rate: int) -> None:
    ap.set_defaults(rate_step=step)
    ap.add_argument("--target", choices=(*TARGETS, "both"), default="sipgw")
    ap.add_argument("--rounds", type=int, default=None,
                    help="runs of each target (default: 2 with --target both, else 1)")
    ap.add_argument("--rates", default="",
                    help=f"comma-separated rates (default {step}, {2 * step}, ... up to "
                         "--max-rate, until one is not sustained)")
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


def parse_rates(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        ap.error(f"--rates: not comma-separated numbers: {args.rates!r}")
    if any(r <= 0 for r in rates):
        ap.error("--rates: each rate must be above 0")
    if args.profile and args.target != "sipgw":
        ap.error("--profile profiles sipgw: only with --target sipgw")
    if args.profile and args.workers not in (None, 1):
        ap.error("--profile profiles one process: only with --workers 1 (its default)")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers: at least 1")
    return rates or list(range(args.rate_step, args.max_rate + 1, args.rate_step))


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
    rates = parse_rates(ap, args)
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
            runs = {(target, n): run_target(target, n, scenario, rates, redis, args, work)
                    for n in range(1, rounds + 1) for target in names}
        finally:
            redis.stop()
    summary(runs, scenario.operation)
