#!/usr/bin/env python3
"""Authenticated REGISTER/s through one sipgw process, subscribers in a real Redis.

SIPp UAC (REGISTER → 401 → REGISTER with digest → 200) → sipgw (UDP) → SIPp UAS answering
REGISTER. Users are provisioned with ``sipgw users import``; each step runs at a fixed rate
for a fixed time and reads SIPp's counters, sipgw's CPU time (/proc) and Redis's own
``INFO commandstats``: the result is the highest rate with under 0.5 % failed REGISTERs,
and the Redis round trips per authenticated REGISTER (HGETALL calls / REGISTERs).

    .venv/bin/python bench/register.py                          # 400, 800, ... until it breaks
    .venv/bin/python bench/register.py --rates 1000,1200 --seconds 15

Everything listens on 127.0.0.1 and every process is stopped at the end. Numbers go in
notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from calls import cpu_seconds, last_stats, wait_options_200

from sipgw.tools.loopback import free_port  # calls.py put the tree on sys.path

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE.parent / "tests" / "integration" / "scenarios"
REALM = "bench.test"


def redis_command(port: int, *args: str) -> bytes:
    payload = b"".join([f"*{len(args)}\r\n".encode()] + [
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        return s.recv(1 << 20)


def start_redis(port: int, work: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if redis_command(port, "PING") == b"+PONG\r\n":
                return proc
        except OSError:
            pass
        try:
            proc.wait(0.02)
        except subprocess.TimeoutExpired:
            continue
        raise SystemExit("redis-server exited")
    raise SystemExit("redis-server did not answer PING in time")


def hgetall_calls(port: int) -> int:
    info = redis_command(port, "INFO", "commandstats").decode()
    m = re.search(r"cmdstat_hgetall:calls=(\d+)", info)
    return int(m.group(1)) if m else 0


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_step(rate: int, seconds: float, proxy_port: int, uas_port: int, redis_port: int,
             sipgw_pid: int, inf: Path, work: Path) -> dict:
    calls = int(rate * seconds)
    common = ["-i", "127.0.0.1", "-bind_local", "-nostdin", "-ci", "127.0.0.1"]
    uas = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "uas_register.xml"), "-p", str(uas_port), "-cp",
         str(free_port()), *common, "-timeout", str(int(seconds * 3 + 30))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    stf = work / f"uac-{rate}.csv"
    cpu_before, lookups_before = cpu_seconds(sipgw_pid), hgetall_calls(redis_port)
    t0 = time.monotonic()
    uac = subprocess.run(
        ["sipp", "-sf", str(SCENARIOS / "uac_register_auth.xml"), f"127.0.0.1:{proxy_port}",
         "-inf", str(inf), "-p", str(free_port()), "-cp", str(free_port()), *common,
         "-m", str(calls), "-r", str(rate), "-l", str(max(rate * 4, 100)),
         "-timeout", str(int(seconds * 2 + 20)), "-trace_stat", "-stf", str(stf), "-fd", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(sipgw_pid) - cpu_before
    lookups = hgetall_calls(redis_port) - lookups_before - 1  # INFO itself is not HGETALL
    stop(uas)
    stats = last_stats(stf)
    ok = int(stats.get("SuccessfulCall(C)", 0))
    failed = int(stats.get("FailedCall(C)", 0))
    return {
        "rate": rate, "calls": calls, "ok": ok, "failed": failed,
        "failed_pct": 100.0 * failed / max(ok + failed, 1),
        "achieved": ok / elapsed if elapsed else 0.0,
        "cpu_ms": 1000.0 * cpu / max(ok, 1),
        "cpu_util": cpu / elapsed if elapsed else 0.0,
        "lookups_per_register": (lookups + 1) / max(ok + failed, 1),
        "uac_exit": uac.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="", help="comma-separated REGISTER/s (default 400, 800...)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each step")
    ap.add_argument("--users", type=int, default=1000, help="distinct accounts registering")
    ap.add_argument("--max-rate", type=int, default=4000)
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r] or list(range(400, args.max_rate + 1, 400))

    with tempfile.TemporaryDirectory(prefix="sipgw-bench-") as tmp:
        work = Path(tmp)
        proxy_port, uas_port, redis_port = free_port(), free_port(), free_port()
        redis = start_redis(redis_port, work)
        config = work / "sipgw.toml"
        config.write_text(
            f'[listen]\nudp = ["127.0.0.1:{proxy_port}"]\ntcp = []\nws = []\n'
            f'[dispatcher]\ndestinations = ["sip:127.0.0.1:{uas_port}"]\nping_interval = 0\n'
            f'[subscribers]\nurl = "redis://127.0.0.1:{redis_port}/2"\n'
            f'[auth]\nrealm = "{REALM}"\n'
            f'[control]\nsocket = "{work}/sipgw.ctl"\n'
            f'[pike]\nenabled = false\n'
            f'[log]\nlevel = "warning"\n')
        accounts = work / "accounts.csv"
        accounts.write_text("username,password\n" + "".join(
            f"{7000 + i},pw{i}\n" for i in range(args.users)))
        subprocess.run([sys.executable, "-m", "sipgw", "users", "import", str(accounts),
                        "-c", str(config)], check=True)
        inf = work / "users.inf"
        inf.write_text("SEQUENTIAL\n" + "".join(
            f"{7000 + i};{REALM};[authentication username={7000 + i} password=pw{i}]\n"
            for i in range(args.users)))
        log = (work / "sipgw.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "sipgw", "serve", "-c", str(config)],
                                stdout=log, stderr=log)
        try:
            wait_options_200(proxy_port, time.monotonic() + 15)
            print(f"{'rate':>6} {'REGs':>7} {'ok':>7} {'failed%':>8} {'achieved':>9} "
                  f"{'cpu ms/REG':>11} {'cpu util':>9} {'HGETALL/REG':>12}")
            best = 0
            for rate in rates:
                r = run_step(rate, args.seconds, proxy_port, uas_port, redis_port, proc.pid,
                             inf, work)
                print(f"{r['rate']:>6} {r['calls']:>7} {r['ok']:>7} {r['failed_pct']:>7.2f}% "
                      f"{r['achieved']:>9.0f} {r['cpu_ms']:>11.3f} {r['cpu_util']:>8.0%} "
                      f"{r['lookups_per_register']:>12.3f}", flush=True)
                if r["failed_pct"] < 0.5 and r["achieved"] >= 0.95 * rate:
                    best = max(best, rate)
                else:
                    break
            print(f"highest sustained rate: {best} authenticated REGISTER/s "
                  "(under 0.5 % failed)")
        finally:
            stop(proc)
            stop(redis)


if __name__ == "__main__":
    main()
