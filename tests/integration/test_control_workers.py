"""One control plane for a service of two workers: a real ``sipgw serve --workers 2``, real
SIPp callers and backend, asked with the real ``sipgw`` commands, as an operator would.

The kernel spreads clients over the workers by a hash of their address, so each test
sends from new source ports until both workers have had their share (each one's own
socket, ``sipgw ctl -w N``, says what it handled), then checks what the service's socket
shows against that.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sipgw.tools.loopback import free_port
from sipgw.tools.options import NoAnswer, ping
from sipgw.tools.process import SipgwProcess, run_cli
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import SipgwRunner
from tests.integration.sipp import SippRunner
from tests.integration.test_ws_sipp import WsSipgw
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration

MAX_CALLERS = 16  # SIPp callers, each from its own port: both workers get calls long before


def ctl(gw: SipgwProcess, *args: str) -> Any:
    """``sipgw ctl --json ARGS`` on the service's socket (``-w N`` first: one worker's)."""
    done = run_cli("ctl", "-c", str(gw.config_path), "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def handled(gw: SipgwProcess, worker: int, name: str = "core:fwd_requests") -> int:
    return ctl(gw, "-w", str(worker), "stats.fetch", name)[name.replace(":", ".")]


def start(sipgw: SipgwRunner, tmp_path: Path, backend: str, extra: str = "") -> SipgwProcess:
    return sipgw(backend=backend, workers=2, log_level="info",
                 extra_toml=f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n{extra}')


class Trace:
    """``sipgw trace --json`` running: every record it printed, read by a thread."""

    def __init__(self, config: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("SIPGW_CONFIG", "JOURNAL_STREAM")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sipgw", "trace", "-c", str(config), "--json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.records: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.records.append(json.loads(line))

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(10)
        return self.proc.stderr.read() if self.proc.stderr else ""


def subscribed(trace: Trace, gw: SipgwProcess) -> None:
    """Pings sipgw until the trace shows one: from then on it sees every worker."""

    def seen() -> bool:
        try:
            ping(f"sip:{gw.address}", timeout=0.5)
        except (NoAnswer, OSError):
            pass
        return any(r.get("method") == "OPTIONS" for r in trace.records)

    wait_until(seen, timeout=15, what="sipgw trace never showed a message", caller=gw)


def test_counters_destinations_metrics_and_trace_cover_both_workers(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path,
):
    uas = sipp.uas("uas_call.xml", timeout=60, calls=1000)
    metrics_port = free_port()
    gw = start(sipgw, tmp_path, uas.address,
               f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    trace = Trace(gw.config_path)
    try:
        subscribed(trace, gw)
        calls = 0
        call_ids: set[str] = set()
        for _ in range(MAX_CALLERS):
            uac = sipp.uac("uac_call.xml", remote=gw.address, timeout=10)
            assert uac.wait(20) == 0, uac.describe()
            calls += 1
            call_ids |= {m.header("Call-ID") for m in uac.messages() if m.method == "INVITE"}
            if handled(gw, 0) and handled(gw, 1):
                break
        per_worker = [handled(gw, 0), handled(gw, 1)]
        assert all(per_worker), f"{calls} callers all reached one worker: {per_worker}"

        # Counters: what each worker forwarded, summed; per call INVITE, ACK, BYE.
        stats = run_cli("stats", "-c", str(gw.config_path), "--json", "core:")
        assert stats.returncode == 0, stats.stderr
        service = json.loads(stats.stdout)
        assert service["core:fwd_requests"] == sum(per_worker) == 3 * calls
        assert service["core:fwd_replies"] == 3 * calls  # 180, 200 and 200 to the BYE

        # The one destination, once, with the requests both workers sent it.
        listing = ctl(gw, "dispatcher.list")
        assert listing["NRSETS"] == 1
        [record] = listing["RECORDS"]
        [target] = record["SET"]["TARGETS"]
        requests = [ctl(gw, "-w", str(w), "dispatcher.list")["RECORDS"][0]["SET"]["TARGETS"][0]
                    ["DEST"]["STATS"]["REQUESTS"] for w in (0, 1)]
        assert target["DEST"]["STATS"]["REQUESTS"] == sum(requests) > 0
        assert all(requests)

        # /metrics: one page, the sums, the load per worker, and each worker's facts.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as page:
            text = page.read().decode()
        assert f"sipgw_core_fwd_requests_total {float(3 * calls)}" in text.splitlines()
        for w in ("0", "1"):
            assert f'sipgw_worker_up{{worker="{w}"}} 1.0' in text
            assert f'sipgw_load_reactor_lag_us{{worker="{w}"}}' in text

        # The trace saw every INVITE, whichever worker handled it, and says which.
        def traced() -> set[str]:
            return {r["call_id"] for r in trace.records
                    if r.get("method") == "INVITE" and r["dir"] == "in"}

        wait_until(lambda: call_ids <= traced(), timeout=10,
                   what="sipgw trace missed INVITEs", caller=gw)
        workers = {r["worker"] for r in trace.records if r.get("call_id") in call_ids}
        assert workers == {0, 1}
    finally:
        trace.stop()


def test_a_killed_worker_is_restarted_counted_and_traced_again(
    sipgw: SipgwRunner, tmp_path: Path,
):
    gw = start(sipgw, tmp_path, "127.0.0.1:9")
    before = ctl(gw, "core.workers")
    assert [(w["index"], w["ready"], w["restarts"]) for w in before] == [(0, True, 0),
                                                                         (1, True, 0)]
    uptime = ctl(gw, "core.uptime")["uptime"]
    trace = Trace(gw.config_path, "-m", "OPTIONS")
    try:
        subscribed(trace, gw)
        killed_at = time.time()
        os.kill(before[1]["pid"], signal.SIGKILL)

        def restarted() -> bool:
            w1 = ctl(gw, "core.workers")[1]
            return w1["ready"] and w1["pid"] != before[1]["pid"]

        wait_until(restarted, timeout=20, what="worker 1 not restarted", caller=gw)
        after = ctl(gw, "core.workers")
        assert (after[0]["pid"], after[0]["restarts"]) == (before[0]["pid"], 0)
        assert (after[1]["restarts"], after[1]["last_exit"]) == (1, "signal 9")
        top = run_cli("top", "-c", str(gw.config_path), "--json", "-n", "1")
        assert top.returncode == 0, top.stderr
        assert [(w["index"], w["restarts"]) for w in json.loads(top.stdout)["workers"]] == [
            (0, 0), (1, 1)]
        # The service is as old as it was: a worker's restart does not make it younger.
        assert ctl(gw, "core.uptime")["uptime"] >= uptime

        # The trace that ran through the restart shows the new worker 1's messages.
        def traced_by_new_worker() -> bool:
            try:
                ping(f"sip:{gw.address}", timeout=0.5)
            except (NoAnswer, OSError):
                pass
            return any(r.get("worker") == 1 and r["time"] > killed_at for r in trace.records)

        wait_until(traced_by_new_worker, timeout=15, caller=gw,
                   what="the restarted worker's messages never reached the trace")
    finally:
        trace.stop()


def test_commands_reach_every_worker_and_answer_once(sipgw: SipgwRunner, tmp_path: Path):
    gw = start(sipgw, tmp_path, "127.0.0.1:9")
    done = run_cli("log", "level", "-c", str(gw.config_path), "debug")
    assert done.returncode == 0, done.stderr
    assert [ctl(gw, "-w", str(w), "log.level")["name"] for w in (0, 1)] == ["debug", "debug"]
    assert ctl(gw, "log.level")["name"] == "debug"
    assert ctl(gw, "cfg.get", "core", "debug") == 3

    # A destination taken down by the operator is down in every worker; one that is not
    # listed is refused once, not once per worker.
    assert ctl(gw, "dispatcher.set_state", "ip", "1", "sip:127.0.0.1:9") is None
    for w in (0, 1):
        dest = ctl(gw, "-w", str(w), "dispatcher.list")["RECORDS"][0]["SET"]["TARGETS"][0]
        assert dest["DEST"]["FLAGS"] == "IP"
    refused = run_cli("ctl", "-c", str(gw.config_path), "dispatcher.set_state", "ap", "1",
                      "sip:192.0.2.1:5060")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("sipgw: dispatcher.set_state: destination not found: "
                                      "set 1 sip:192.0.2.1:5060")

    # The service's own facts come from the supervisor: its pid, its socket.
    info = ctl(gw, "core.info")
    assert (info["pid"], info["workers"], info["control"]) == (gw.pid, 2,
                                                               str(tmp_path / "sipgw.ctl"))

    # cfg.reload: a bad file is refused once, with its line; a good one reaches both.
    good = gw.config_path.read_text()
    gw.write_config(good.replace("[proxy]\n", "[proxy]\nmax_forwards = -1\n", 1))
    bad = run_cli("ctl", "-c", str(gw.config_path), "cfg.reload")
    assert bad.returncode == 1
    assert bad.stderr.count("max_forwards") == 1 and "sipgw.toml:" in bad.stderr, bad.stderr
    gw.write_config(good.replace("[log]", "[timers]\nt1 = 0.6\n\n[log]"))
    mark = len(gw.log_text())
    assert ctl(gw, "cfg.reload")["reloaded"] == str(gw.config_path)
    for w in (0, 1):
        gw.wait_for_log(rf"w{w} INFO service: reloaded", after=mark)
        assert ctl(gw, "-w", str(w), "cfg.get", "timers", "t1") == 0.6

    # What every worker holds the same is shown once; the help of a worker's method too.
    assert ctl(gw, "cfg.get", "proxy", "max_forwards") == 70
    assert ctl(gw, "system.methodHelp", "dlg.list").startswith("Active dialogs")
    assert "core.workers" in ctl(gw, "system.listMethods")


def test_websocket_connections_of_both_workers_are_listed_once_and_closed_one_by_id(
    tmp_path: Path,
):
    gw = WsSipgw(tmp_path / "sipgw", ws_port=free_port("tcp"), backend="127.0.0.1:9",
                 workers=2, log_level="info",
                 extra_toml=f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n')
    peers: list[WsPeer] = []
    with gw:
        try:
            for _ in range(MAX_CALLERS):
                peers.append(WsPeer(gw.ws_address))
                held = [ctl(gw, "-w", str(w), "ws.dump")["info"]["wscounter"] for w in (0, 1)]
                if all(held):
                    break
            assert all(held), f"{len(peers)} connections all went to one worker"
            listed = run_cli("ws", "list", "-c", str(gw.config_path), "--json")
            assert listed.returncode == 0, listed.stderr
            dump = json.loads(listed.stdout)
            assert dump["info"]["wscounter"] == len(peers)
            by_port = {int(c["src"].rsplit(":", 1)[1]): c for c in dump["connections"]}
            assert sorted(by_port) == sorted(p.port for p in peers)
            assert len({c["id"] for c in dump["connections"]}) == len(peers)  # ids unique
            for w in (0, 1):  # each entry names the worker that holds it
                own = {c["id"] for c in ctl(gw, "-w", str(w), "ws.dump")["connections"]}
                assert own == {c["id"] for c in dump["connections"] if c["worker"] == w}
            assert ctl(gw, "core.connections")["connections"]["ws"] == len(peers)

            # Closing one by its id closes that one, in the worker holding it, and no other.
            victim = next(p for p in peers if by_port[p.port]["worker"] == 1)
            closed = run_cli("ws", "close", "-c", str(gw.config_path),
                             str(by_port[victim.port]["id"]))
            assert closed.returncode == 0, closed.stderr
            wait_until(lambda: victim.receive(0.1) is None and victim.closed is not None,
                       timeout=5, what="the connection was not closed", caller=gw)
            victim.close()  # as a browser does, on sipgw's close frame
            others = sorted(p.port for p in peers if p is not victim)

            def listed_ports() -> list[int]:
                return sorted(int(c["src"].rsplit(":", 1)[1])
                              for c in ctl(gw, "ws.dump")["connections"])

            wait_until(lambda: listed_ports() == others, timeout=10, caller=gw,
                       what="ws.dump did not list exactly the connections left")
        finally:
            for peer in peers:
                peer.close()


class WildcardSipgw(SipgwProcess):
    """Listening on 0.0.0.0: the workers' own sockets are bound there too."""

    def config_text(self, **kw) -> str:
        return super().config_text(**kw).replace(f'"127.0.0.1:{self.port}"',
                                                 f'"0.0.0.0:{self.port}"')


def test_core_workers_shows_the_address_each_worker_writes_in_via_not_a_wildcard(
    tmp_path: Path,
):
    from tests.integration.sipgw_process import UdpPeer, build_request

    with UdpPeer() as backend:
        gw = WildcardSipgw(tmp_path / "gw", backend=backend.address, workers=2,
                           log_level="info",
                           extra_toml=f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n')
        with gw, UdpPeer(gw.address) as phone:
            table = ctl(gw, "core.workers")
            assert [w["backend_bound"].split(":")[0] for w in table] == ["0.0.0.0"] * 2
            advertised = {w["backend_address"] for w in table}
            assert advertised == {f"127.0.0.1:{w['backend_bound'].rsplit(':', 1)[1]}"
                                  for w in table}
            phone.send(build_request("OPTIONS", "sip:alice@example.com", peer=phone,
                                     call_id="where@test", branch="z9hG4bKwhere"))
            forwarded = backend.expect("OPTIONS", timeout=5)
            top = forwarded.headers("Via")[0]
            assert top.split()[1].split(";")[0] in advertised, top
