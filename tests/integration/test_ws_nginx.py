"""Debian's nginx in front of sipgw, with the shipped etc/nginx/sipgw.conf as is (only its
addresses templated: ``sipgw.tools.nginx``): a SIP-over-WebSocket client reaches the
backend through both, and the client address sipgw uses is the one nginx saw, not one the
client claims."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.sip.address import parse_name_addr
from sipgw.tools.nginx import Nginx
from tests.integration.sipgw_process import build_request
from tests.integration.sipp import LOOPBACK, SippRunner, free_port
from tests.integration.test_ws_sipp import WsSipgw
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator:
    """``nginx(port)``: an nginx with the shipped site in front of sipgw's WebSocket
    ``port``; its own port."""
    started: list[Nginx] = []

    def start(upstream: int) -> int:
        started.append(Nginx(tmp_path / f"nginx-{len(started) + 1}", upstream))
        return started[-1].start().port

    yield start
    for proxy in started:
        proxy.stop()


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
