"""A real ``sipgw serve`` under a fake systemd: READY once listening, RELOADING then READY on
SIGHUP, STOPPING on SIGTERM, all on the NOTIFY_SOCKET it is given."""

from __future__ import annotations

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
