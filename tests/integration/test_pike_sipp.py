"""Pike against a real sipgw: one loopback address floods, is blocked and released, while a
SIPp client on another loopback address keeps being served.

The flooder is a plain UDP socket on 127.0.0.2 sending OPTIONS to sipgw itself (each would
get a 200); SIPp runs on 127.0.0.1. Loopback is not trusted here (``auth.trusted = []``) and
the backend is on 127.0.0.9, so neither address is exempt from pike.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sipgw.tools.process import SipgwProcess, run_cli
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import build_request, kernel_udp_drops, statistics
from tests.integration.sipp import SippRunner, assert_all_calls_succeeded

pytestmark = pytest.mark.integration

FLOODER = "127.0.0.2"
DENSITY = 50
UNIT = 1
LATENCY = 2
FLOOD = 3000  # datagrams in the first burst


def pike_toml(tmp_path: Path) -> str:
    return (f"[auth]\ntrusted = []\n"
            f'[subscribers]\nurl = "sqlite:///{tmp_path}/subscribers.db"\n'
            f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n'
            f"[pike]\nsampling_time_unit = {UNIT}\nreqs_density_per_unit = {DENSITY}\n"
            f"remove_latency = {LATENCY}\n")


class Flooder:
    """A UDP socket on 127.0.0.2 sending OPTIONS to sipgw and counting the 200s."""

    def __init__(self, gw: SipgwProcess) -> None:
        self.gw = gw
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((FLOODER, 0))
        self.peer = SimpleNamespace(transport="udp",
                                    address=f"{FLOODER}:{self.socket.getsockname()[1]}")
        self.sent = 0
        self.answers = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, n: int) -> None:
        for _ in range(n):
            self.sent += 1
            self.socket.sendto(build_request(
                "OPTIONS", f"sip:{self.gw.address}", peer=self.peer, call_id=f"f{self.sent}",
                branch=f"z9hG4bKflood{self.sent}"), self.gw.hostport)

    def read(self, timeout: float) -> None:
        """Count the answers arriving within ``timeout`` (all that are queued at 0)."""
        self.socket.settimeout(timeout)
        try:
            while True:
                if self.socket.recv(65535).startswith(b"SIP/2.0 200"):
                    self.answers += 1
                self.socket.settimeout(0.0)
        except (BlockingIOError, TimeoutError):
            pass

    def keep_on(self, limit: float) -> threading.Thread:
        """Go on flooding (20 datagrams every 50 ms) in a thread until ``stop()`` or
        ``limit`` seconds, so that the address never gets a quiet moment meanwhile."""

        def run() -> None:
            deadline = time.monotonic() + limit
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.send(20)
                self.read(0.05)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._thread = thread
        return thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            assert not self._thread.is_alive()

    def close(self) -> None:
        self.socket.close()


def ctl_json(gw: SipgwProcess, *args: str):
    done = run_cli("ctl", "-c", str(gw.config_path), "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def pike_stats(gw: SipgwProcess) -> dict[str, int]:
    lines = ctl_json(gw, "stats.get_statistics", "pike:")
    return {k: int(v) for k, v in (line.split(" = ") for line in lines)}


def test_a_flooding_address_is_blocked_and_released_while_another_is_served(
        tmp_path: Path, sipp: SippRunner):
    gw = SipgwProcess(tmp_path / "sipgw", backend="127.0.0.9:5999", auth=True,
                      extra_toml=pike_toml(tmp_path), log_level="info")
    gw.start()
    flood = Flooder(gw)
    try:
        # (sipgw has answered before: the probes of its readiness.)
        answered_before = statistics(gw, "sl:2xx_replies")["sl:2xx_replies"]
        flood.send(FLOOD)
        # Every datagram of the burst is accounted for, by what sipgw and the kernel say:
        # answered 200, dropped by pike, or never read (the kernel's drops on a busy
        # machine).
        counts: dict[str, int] = {}

        def accounted() -> bool:
            counts.update(statistics(gw, "sl:2xx_replies", "pike:dropped_msgs"),
                          kernel=kernel_udp_drops(gw))
            counts["answered"] = counts["sl:2xx_replies"] - answered_before
            return counts["answered"] + counts["pike:dropped_msgs"] + counts["kernel"] >= FLOOD

        wait_until(accounted, timeout=30, what=f"burst not accounted for: {counts}", caller=gw)
        assert counts["answered"] + counts["pike:dropped_msgs"] + counts["kernel"] == FLOOD, \
            counts
        # At most the density of the units the burst spanned was answered; the rest was
        # dropped by pike (every one read after the first few: the kernel's cannot be).
        assert 0 < counts["answered"] <= 3 * DENSITY, counts
        assert counts["pike:dropped_msgs"] > 0, counts
        # The flooder got those answers and no more (a bounded wait for the last ones).
        wait_until(lambda: flood.read(0.1) or flood.answers >= counts["answered"], timeout=10,
                   what=f"answers not received: {flood.answers} of {counts}", caller=gw)
        answered = flood.answers
        assert answered == counts["answered"], (answered, counts)
        flood.keep_on(limit=40)
        stats = pike_stats(gw)
        assert stats["pike:blocked_ips"] == 1
        top = ctl_json(gw, "pike.top")
        assert [(r["ip_addr"], r["status"]) for r in top["list"]] == [(FLOODER, "HOT")]
        shown = run_cli("ctl", "-c", str(gw.config_path), "pike.top")
        assert shown.returncode == 0 and FLOODER in shown.stdout and "HOT" in shown.stdout

        # SIPp on 127.0.0.1 while the flood goes on: every OPTIONS answered.
        uac = sipp.uac("uac_options_self.xml", remote=gw.address, calls=40,
                       rate=20, timeout=20)
        assert_all_calls_succeeded(uac, calls=40)
        flood.stop()
        flood.read(0.2)
        assert flood.answers == answered, (flood.sent, flood.answers)  # blocked throughout
        assert pike_stats(gw)["pike:blocked_ips"] == 1

        # Quiet: released after remove_latency (the sweep runs every unit).
        deadline = time.monotonic() + LATENCY + 3 * UNIT + 10
        while pike_stats(gw)["pike:blocked_ips"] and time.monotonic() < deadline:
            flood.read(0.2)
        assert pike_stats(gw)["pike:blocked_ips"] == 0
        flood.send(1)
        wait_until(lambda: flood.read(0.1) or flood.answers > answered, timeout=10,
                   what="no answer once released", caller=gw)
        assert flood.answers == answered + 1
        log = gw.log_text()
        assert log.count(f"pike: pike blocking {FLOODER} (udp:{FLOODER}:") == 1
        assert log.count(f"pike: releasing {FLOODER}") == 1
        assert "pike blocking 127.0.0.1" not in log
    finally:
        flood.stop()
        flood.close()
        gw.stop()
