#!/usr/bin/env python3
"""Two sipgw nodes on one machine: the registration storm after a node dies, and the
REGISTER rate of two nodes against one Redis beside one node's.

1. **storm** (``--storm 1000,10000``): nodes A (127.0.0.2) and B (127.0.0.3), each
   ``--storm-workers`` workers, behind nginx (B as ``backup``, so that every phone starts
   on A), on one Redis, in front of Kamailio's ``registrar.cfg`` (the tests' Asterisk
   stand-in, routing by Path). ``sipgw.tools.wsload`` registers N phones with digest
   through nginx, then node A is killed (SIGKILL to its whole process group). The phones
   reconnect with JsSIP's back-off (2 s, then floor(random × 2^n + 1) s up to 30) and
   register again on B; the time from the kill until the first, the median, the 99th
   percentile and the last is back, the failures on the way, and B's CPU.
2. **rate** (``--rates``): bench/register.py's digest REGISTER (SIPp → sipgw over UDP →
   SIPp UAS, subscribers in one Redis) against one node, then against two nodes at once,
   each offered half of the rate (``--workers`` per node, 1 by default: a node per core).

    .venv/bin/python bench/cluster.py                                 # both parts
    .venv/bin/python bench/cluster.py --storm 1000 --rates ""         # the storm alone
    .venv/bin/python bench/cluster.py --storm "" --rates 800,1600,2400 --seconds 8

Everything listens on loopback and every process is stopped at the end. Numbers go in
notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import register
import sipprate
import targets
from redisdb import Redis
from targets import load_average

from sipgw.rpc.client import Client  # targets put the tree on sys.path
from sipgw.tools.cluster import Node, shared_toml
from sipgw.tools.kamailio import KamailioProcess, kamailio_executable
from sipgw.tools.loopback import free_port
from sipgw.tools.nginx import Nginx
from sipgw.tools.process import run_cli
from sipgw.tools.wsload import Backoff, Fleet, InThread, _cpu

HERE = Path(__file__).resolve().parent
REGISTRAR = HERE.parent / "tests" / "browser" / "kamailio" / "registrar.cfg"
DOMAIN = "bench.test"
PASSWORD = "storm-pw"
FIRST = 100000
BACK_WITHIN = 240.0  # seconds: the storm's bound, far above what it should take
# Each nginx worker has the open-files limit to itself (two descriptors per phone).
NGINX_WORKERS = 4


def storm(count: int, args: argparse.Namespace, work: Path, redis: Redis) -> None:
    kamailio = kamailio_executable()
    if kamailio is None:
        raise SystemExit("kamailio is not installed (Debian package kamailio)")
    registrar = KamailioProcess(REGISTRAR, work, executable=kamailio, shm_mb=512)
    control = Path(tempfile.mkdtemp(prefix="sipgw-bc-"))
    shared = shared_toml(subscribers=f'url = "{redis.url}"', realm=DOMAIN,
                         nonce_secret="bench-nonce")
    nodes: list[Node] = []
    nginx = None
    runner = InThread()
    fleet = None
    try:
        registrar.start().wait_ready(15)
        for name, host in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
            node = Node(work / f"node-{name}", host=host, backend=f"127.0.0.1:{registrar.udp_port}",
                        shared_toml=shared, route_secret="bench-route", control_dir=control,
                        workers=args.storm_workers, log_level="warning")
            nodes.append(node)
            node.start(ready_timeout=60)
        a, b = nodes
        csv = work / "storm.csv"
        csv.write_text("username,password\n"
                       + "".join(f"{FIRST + i},{PASSWORD}\n" for i in range(count)))
        done = run_cli("users", "import", str(csv), "-c", str(a.config_path), timeout=300)
        if done.returncode:
            raise SystemExit(done.stderr)
        nginx = Nginx(work / "nginx", [a.ws_address, b.ws_address], backup=True,
                      workers=NGINX_WORKERS).start()
        fleet = Fleet(nginx.ws_url, count=count, concurrency=100, first=FIRST,
                      password=PASSWORD, domain=DOMAIN, timeout=60, reconnect=Backoff())
        start = runner.run(fleet.connect(), timeout=BACK_WITHIN)
        print(f"\n[storm of {count}] load average {load_average()}; {count} phones on node A "
              f"({args.storm_workers} workers per node): {start.report()}")
        cpu_b = targets.Server("b", b.port, b.pid or 0, "", b.log_path).cpu()
        with Client(str(b.control_socket), timeout=60) as client:
            on_b = {user for conn in client.call("ws.dump", [])["connections"]
                    for user in conn["users"]}
        lost = [p for p in fleet.phones if f"sip:{p.account.user}@{DOMAIN}" not in on_b]
        client_cpu = _cpu()
        killed = time.monotonic()  # before: phones see their connections close at once
        a.kill()
        deadline = killed + BACK_WITHIN
        while (sum(p.registered and p.lost_at >= killed for p in lost) < len(lost)
               and time.monotonic() < deadline):
            time.sleep(0.05)  # a bounded poll of the fleet's counters
        missing = [p for p in lost if not (p.registered and p.lost_at >= killed)]
        if missing:
            print(f"  not back after {BACK_WITHIN:.0f} s: {len(missing)}, e.g. " + ", ".join(
                f"{p.account.user} (registered {p.registered}, lost {p.lost_at - killed:.1f} s, "
                f"attempts {p.attempts}, open {not fleet.clients[p.index].closed})"
                for p in missing[:5]))
        back = sorted(p.registered_at - killed for p in lost
                      if p.registered and p.lost_at >= killed)
        cpu_b = targets.Server("b", b.port, b.pid or 0, "", b.log_path).cpu() - cpu_b
        client_cpu = _cpu() - client_cpu
        if not back:
            raise SystemExit("no phone came back")
        attempts = [p.attempts for p in fleet.phones]
        print(f"  kill -9 of node A: {len(back)} of the {len(lost)} phones it held "
              f"(nginx had put {count - len(lost)} on B) registered again on node B; "
              f"first {back[0]:.2f} s, median {statistics.median(back):.2f} s, "
              f"p99 {back[int(0.99 * (len(back) - 1))]:.2f} s, last {back[-1]:.2f} s after "
              f"the kill; {len(back) / max(back[-1] - back[0], 1e-3):.0f} registrations/s "
              f"once they came")
        print(f"  failures on the way: {dict(fleet.failures) or 'none'}; phones still "
              f"retrying: {sum(a > 0 for a in attempts)}; node B's CPU during the storm "
              f"{cpu_b:.1f} s, the phones' (this process) {client_cpu:.1f} s")
    finally:
        if fleet is not None:
            with contextlib.suppress(Exception):
                runner.call(fleet.close)
        runner.stop()
        if nginx is not None:
            nginx.stop()
        for node in nodes:
            if node.alive():
                node.stop()
        registrar.stop()
        shutil.rmtree(control, ignore_errors=True)


def outside_ephemeral_port() -> int:
    """A port below the kernel's ephemeral range, free for UDP and TCP: each step starts
    its UAS anew there while the other node's SIPp caller holds thousands of ephemeral
    ports (a socket per call), one of which could otherwise be the UAS's."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in range(low - 1, 1024, -1):
        if port not in _given and all(_bindable(port, kind) for kind in
                                      (socket.SOCK_DGRAM, socket.SOCK_STREAM)):
            _given.add(port)
            return port
    raise SystemExit("no free port below the ephemeral range")


