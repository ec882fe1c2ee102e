"""core.*, cfg.*, log.level and stats.* as the control socket serves them."""

from __future__ import annotations

import os
import time

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from sipgw.config import load_config
from sipgw.proxy.control.admin import Admin
from sipgw.proxy.runtime import log as sipgw_log
from sipgw.proxy.service import make_service
from sipgw.proxy.stats import StatDef, Stats
from sipgw.rpc.registry import RpcError

CONFIG = """
[listen]
udp = []
tcp = ["127.0.0.1:25070"]
ws = []
[auth]
nonce_secret = "hush"
[control]
socket = "{dir}/sipgw.ctl"
"""


@pytest.fixture
def service(tmp_path):
    path = tmp_path / "sipgw.toml"
    path.write_text(CONFIG.format(dir=tmp_path))
    svc = make_service(load_config(str(path)), MemoryReactorClock())
    svc.startService()
    yield svc
    svc.stopService()


def test_core_methods_say_what_runs_where(service):
    admin = Admin(service)
    assert admin.rpc_version().startswith("sipgw 0.1.0 (python 3.")
    service.reactor.advance(90)
    assert admin.rpc_uptime()["uptime"] == 90
    info = admin.rpc_info()
    assert info["pid"] == os.getpid()
    assert info["listen"] == ["tcp:127.0.0.1:25070"]
    # What a backend finds in our Via and Path: only transports we listen on (no UDP or
    # TLS address here, since there is no such listener to reach).
    assert info["toward_backends"] == ["tcp:127.0.0.1:25070"]
    assert info["backend"] == "sip:127.0.0.1:5080"
    assert info["config"] == service.loaded.path


def test_core_uptime_gives_now_and_up_since_as_ctime_strings_as_kamailio_does(service):
    admin = Admin(service)
    service.reactor.advance(75)
    up = admin.rpc_uptime()
    assert up["uptime"] == 75
    now = time.mktime(time.strptime(up["now"], "%a %b %d %H:%M:%S %Y"))
    since = time.mktime(time.strptime(up["up_since"], "%a %b %d %H:%M:%S %Y"))
    assert abs(now - time.time()) < 5 and 0 <= now - since < 5  # the wall clock did not run


def test_core_printi_gives_the_integers_back_and_refuses_anything_else(service):
    admin = Admin(service)
    assert admin.rpc_printi(42) == [42]
    assert admin.rpc_printi(1, -2, 3) == [1, -2, 3]
    assert admin.rpc_printi() == []
    with pytest.raises(RpcError, match="integers only, not 'x'"):
        admin.rpc_printi(1, "x")


def test_listeners_are_shown_and_logged_with_ipv6_addresses_in_brackets(tmp_path):
    path = tmp_path / "sipgw.toml"
    path.write_text(CONFIG.format(dir=tmp_path).replace('"127.0.0.1:25070"',
                                                        '"127.0.0.1:25070", "[::1]:25071"'))
    svc = make_service(load_config(str(path)), MemoryReactorClock())
    with capturedLogs() as events:
        svc.startService()
    try:
        assert Admin(svc).rpc_info()["listen"] == ["tcp:127.0.0.1:25070", "tcp:[::1]:25071"]
        assert "listening on tcp:[::1]:25071" in [formatEvent(e) for e in events]
    finally:
        svc.stopService()


def test_cfg_get_core_debug_is_the_log_level_in_effect(service):
    admin = Admin(service)
    before = sipgw_log.current_level()
    try:
        sipgw_log.LogControl().rpc_level(4)
        assert admin.rpc_get("core", "debug") == admin.rpc_get("core.debug") == 3
        sipgw_log.set_level(1)
        assert admin.rpc_get("core") == {"debug": 1}
        with pytest.raises(RpcError, match="no key core.dbug; keys: debug"):
            admin.rpc_get("core", "dbug")
    finally:
        sipgw_log.set_level(before)
    assert "core" not in admin.rpc_get()


def test_cfg_get_masks_secrets_and_narrows_to_a_section_or_key(service):
    admin = Admin(service)
    assert admin.rpc_get()["auth"]["nonce_secret"] == "***"
    assert admin.rpc_get("listen")["tcp"] == ["127.0.0.1:25070"]
    assert admin.rpc_get("listen.tcp") == admin.rpc_get("listen", "tcp") == ["127.0.0.1:25070"]
    with pytest.raises(RpcError, match="no config section 'lisen'"):
        admin.rpc_get("lisen")
    with pytest.raises(RpcError, match="no key listen.upd"):
        admin.rpc_get("listen", "upd")


def test_cfg_reload_applies_a_good_file_and_refuses_a_bad_one_with_its_error(service):
    admin = Admin(service)
    path = service.loaded.path
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text + "[proxy]\nmax_forwards = 5\n")
    assert admin.rpc_reload()["reloaded"] == path
    assert service.proxy.relay.max_forwards == 5
    with open(path, "w") as f:
        f.write(text + "[proxy]\nmax_forwards = 0\n")
    with pytest.raises(RpcError, match=r"reload refused.*sipgw.toml:\d+: proxy.max_forwards"):
        admin.rpc_reload()
    assert service.proxy.relay.max_forwards == 5


