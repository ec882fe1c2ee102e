"""``sipgw top`` in a real terminal (tmux), against a real sipgw: it draws, and its numbers
move when traffic arrives."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.sipgw_process import SipgwRunner, TcpPeer, UdpPeer, build_request

pytestmark = pytest.mark.integration


class Tmux:
    """One detached tmux server of its own (-L), 140x45, killed at the end."""

    def __init__(self, name: str) -> None:
        self.tmux = shutil.which("tmux")
        assert self.tmux, "tmux is not installed (Debian package tmux): run ./scripts/setup"
        self.name = name

    def run(self, *args: str) -> str:
        return subprocess.run([self.tmux, "-L", self.name, *args], capture_output=True,
                              text=True, timeout=10).stdout

    def start(self, command: list[str]) -> None:
        env = " ".join(f"{k}={v}" for k, v in (("PYTHONPATH", os.environ.get("PYTHONPATH", "")),))
        # A tmux server started without a terminal may put COLUMNS=80 and LINES=24 in its
        # global environment (seen here with tmux 3.3a), and rich takes them over the
        # pane's real size: top would draw in 80x24.
        self.run("new-session", "-d", "-x", "140", "-y", "45", "-s", "top",
                 f"env -u COLUMNS -u LINES {env} TERM=xterm-256color " + " ".join(command))

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def wait_for(self, predicate, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"tmux screen never matched:\n{text}")
            time.sleep(0.1)  # between looks of a bounded poll of the screen

    def kill(self) -> None:
        self.run("kill-server")


def requests_count(screen: str) -> int | None:
    match = re.search(r"│ requests\s+(\d+)", screen)
    return int(match.group(1)) if match else None


def connections(screen: str, transport: str) -> str | None:
    """A row of the connections panel (core.connections): its count, or "off"."""
    match = re.search(rf"│ {transport} +(\S+) +│", screen)
    return match.group(1) if match else None


def test_top_draws_in_a_terminal_and_its_numbers_follow_the_traffic(
    sipgw: SipgwRunner, tmp_path: Path,
):
    gw = sipgw(backend="127.0.0.1:9", extra_toml=f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    tmux = Tmux(f"sipgw-top-{os.getpid()}")
    try:
        tmux.start([sys.executable, "-m", "sipgw", "top", "-c", str(gw.config_path),
                    "--interval", "0.3"])
        # Down to the dispatcher, the last panel: the whole dashboard fits in 24 lines (the
        # height top is drawn with here).
        screen = tmux.wait_for(lambda s: requests_count(s) is not None and "dispatcher" in s)
        for panel in ("traffic", "transactions", "auth", "dialogs", "load", "dispatcher"):
            assert panel in screen
        before = requests_count(screen)
        with UdpPeer(gw.address) as peer:
            for n in range(5):
                peer.send(build_request("OPTIONS", f"sip:{gw.address}", peer=peer,
                                        call_id=f"top-{n}", branch=f"z9hG4bK-top-{n}"))
                peer.expect("200")
        screen = tmux.wait_for(lambda s: (requests_count(s) or 0) >= before + 5)
        assert re.search(r"requests/s\s+[1-9]", screen) or requests_count(screen) >= before + 5

        # Connections by transport follow a TCP client coming and going.
        assert (connections(screen, "udp"), connections(screen, "tcp"),
                connections(screen, "ws")) == ("listening", "0", "off")
        with TcpPeer(gw.address) as peer:
            peer.send(build_request("OPTIONS", f"sip:{gw.address};transport=tcp", peer=peer,
                                    call_id="top-tcp", branch="z9hG4bK-top-tcp"))
            peer.expect("200")
            tmux.wait_for(lambda s: connections(s, "tcp") == "1")
        tmux.wait_for(lambda s: connections(s, "tcp") == "0")
    finally:
        tmux.kill()