_given: set[int] = set()


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def rates(args: argparse.Namespace, work: Path, redis: Redis) -> None:
    """One node, then two at once each given half the rate, up the rates until a step is
    not sustained; the same SIPp steps as bench/register.py (sipprate.run_step)."""
    inf = sipprate.provision(redis, args.users, work)
    scenario = register.scenario(args, inf)
    table = []
    for count in (1, 2):
        with contextlib.ExitStack() as stack:
            servers = []
            for i in range(count):
                uas_port = outside_ephemeral_port()
                node_work = work / f"rate-{count}-{i}"
                server = stack.enter_context(sipprate.start("sipgw", node_work, uas_port,
                                                            redis, args))
                servers.append((server, uas_port, node_work))
            print(f"\n[{count} node{'s' if count > 1 else ''}] {servers[0][0].about} each; "
                  f"load average {load_average()}\n{sipprate.STEP_HEADER}")
            if count > 1:
                print("(a row per node and step; the Redis column counts every node's "
                      "commands over that node's REGISTERs)")
            best = None
            for rate in args.rate_list:
                steps: list[sipprate.Step] = []

                def one(server, uas_port: int, node_work: Path, share: int, steps=steps) -> None:
                    steps.append(sipprate.run_step(server, uas_port, scenario, share,
                                                   args.seconds, redis, 1, node_work))

                threads = [threading.Thread(target=one, args=(*node, rate // count))
                           for node in servers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                for step in steps:
                    print(step.row(), flush=True)
                if not all(s.sustained for s in steps):
                    break
                best = (rate, sum(s.cpu_per_1000 * s.ok for s in steps) / sum(s.ok for s in steps))
            table.append((count, best))
    print("\nnodes  sustained REGISTER/s  CPU-s per 1,000 (all nodes' processes)")
    for count, best in table:
        print(f"{count:>5}  {best[0] if best else 'none':>20}  "
              f"{f'{best[1]:.3f}' if best else '-':>10}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storm", default="1000,10000", help="phones on the node that dies")
    ap.add_argument("--storm-workers", type=int, default=2, help="workers per node (storm)")
    ap.add_argument("--rates", default="600,1200,1800,2400,3000,3600",
                    help="total REGISTER/s offered, step by step (\"\" skips)")
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each rate step")
    ap.add_argument("--users", type=int, default=1000, help="accounts SIPp registers")
    ap.add_argument("--workers", type=int, default=1, help="workers per node (rate)")
    args = ap.parse_args()
    # SIGTERM (timeout, a shell) stops every process this started, as the end of a run does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.no_auth, args.profile = False, ""  # what sipprate.start and register read
    try:
        storms = [int(n) for n in args.storm.split(",") if n.strip()]
        args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        ap.error("--storm and --rates: comma-separated numbers")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # phones, SIPp's sockets
    with tempfile.TemporaryDirectory(prefix="sipgw-bench-cluster-") as tmp:
        work = Path(tmp)
        redis = Redis(free_port(), work)
        try:
            for count in storms:
                storm(count, args, work / f"storm-{count}", redis)
            if args.rate_list:
                rates(args, work, redis)
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