def test_log_level_is_read_and_set_by_name_or_kamailio_number():
    control = sipgw_log.LogControl()
    before = sipgw_log.current_level()
    try:
        assert control.rpc_level(3) == {"level": 3, "name": "debug"}
        assert control.rpc_level("warning") == {"level": 0, "name": "warning"}
        assert control.rpc_level() == {"level": 0, "name": "warning"}
        with pytest.raises(RpcError, match="bad log level 'loud'"):
            control.rpc_level("loud")
        # Kamailio's rule, and the guide's "kamcmd log.level 4": above 3 is debug.
        assert control.rpc_level(4) == {"level": 3, "name": "debug"}
        assert control.rpc_level("7") == {"level": 3, "name": "debug"}
        assert control.rpc_level("-5")["level"] == -5
        with pytest.raises(RpcError, match="bad log level -6"):
            control.rpc_level(-6)
        with pytest.raises(RpcError, match="bad log level True"):
            control.rpc_level(True)
    finally:
        sipgw_log.set_level(before)


def test_statistics_follow_kamailio_argument_rules_and_lines():
    stats = Stats()
    stats.inc("core:rcv_requests", 4)
    stats.inc("tm:inuse_transactions", 2)
    assert stats.rpc_get_statistics("rcv_requests") == ["core:rcv_requests = 4"]
    assert "tm:inuse_transactions = 2" in stats.rpc_get_statistics("tm:")
    assert len(stats.rpc_get_statistics()) == len(stats.values)
    # "group.name", as the Kamailio guide writes them, works too.
    assert stats.rpc_get_statistics("core.rcv_requests") == ["core:rcv_requests = 4"]
    assert stats.rpc_fetch("core:rcv_requests") == {"core.rcv_requests": 4}
    # Kamailio guides name the websocket group "ws".
    stats.declare((StatDef(group="websocket", name="ws_current_connections", help="x"),))
    stats.set("websocket:ws_current_connections", 2)
    expected = ["websocket:ws_current_connections = 2"]
    assert stats.rpc_get_statistics("ws.ws_current_connections") == expected
    assert stats.rpc_get_statistics("ws:ws_current_connections") == expected
    assert stats.rpc_get_statistics("ws:") == expected
    assert stats.rpc_fetch("ws.ws_current_connections") == {"websocket.ws_current_connections": 2}
    with pytest.raises(RpcError, match="no statistic matches 'nothing'"):
        stats.rpc_get_statistics("nothing")


def test_reset_zeroes_counters_but_keeps_levels():
    stats = Stats()
    stats.inc("core:rcv_requests", 4)
    stats.set("tm:inuse_transactions", 2)
    stats.rpc_reset_statistics("all")
    assert stats.get("core:rcv_requests") == 0
    assert stats.get("tm:inuse_transactions") == 2


def test_core_connections_counts_open_flows_by_transport_and_listeners(service):
    from twisted.internet.testing import StringTransport

    admin = Admin(service)
    assert admin.rpc_connections() == {
        "connections": {"tcp": 0, "tls": 0, "ws": 0, "wss": 0},
        "listeners": {"udp": 0, "tcp": 1, "tls": 0, "ws": 0, "wss": 0}, "total": 0}
    factory = service.reactor.tcpServers[0][1]
    opened = []
    for port in (40001, 40002):
        conn = factory.buildProtocol(None)
        conn.makeConnection(StringTransport(peerAddress=_peer(port)))
        opened.append(conn)
    assert admin.rpc_connections()["connections"]["tcp"] == 2
    opened[0].transport.loseConnection()
    opened[0].connectionLost(None)
    assert admin.rpc_connections()["connections"]["tcp"] == 1
    assert admin.rpc_connections()["total"] == 1


def _peer(port: int):
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", "127.0.0.1", port)


def test_core_memory_reports_rss_from_proc_and_python_blocks_that_fall_when_freed(service):
    admin = Admin(service)
    before = admin.rpc_memory()
    assert before["rss_kb"] > 1000 and before["peak_rss_kb"] >= before["rss_kb"]
    held = [[object()] for _ in range(50_000)]
    assert admin.rpc_memory()["python_blocks"] > before["python_blocks"] + 40_000
    del held
    assert admin.rpc_memory()["python_blocks"] < before["python_blocks"] + 5_000


def test_core_memory_names_where_live_memory_was_allocated_when_tracing(service):
    import tracemalloc

    admin = Admin(service)
    assert "top_allocations" not in admin.rpc_memory()
    tracemalloc.start(1)
    try:
        held = [bytes(1000) + bytes([i % 256]) for i in range(20_000)]  # ~20 MB, one line
        top = admin.rpc_memory()["top_allocations"]
    finally:
        tracemalloc.stop()
    assert top[0]["where"].endswith(f"test_admin.py:{_line_of('held = [bytes(1000)')}")
    assert top[0]["kb"] > 19_000 and top[0]["blocks"] >= 20_000
    assert held


def _line_of(text: str) -> int:
    from pathlib import Path

    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line and "_line_of" not in line)
