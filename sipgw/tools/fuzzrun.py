"""A fuzz run against a real ``sipgw serve``: the proxy as users run it, hit over UDP, TCP
and WebSocket by ``sipgw.tools.fuzz.Sender``, then judged from the outside. Messages come
in chunks alternately from 127.0.0.1 (challenged: the AUTH step parses the credentials) and
127.0.0.2 (trusted: what parses is relayed to the backend and its answers come back).
``core.memory``'s python_blocks, read at the start and after each pass, shows whether
anything accumulates; the RSS read after the last ``core.memory`` (which collects and
trims, as sipgw does by itself once a minute) shows what the run left resident.

The sipgw has UDP+TCP on one port, WS on another, digest auth on (a SQLite store in its
work directory, realm sipgw.test; no bans, so the fuzzing address keeps reaching the AUTH
code; 127.0.0.2 trusted), pike off (one loopback source sending thousands of requests per
second is what pike is for; this run is about hostile bytes, not floods), T1 = 100 ms so
transactions end within seconds, and a ``Responder`` backend answering 200. Afterwards: no
Traceback and no "internal error" in its log, ``sipgw ctl core.uptime`` answers, every
transaction has ended (``tm:inuse_transactions`` = 0, a bounded poll), and its RSS is read
from /proc: at start (once ready), peak (VmHWM) and at the end.

Used by ``tests/integration/test_fuzz_sipgw.py`` (a bounded run in CI) and
``bench/fuzz.py`` (the 100,000-message run); it needs no test framework.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sipgw.rpc.client import Client, RemoteError, Unreachable
from sipgw.tools.fuzz import Mutator, Responder, Sender, SendReport, load_seeds
from sipgw.tools.loopback import LOOPBACK, free_port
from sipgw.tools.process import SipgwProcess, run_cli

TRUSTED = "127.0.0.2"
CHUNK = 500
BAD_LOG = re.compile(r"Traceback|internal error|Unhandled error", re.IGNORECASE)
SETTLE_TIMEOUT = 30.0


class FuzzSipgw(SipgwProcess):
    """The test sipgw with a WebSocket listener, auth on a SQLite store, pike off."""

    def __init__(self, workdir: Path, **options) -> None:
        workdir = Path(workdir)
        self.ws_port = free_port("tcp")
        extra = (f'[subscribers]\nurl = "sqlite:///{workdir}/subscribers.db"\n'
                 f'[auth]\nrealm = "sipgw.test"\ntrusted = ["{TRUSTED}/32"]\n'
                 "max_failures_user = 1000000\n"
                 'max_failures_source = 1000000\n'
                 "[pike]\nenabled = false\n"
                 "[timers]\nt1 = 0.1\n"
                 f'[control]\nsocket = "{workdir}/sipgw.ctl"\n')
        super().__init__(workdir, auth=True, extra_toml=extra, log_level="info", **options)

    @property
    def ws_address(self) -> str:
        return f"{LOOPBACK}:{self.ws_port}"

    def config_text(self, **kw) -> str:
        return super().config_text(**kw).replace("ws = []\n", f'ws = ["{self.ws_address}"]\n', 1)

    def ctl(self, *args: str):
        return run_cli("ctl", "-c", str(self.config_path), *args)

    def call(self, method: str, *params):
        """One JSON-RPC call over the control socket, as sipgw ctl makes it; None if none."""
        try:
            return Client(str(self.workdir / "sipgw.ctl"), timeout=5).call(method, list(params))
        except (OSError, Unreachable, RemoteError):
            return None

    def stat(self, name: str) -> int | None:
        lines = self.call("stats.get_statistics", name)
        if lines is None:
            return None
        for line in lines:
            key, _, value = line.partition(" = ")
            if key.strip() == name:
                return int(value)
        return None

    def memory_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM): resident now and at its peak, in kB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        return int(values["VmRSS"]), int(values["VmHWM"])


@dataclass(slots=True)
class ProxyFuzzReport:
    sent: SendReport
    rss_start_kb: int = 0
    rss_peak_kb: int = 0
    rss_end_kb: int = 0
    rss_after_kb: list[int] = field(default_factory=list)  # at the end of each pass, settled
    blocks: list[int] = field(default_factory=list)  # core.memory python_blocks: start, passes
    bad_log_lines: list[str] = field(default_factory=list)
    uptime_answer: str = ""
    inuse_transactions: int | None = None
    backend_answered: int = 0

    def text(self) -> str:
        return (
            f"{self.sent.text()}\nbackend answered {self.backend_answered} requests; "
            f"RSS start {self.rss_start_kb} kB, peak {self.rss_peak_kb} kB, end "
            f"{self.rss_end_kb} kB (after each pass, settled: "
            f"{', '.join(map(str, self.rss_after_kb))} kB); Python heap blocks at start "
            f"and after each pass {', '.join(map(str, self.blocks))}; "
            "tm:inuse_transactions at the end "
            f"{self.inuse_transactions}; core.uptime: {self.uptime_answer or 'NO ANSWER'};"
            f" bad log lines: {len(self.bad_log_lines)}"
            + "".join(f"\n  {line}" for line in self.bad_log_lines[:10])
        )


def fuzz_running_sipgw(workdir: Path, count: int, *, seeds: list[Path], seed: int = 1,
                       passes: int = 1, progress=None) -> ProxyFuzzReport:
    """Start a FuzzSipgw, throw ``count`` mutated messages at it ``passes`` times (new
    messages each time), judge it, stop it. The messages are mutations of the built-in ones
    and of the files in ``seeds`` (the RFC 4475 torture set in ``tests/data/torture``).

    RSS after a pass is read once every transaction has ended, but before ``core.memory``
    trims: the heap freed since the last once-a-minute trim may still be counted. The end
    RSS is read after it, so it is what the run left; a second pass that ends where the
    first did is the sign that nothing accumulates."""
    with Responder() as backend:
        gw = FuzzSipgw(workdir, backend=backend.address)
        with gw:
            report = ProxyFuzzReport(sent=SendReport())
            report.rss_start_kb = gw.memory_kb()[0]
            report.blocks.append(gw.call("core.memory")["python_blocks"])
            mutator = Mutator(load_seeds(seeds), seed)
            senders = [Sender(mutator, udp=gw.address, tcp=gw.address, ws=gw.ws_address,
                              local=local) for local in (LOOPBACK, TRUSTED)]
            try:
                for n, start in enumerate(range(0, count * passes, CHUNK)):
                    senders[n % 2].run(min(CHUNK, count * passes - start), start)
                    done = start + CHUNK
                    if progress is not None and done % 10_000 == 0:
                        progress(done, gw.memory_kb())
                    if done % count == 0 or done >= count * passes:
                        report.inuse_transactions = _settled(gw)
                        report.rss_after_kb.append(gw.memory_kb()[0])
                        report.blocks.append(gw.call("core.memory")["python_blocks"])
                report.sent = _merged([s.report for s in senders])
            finally:
                for sender in senders:
                    sender.close()
            report.rss_end_kb, report.rss_peak_kb = gw.memory_kb()
            uptime = gw.ctl("core.uptime", "--json")
            report.uptime_answer = uptime.stdout.strip() if uptime.returncode == 0 else ""
            report.backend_answered = backend.answered
        report.bad_log_lines = [line for line in gw.log_text().splitlines()
                                if BAD_LOG.search(line)]
    return report


def _merged(reports: list[SendReport]) -> SendReport:
    out = SendReport()
    for r in reports:
        out.sent += r.sent
        out.connections += r.connections
        out.replies += r.replies
        out.probes += r.probes
        out.probe_failures += r.probe_failures
        out.seconds += r.seconds
    return out


def _settled(gw: FuzzSipgw) -> int | None:
    """Bounded poll until no transaction is left (timers at T1 = 100 ms end them)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        inuse = gw.stat("tm:inuse_transactions")
        if inuse == 0 or time.monotonic() > deadline:
            return inuse
        try:
            gw._require_started().wait(0.2)  # returns early only if sipgw died
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"sipgw exited during the fuzz run\n{gw.describe()}")
