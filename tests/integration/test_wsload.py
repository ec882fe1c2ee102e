"""The WebSocket load client against a real sipgw and SIPp backend: a few hundred
connections (CI-sized; 10,000 is bench/ws.py's job), every one registered and held."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipgw.sip.digest import ha1, parse_credentials, response
from sipgw.tools.wsload import Backoff, _Account, _Client, run_load
from tests.integration.sipp import SippRunner, free_port
from tests.integration.test_ws_sipp import WsSipgw

pytestmark = pytest.mark.integration


def test_wsload_registers_every_connection_and_holds_them_open(
    sipp: SippRunner, tmp_path: Path
) -> None:
    uas = sipp.uas("uas_register.xml", transport="udp", timeout=30, calls=300)
    gw = WsSipgw(tmp_path / "sipgw", ws_port=free_port("tcp"), backend=uas.address,
                 extra_toml="[limits]\nws_max_connections_per_address = 10000\n")
    with gw:
        result = asyncio.run(run_load(f"ws://{gw.ws_address}/", count=300, concurrency=50,
                                      hold=0.2, timeout=10))
    assert result.failures == {}
    assert result.registered == 300 == result.held
    assert result.rate > 0 and result.cpu_seconds > 0
    assert "registrations/s" in result.report()


def test_the_digest_answer_is_the_one_a_registrar_computes() -> None:
    loop = asyncio.new_event_loop()
    try:
        client = _Client("127.0.0.1", 8080, "/", _Account("5001", "secret", "example.com"), 0,
                         600, loop.create_future())
        value = client._digest('Digest realm="example.com", nonce="abc123", '
                               'algorithm=MD5, qop="auth"')
    finally:
        loop.close()
    p = parse_credentials(value).params
    expected = response(ha1("5001", "example.com", "secret"), "REGISTER", "sip:example.com",
                        "abc123", p["nc"], p["cnonce"].strip('"'), "auth")
    assert p["response"].strip('"') == expected


def test_the_reconnect_back_off_is_jssips() -> None:
    """JsSIP's Transport._reconnect: floor(random × 2^n + 1) s before the n-th attempt in a
    row, held between 2 and 30 s."""
    backoff = Backoff()
    assert [backoff.delay(1, lambda r=r: r) for r in (0.0, 0.99)] == [2.0, 2.0]  # always 2 s
    assert [backoff.delay(3, lambda r=r: r) for r in (0.0, 0.5, 0.99)] == [2.0, 5.0, 8.0]
    assert backoff.delay(5, lambda: 0.99) == 30.0 == backoff.delay(60, lambda: 0.5)
    assert Backoff(min_interval=1, max_interval=4).delay(1, lambda: 0.0) == 1.0
