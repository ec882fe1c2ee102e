"""The servers the benchmarks measure, and what they read of them.

A server under test is sipgw (``sipgw serve``) or Debian's Kamailio 5.6 configured as the
same gateway (``bench/kamailio/``). Each is started in its own session, so its processes
are one process group: Kamailio's main process and the workers it forks, sipgw's
supervisor and workers when it runs several (``--workers N``). CPU time and PSS are summed
over the whole group and any descendant that left it (/proc), never read from one pid.

Shared by bench/ws.py, bench/register.py and bench/calls.py (through bench/sipprate.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sipgw.tools.kamailio import KamailioProcess, kamailio_executable  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
KAMAILIO_CONFIGS = HERE / "kamailio"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError("no Pss in smaps_rollup")


def group_pids(pgid: int) -> list[int]:
    """Every process of a server: its process group (the main process and the workers it
    forked), and any descendant that left the group (a worker in a session of its own)."""
    parents: dict[int, int] = {}
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        if int(fields[2]) == pgid:
            pids.add(pid)
    for pid in parents:
        ancestor = parents[pid]
        while ancestor > 1 and ancestor not in pids and ancestor != pgid:
            ancestor = parents.get(ancestor, 0)
        if ancestor == pgid or ancestor in pids:
            pids.add(pid)
    return sorted(pids)


def _sum_over(pids: list[int], read) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += read(pid)
        except OSError:
            continue  # exited between the listing and the read
    return total


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_options_200(port: int, deadline: float, proc: subprocess.Popen, log: Path) -> None:
    """Bounded poll: sipgw is ready when it answers an OPTIONS to itself; its log's end when
    it exits first (a bad option, a bad config)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.1)
        me = s.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                raise SystemExit(f"sipgw exited with {proc.returncode} before it was ready:\n"
                                 f"{tail}")
            n += 1
            msg = (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKbenchready{n}\r\n"
                f"From: <sip:bench@127.0.0.1>;tag=b\r\nTo: <sip:127.0.0.1:{port}>\r\n"
                f"Call-ID: ready-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                f"Content-Length: 0\r\n\r\n"
            )
            s.sendto(msg.encode(), ("127.0.0.1", port))
            try:
                if s.recv(65535).startswith(b"SIP/2.0 200"):
                    return
            except TimeoutError:
                continue
    raise SystemExit("sipgw did not answer OPTIONS in time")


@dataclass(slots=True)
class Server:
    """A server under test, started in its own session so its processes are one group.
    ``sip_port``: its UDP SIP listener on 127.0.0.1; ``ws_url`` when it has a WebSocket one."""

    name: str
    sip_port: int
    pgid: int
    about: str
    log: Path
    ws_url: str = ""

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        return group_pids(self.pgid)

    def cpu(self) -> float:
        return _sum_over(self.pids(), cpu_seconds)

    def pss_kb(self) -> int:
        return int(_sum_over(self.pids(), pss_kb))


def wait_idle(server: Server, bound: float = 20.0) -> None:
    """Until the server has stopped spending CPU (what the last load left behind torn
    down: connections, transactions), so that the next measure is not charged for it;
    bounded."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        cpu = server.cpu()
        time.sleep(0.5)
        if server.cpu() - cpu < 0.02:
            return
    print(f"  ({server.name} still busy after {bound:.0f} s; measuring anyway)")


@contextlib.contextmanager
def sipgw(work: Path, config: str, sip_port: int, *, workers: int | None = None,
          ws_url: str = "", python: tuple[str, ...] = ()) -> Iterator[Server]:
    """``sipgw serve`` on ``config`` (TOML text; its UDP listener on ``sip_port``), ready when
    it answers OPTIONS. ``--workers N`` only when ``workers`` is given, so that the bench
    runs a sipgw that has no such option too. ``python``: interpreter options before
    ``-m sipgw`` (a profiler)."""
    path = work / "sipgw.toml"
    path.write_text(config)
    command = [sys.executable, *python, "-m", "sipgw", "serve", "-c", str(path)]
    if workers is not None:
        command += ["--workers", str(workers)]
    with (work / "sipgw.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_options_200(sip_port, time.monotonic() + 15, proc, work / "sipgw.log")
        server = Server("sipgw", sip_port, proc.pid, "", work / "sipgw.log", ws_url)
        count = len(server.pids())
        server.about = (f"sipgw, {f'--workers {workers}' if workers else 'proxy.workers'}"
                        f" ({count} process{'es' if count > 1 else ''})")
        yield server
    finally:
        stop(proc)


@contextlib.contextmanager
def kamailio(work: Path, config: str, defines: Mapping[str, str], *, tcp: bool = True,
             modules: tuple[tuple[str, str], ...] = (), shm_mb: int = 64,
             pkg_mb: int = 8) -> Iterator[Server]:
    """Kamailio on ``bench/kamailio/CONFIG`` with these ``#!define``s, ready when it answers
    OPTIONS. ``tcp``: a TCP listener beside the UDP one (HTTP and WebSocket for
    ws-gateway.cfg; for udp-gateway.cfg only so that its ``tcp_children`` exist, as in
    the reference setup). ``modules``: (module file, Debian package) pairs the config
    loads beyond Kamailio's own package, checked first so that a missing one is named."""
    executable = kamailio_executable()
    if executable is None:
        raise SystemExit("kamailio is not installed (Debian package kamailio; ./scripts/setup "
                         "installs it)")
    version = subprocess.run([executable, "-v"], capture_output=True, text=True).stdout
    for module, package in modules:
        if not list(Path("/usr/lib").glob(f"*/kamailio/modules/{module}")):
            raise SystemExit(f"Kamailio's {module} is not installed (Debian package {package}; "
                             "./scripts/setup installs it)")
    process = KamailioProcess(KAMAILIO_CONFIGS / config, work, ws=tcp, executable=executable,
                              defines=dict(defines), shm_mb=shm_mb, pkg_mb=pkg_mb)
    try:
        process.start().wait_ready(15)
        assert process.pid is not None
        about = (f"{version.split(chr(10))[0].removeprefix('version: ').strip()}, children=4 "
                 f"tcp_children=4 ({len(group_pids(process.pid))} processes)")
        yield Server("kamailio", process.udp_port, process.pid, about, process.log_path,
                     process.ws_url if tcp else "")
    finally:
        process.stop()
