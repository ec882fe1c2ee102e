#!/usr/bin/env python3
"""WebSocket capacity of one sipgw process: memory per registered connection, and
registrations per second with 100 clients connecting at once.

sipgw.tools.wsload (N WebSocket connections, each REGISTERs and stays open) → sipgw
(ws listener) → SIPp UAS answering REGISTER over UDP. Two phases:

1. rate: ``--rate-count`` connections, ``--concurrency`` connecting/registering at once,
   closed again; prints registrations/s, sipgw's CPU per registration and the load
   client's own CPU (a client-bound number is not the proxy's);
2. memory: ``--count`` connections registered and held; sipgw's PSS (/proc/PID/smaps_rollup)
   before and while they are held, divided by the count.

    .venv/bin/python bench/ws.py                           # 10,000 held, 2,000 for the rate
    .venv/bin/python bench/ws.py --count 1000 --rate-count 500

Everything listens on 127.0.0.1 and every process is stopped at the end. Numbers go in
notes, not in test asserts. No digest (loopback is trusted): sipgw's WebSocket edge is
measured, not the subscriber store (bench/register.py measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from calls import cpu_seconds, free_port, wait_options_200

from sipgw.tools.wsload import run_load

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE.parent / "tests" / "integration" / "scenarios"


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError("no Pss in smaps_rollup")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="connections held (memory)")
    ap.add_argument("--rate-count", type=int, default=2_000, help="registrations (rate)")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--hold", type=float, default=2.0, help="seconds to hold them")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.count + 100 > hard:
        raise SystemExit(f"need {args.count + 100} file descriptors, the limit is {hard}")

    with tempfile.TemporaryDirectory(prefix="sipgw-bench-ws-") as tmp:
        work = Path(tmp)
        sip_port, ws_port, uas_port = free_port(), free_port(), free_port()
        (work / "sipgw.toml").write_text(
            f'[listen]\nudp = ["127.0.0.1:{sip_port}"]\ntcp = []\nws = ["127.0.0.1:{ws_port}"]\n'
            f'[dispatcher]\ndestinations = ["sip:127.0.0.1:{uas_port}"]\nping_interval = 0\n'
            f'[auth]\ntrusted = ["127.0.0.0/8"]\n'
            f"[limits]\nws_max_connections = {args.count + 1000}\n"
            f"ws_max_connections_per_address = {args.count + 1000}\nws_register_timeout = 0\n"
            f'[control]\nsocket = "{work}/sipgw.ctl"\n[state]\ndirectory = "{work}"\n'
            f'[log]\nlevel = "warning"\n'
        )
        uas = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "uas_register.xml"), "-i", "127.0.0.1",
             "-p", str(uas_port), "-bind_local", "-ci", "127.0.0.1", "-cp", str(free_port()),
             "-t", "u1", "-m", str(10 * (args.count + args.rate_count)), "-nostdin"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = (work / "sipgw.log").open("w")
        gw = subprocess.Popen([sys.executable, "-m", "sipgw", "serve", "-c",
                               str(work / "sipgw.toml")], stdout=log, stderr=log)
        url = f"ws://127.0.0.1:{ws_port}/"
        try:
            wait_options_200(sip_port, time.monotonic() + 15)
            # Warm-up: imports and first allocations are not per-connection costs.
            asyncio.run(run_load(url, count=200, concurrency=args.concurrency))

            cpu0 = cpu_seconds(gw.pid)
            rate = asyncio.run(run_load(url, count=args.rate_count, concurrency=args.concurrency,
                                        first=100_000))
            gw_cpu = cpu_seconds(gw.pid) - cpu0
            print(f"rate ({args.concurrency} at once): {rate.report()}")
            print(f"  sipgw CPU {gw_cpu:.2f} s = {1000 * gw_cpu / max(rate.registered, 1):.3f} "
                  f"ms per registration")

            time.sleep(1.0)  # let the closed connections' state go (bench only; not a test)
            before = pss_kb(gw.pid)
            seen: dict[str, int] = {}

            def measure() -> None:
                seen["pss"] = pss_kb(gw.pid)

            held = asyncio.run(run_load(url, count=args.count, concurrency=args.concurrency,
                                        hold=args.hold, while_held=measure, first=200_000))
            print(f"memory: {held.report()}")
            grown = seen["pss"] - before
            print(f"  sipgw PSS {before} kB -> {seen['pss']} kB with {held.registered} "
                  f"registered connections: {grown / max(held.registered, 1):.1f} kB each")
        finally:
            for proc in (gw, uas):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
