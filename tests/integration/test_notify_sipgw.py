"""A real ``sipgw serve`` under a fake systemd: READY once listening, RELOADING then READY on
SIGHUP, STOPPING on SIGTERM, all on the NOTIFY_SOCKET it is given."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.integration.sipgw_process import SipgwRunner

pytestmark = pytest.mark.integration


def next_message(s: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in s.recv(4096).decode().splitlines())


def test_sipgw_tells_systemd_ready_reloading_and_stopping(sipgw: SipgwRunner, tmp_path: Path,
                                                          monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        gw = sipgw(backend="127.0.0.1:9",
                   extra_toml=f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
        ready = next_message(s)
        assert ready["READY"] == "1" and ready["STATUS"].startswith("running: 2 listeners")
        gw.reload()
        assert next_message(s)["RELOADING"] == "1"
        assert next_message(s)["READY"] == "1"
        gw.stop()
        assert next_message(s)["STOPPING"] == "1"


def _messages_until(s: socket.socket, key: str) -> list[dict[str, str]]:
    seen = [next_message(s)]
    while key not in seen[-1]:
        seen.append(next_message(s))
    return seen


def test_with_workers_the_supervisor_alone_speaks_for_the_service(sipgw: SipgwRunner,
                                                                   tmp_path: Path, monkeypatch):
    """READY=1 once both workers listen, from the supervisor (the unit's main pid); a
    reload checked once and applied by both; STOPPING, then every process gone, exit 0."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        gw = sipgw(backend="127.0.0.1:9", workers=2,
                   extra_toml=f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
        ready = _messages_until(s, "READY")[-1]
        assert ready["STATUS"] == "running: 2/2 workers"
        workers = gw.rpc("core.workers")
        assert [w["ready"] for w in workers] == [True, True]
        assert len({w["pid"] for w in workers} | {gw.pid}) == 3
        gw.reload()
        assert _messages_until(s, "RELOADING")[-1]["RELOADING"] == "1"
        assert _messages_until(s, "READY")[-1]["READY"] == "1"
        assert "reloaded" in gw.log_text() and gw.log_text().count("reloaded ") >= 3
        assert gw.stop() == 0
        assert _messages_until(s, "STOPPING")[-1]["STOPPING"] == "1"
        for w in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(w["pid"], 0)
