#!/usr/bin/env python3
"""Calls, or REGISTERs with digest, offered at 1x, 2x and 4x sipgw's capacity: what it
completes, and how fast.

SIPp callers on several loopback addresses → sipgw (UDP) → a SIPp backend answering every
call (bench/scenarios/uas.xml). With ``--register``, phones registering with digest
(REGISTER → 401 → REGISTER with credentials → 200; subscribers provisioned in sipgw's
SQLite store with ``sipgw users import``) and a backend accepting every REGISTER. The
capacity is measured first: sipgw's CPU time per call
at a rate it keeps up with, hence the calls a second one core gives it. Each step then
offers a multiple of it for a fixed time and reports, for the calls completed during the
step: goodput (calls a second, and as a share of the capacity), the callers'
retransmissions, the time from INVITE to its 200 (p50, p99: SIPp's -trace_rtt), what sipgw
refused with 503 or dropped unread (core:shed_*), sipgw's CPU, and the time from the
step's end until sipgw takes every new call again.

    .venv/bin/python bench/overload.py                      # 1x, 2x, 4x, 10 s each
    .venv/bin/python bench/overload.py --factors 2,4 --seconds 15 --no-shed
    .venv/bin/python bench/overload.py --register

``--no-shed`` runs the same with ``[overload] enabled = false``: the collapse it prevents.
Everything listens on loopback and every process is stopped at the end. Numbers go in
notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import csv
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sipgw.rpc.client import Client
from sipgw.tools.loopback import free_port
from sipgw.tools.process import SipgwProcess, run_cli

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
TEST_SCENARIOS = HERE.parent / "tests" / "integration" / "scenarios"
REALM = "bench.test"
USERS = 5000
CALLERS = [f"127.0.3.{n}" for n in range(1, 5)]
CALIBRATION_RATE = 400
CALIBRATION_SECONDS = 3.0


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


def provision(gw: SipgwProcess, work: Path) -> None:
    """USERS subscribers in sipgw's store, and SIPp's injection file naming them."""
    gw.workdir.mkdir(parents=True, exist_ok=True)
    gw.write_config(gw.config_text())
    accounts = work / "accounts.csv"
    accounts.write_text("username,password\n" + "".join(
        f"{7000 + i},pw{i}\n" for i in range(USERS)))
    done = run_cli("users", "import", str(accounts), "-c", str(gw.config_path), timeout=120)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    (work / "users.inf").write_text("SEQUENTIAL\n" + "".join(
        f"{7000 + i};{REALM};[authentication username={7000 + i} password=pw{i}]\n"
        for i in range(USERS)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factors", default="1,2,4", help="multiples of the capacity offered")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    ap.add_argument("--no-shed", action="store_true", help="[overload] enabled = false")
    ap.add_argument("--register", action="store_true", help="REGISTERs with digest, not calls")
    args = ap.parse_args()
    factors = [float(f) for f in args.factors.split(",")]

    with tempfile.TemporaryDirectory(prefix="sipgw-bench-") as tmp:
        work = Path(tmp)
        uas_port = free_port()
        if args.register:
            uas, flow, what = TEST_SCENARIOS / "uas_register.xml", [
                str(TEST_SCENARIOS / "uac_register_auth.xml"), "-inf", str(work / "users.inf")
            ], "REGISTERs"
        else:
            uas, flow, what = SCENARIOS / "uas.xml", [str(SCENARIOS / "uac.xml")], "calls"
        backend = subprocess.Popen(
            ["sipp", "-sf", str(uas), "-i", "127.0.0.1", "-p", str(uas_port),
             "-bind_local", "-nostdin", "-ci", "127.0.0.1", "-cp", str(free_port()),
             "-buff_size", str(4 << 20), "-timeout", "3600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        extra = (f'[control]\nsocket = "{work}/sipgw.ctl"\n[pike]\nenabled = false\n'
                 f'[state]\ndirectory = "{work}"\n'
                 + (f'[auth]\nrealm = "{REALM}"\n' if args.register else "")
                 + ("[overload]\nenabled = false\n" if args.no_shed else ""))
        gw = SipgwProcess(work / "sipgw", backend=f"127.0.0.1:{uas_port}", log_level="warning",
                          extra_toml=extra, auth=args.register)
        if args.register:
            provision(gw, work)
        gw.start()
        client = Client(str(work / "sipgw.ctl"), timeout=5)
        proxy = gw.address

        def shed() -> dict[str, int]:
            got = client.call("stats.fetch", ["core:shed_503", "core:shed_dropped",
                                              "core:shed_percent"])
            return {k.split(".", 1)[1]: v for k, v in got.items()}

        try:
            cpu = gw.cpu_seconds()
            calibration = callers(work, "calibration", proxy, CALIBRATION_RATE,
                                  CALIBRATION_SECONDS, flow)
            for proc in calibration:
                proc.wait(CALIBRATION_SECONDS + 30)
            done = sum(int(last_row(work / f"calibration-{n}.csv")["SuccessfulCall(C)"])
                       for n in range(len(CALLERS)))
            capacity = done / (gw.cpu_seconds() - cpu)
            print(f"capacity: {capacity:.0f} {what}/s on one core ({done} at "
                  f"{CALIBRATION_RATE}/s; sipgw {'without' if args.no_shed else 'with'} "
                  "overload control)")
            print(f"{'offered':>9} {'x':>4} {'goodput':>8} {'share':>6} {'retrans':>8} "
                  f"{'p50 ms':>7} {'p99 ms':>7} {'503':>7} {'dropped':>8} {'cpu':>5} "
                  f"{'recover s':>9}")
            for factor in factors:
                rtt_before = set(work.glob("*_rtt.csv"))
                before, cpu = shed(), gw.cpu_seconds()
                step = f"x{factor:g}"
                procs = callers(work, step, proxy, factor * capacity, args.seconds, flow)
                started = time.monotonic()
                time.sleep(args.seconds)  # the step itself
                stop(procs)
                elapsed = time.monotonic() - started
                cpu = (gw.cpu_seconds() - cpu) / elapsed
                after = shed()
                ended = time.monotonic()
                rows = [last_row(work / f"{step}-{n}.csv") for n in range(len(CALLERS))]
                ok = sum(int(r["SuccessfulCall(C)"]) for r in rows)
                retrans = sum(int(r["Retransmissions(C)"]) for r in rows)
                times = sorted(response_times_ms(work, rtt_before))
                p50 = statistics.median(times) if times else float("nan")
                p99 = times[int(len(times) * 0.99)] if times else float("nan")
                deadline = ended + 60
                while shed().get("shed_percent", 0) and time.monotonic() < deadline:
                    time.sleep(0.1)
                recover = time.monotonic() - ended
                print(f"{factor * capacity:>9.0f} {factor:>4g} {ok / elapsed:>8.0f} "
                      f"{ok / elapsed / capacity:>6.0%} {retrans:>8} {p50:>7.0f} {p99:>7.0f} "
                      f"{after.get('shed_503', 0) - before.get('shed_503', 0):>7} "
                      f"{after.get('shed_dropped', 0) - before.get('shed_dropped', 0):>8} "
                      f"{cpu:>5.0%} {recover:>9.1f}", flush=True)
                time.sleep(3)  # the callers' last retransmissions die out
        finally:
            client.close()
            gw.stop()
            backend.send_signal(signal.SIGTERM)
            backend.wait(10)


if __name__ == "__main__":
    main()
