#!/usr/bin/env python3
"""Calls per second through one sipgw process: SIPp UAC → sipgw (UDP) → SIPp UAS.

Each step runs INVITE→200→ACK→BYE→200 calls (no auth) at a fixed rate for a fixed time and
reads SIPp's own counters; the result is the highest rate with under 0.5 % failed calls,
and sipgw's CPU time (user+system, from /proc) per call at each step.

    .venv/bin/python bench/calls.py                       # 200, 400, ... until it breaks
    .venv/bin/python bench/calls.py --rates 800,1000,1200 --seconds 15
    .venv/bin/python bench/calls.py --profile prof.out    # cProfile of sipgw, for the note

Everything listens on 127.0.0.1 and every process is stopped at the end. Numbers go in
notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sipgw.tools.loopback import free_port  # noqa: E402

SCENARIOS = HERE / "scenarios"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_options_200(port: int, deadline: float) -> None:
    """Bounded poll: sipgw is ready when it answers an OPTIONS to itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.1)
        me = s.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
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


def last_stats(path: Path) -> dict[str, str]:
    with path.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False))


def run_step(
    rate: int, seconds: float, proxy_port: int, uas_port: int, sipgw_pid: int, work: Path
) -> dict:
    """One step; the UAS listens on the port sipgw's config names as its backend."""
    uac_port = free_port()
    calls = int(rate * seconds)
    common = ["-i", "127.0.0.1", "-bind_local", "-nostdin", "-ci", "127.0.0.1"]
    uas = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "uas.xml"), "-p", str(uas_port), "-cp",
         str(free_port()), *common, "-timeout", str(int(seconds * 3 + 30))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
    )
    stf = work / f"uac-{rate}.csv"
    before = cpu_seconds(sipgw_pid)
    t0 = time.monotonic()
    uac = subprocess.run(
        ["sipp", "-sf", str(SCENARIOS / "uac.xml"), f"127.0.0.1:{proxy_port}",
         "-p", str(uac_port), "-cp", str(free_port()), *common,
         "-m", str(calls), "-r", str(rate), "-l", str(max(rate * 4, 100)),
         "-timeout", str(int(seconds * 2 + 20)), "-trace_stat", "-stf", str(stf), "-fd", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
    )
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(sipgw_pid) - before
    uas.send_signal(signal.SIGTERM)
    try:
        uas.wait(5)
    except subprocess.TimeoutExpired:
        uas.kill()
    stats = last_stats(stf)
    ok = int(stats.get("SuccessfulCall(C)", 0))
    failed = int(stats.get("FailedCall(C)", 0))
    return {
        "rate": rate,
        "calls": calls,
        "ok": ok,
        "failed": failed,
        "failed_pct": 100.0 * failed / max(ok + failed, 1),
        "elapsed": elapsed,
        "achieved": ok / elapsed if elapsed else 0.0,
        "cpu_ms_per_call": 1000.0 * cpu / max(ok, 1),
        "cpu_util": cpu / elapsed if elapsed else 0.0,
        "uac_exit": uac.returncode,
        "retrans": int(stats.get("Retransmissions(C)", 0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="", help="comma-separated calls/s (default: 200, 400, ...)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each step")
    ap.add_argument("--max-rate", type=int, default=3000)
    ap.add_argument("--profile", default="", help="write a cProfile of sipgw to this file")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r] or list(range(200, args.max_rate + 1, 200))

    with tempfile.TemporaryDirectory(prefix="sipgw-bench-") as tmp:
        work = Path(tmp)
        proxy_port = free_port()
        uas_port = free_port()
        config = work / "sipgw.toml"
        config.write_text(
            f'[listen]\nudp = ["127.0.0.1:{proxy_port}"]\ntcp = []\nws = []\n'
            f'[dispatcher]\ndestinations = ["sip:127.0.0.1:{uas_port}"]\n'
            # The SIPp backend does not answer OPTIONS: probes would take it out of service.
            f"ping_interval = 0\n"
            # This bench measures relaying; the SIPp caller is a trusted source (no digest).
            f'[auth]\ntrusted = ["127.0.0.0/8"]\n'
            f'[log]\nlevel = "warning"\n'
        )
        cmd = [sys.executable]
        if args.profile:
            cmd += ["-m", "cProfile", "-o", os.path.abspath(args.profile)]
        cmd += ["-m", "sipgw", "serve", "-c", str(config)]
        log = (work / "sipgw.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            wait_options_200(proxy_port, time.monotonic() + 15)
            print(f"{'rate':>6} {'calls':>7} {'ok':>7} {'failed%':>8} {'achieved':>9} "
                  f"{'cpu ms/call':>12} {'cpu util':>9} {'retrans':>8}")
            best = 0
            for rate in rates:
                r = run_step(rate, args.seconds, proxy_port, uas_port, proc.pid, work)
                print(f"{r['rate']:>6} {r['calls']:>7} {r['ok']:>7} {r['failed_pct']:>7.2f}% "
                      f"{r['achieved']:>9.0f} {r['cpu_ms_per_call']:>12.3f} "
                      f"{r['cpu_util']:>8.0%} {r['retrans']:>8}", flush=True)
                sustained = r["failed_pct"] < 0.5 and r["achieved"] >= 0.95 * rate
                if sustained:
                    best = max(best, rate)
                else:
                    break
            print(f"highest sustained rate: {best} calls/s (under 0.5 % failed calls)")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
