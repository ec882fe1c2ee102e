"""Debian's nginx in front of sipgw, with the shipped etc/nginx/sipgw.conf as is (only its
ports templated): a SIP-over-WebSocket client reaches the backend through both, and the
client address sipgw uses is the one nginx saw, not one the client claims."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.sip.address import parse_name_addr
from tests.integration.sipgw_process import build_request
from tests.integration.sipp import LOOPBACK, SippRunner, free_port
from tests.integration.test_ws_sipp import WsSipgw
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration
SITE = Path(__file__).resolve().parents[2] / "etc" / "nginx" / "sipgw.conf"


def site_for(port: int, upstream: int) -> str:
    """The shipped site with its listen port and sipgw's port replaced, nothing else."""
    text = SITE.read_text()
    text = re.sub(r"(?m)^(\s*listen\s+)80;", rf"\g<1>{LOOPBACK}:{port};", text)
    return text.replace("127.0.0.1:8080", f"{LOOPBACK}:{upstream}")


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator:
    executable = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert executable, "nginx is not installed (Debian package nginx): run ./scripts/setup"
    started: list[subprocess.Popen] = []

    def start(upstream: int) -> int:
        work = tmp_path / "nginx"
        work.mkdir()
        port = free_port("tcp")
        (work / "site.conf").write_text(site_for(port, upstream))
        temp = " ".join(f"{k}_temp_path {work}/{k};" for k in
                        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (work / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\npid {work}/nginx.pid;\n"
            f"error_log {work}/error.log info;\nevents {{ worker_connections 64; }}\n"
            f"http {{ access_log {work}/access.log; {temp} include {work}/site.conf; }}\n"
        )
        proc = subprocess.Popen([executable, "-p", str(work), "-c", str(work / "nginx.conf")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(work / "stderr.log", "wb"))
        started.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded poll until it accepts
            assert proc.poll() is None, (work / "stderr.log").read_text()
            try:
                import socket

                socket.create_connection((LOOPBACK, port), timeout=0.2).close()
                return port
            except OSError:
                proc_wait = 0.05
                try:
                    proc.wait(proc_wait)
                except subprocess.TimeoutExpired:
                    pass
        raise AssertionError("nginx did not start listening")

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_a_websocket_client_through_nginx_reaches_the_backend_with_its_real_address(
    sipp: SippRunner, nginx, tmp_path: Path
) -> None:
    uas = sipp.uas("uas_register.xml", transport="udp", timeout=10)
    gw = WsSipgw(tmp_path / "sipgw", ws_port=free_port("tcp"), backend=uas.address,
                 extra_toml='[websocket]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    with gw:
        port = nginx(gw.ws_port)
        # The client claims another address; nginx's X-Real-IP (what it saw) wins.
        with WsPeer(f"{LOOPBACK}:{port}", path="/ws",
                    extra=("X-Forwarded-For: 198.51.100.7",)) as ws:
            assert ws.status == 101
            assert ws.reader.header("Sec-WebSocket-Protocol") == "sip"
            ws.send(build_request(
                "REGISTER", f"sip:{LOOPBACK}", peer=ws, call_id="nginx-reg@test",
                branch="z9hG4bKnginx1", headers=["Supported: path", "Expires: 600"],
            ))  # fmt: skip
            assert ws.expect("200", timeout=5).header("Call-ID") == "nginx-reg@test"
    register = next(m for m in uas.messages()
                    if m.direction == "received" and m.kind == "REGISTER")
    alias = parse_name_addr(register.header("Contact")).uri.param("alias")
    assert re.fullmatch(rf"{LOOPBACK}~\d+~5~[0-9a-f]{{16}}", alias)  # ws, signed by sipgw
    assert "198.51.100.7" not in register.text
    assert register.header("Path").startswith("<sip:")
    assert uas.wait() == 0, uas.describe()
