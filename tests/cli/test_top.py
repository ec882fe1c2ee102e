"""``sipgw top``: rates from successive rounds, every panel rendered, --json per round,
and a proxy that goes away shown as such, not as a crash."""

from __future__ import annotations

import json
import re

from tests.cli.test_ctl import DISPATCHER_LIST


def serve_growing(control):
    counts = {"n": 0}

    def fetch(params):
        counts["n"] += 1
        return {"core.rcv_requests": 10 * counts["n"], "core.rcv_replies": 4 * counts["n"],
                "tm.inuse_transactions": 2, "auth.authorized": 5, "auth.failed": 1,
                "websocket.ws_current_connections": 3, "dialog.processed_dialogs": 9,
                "pike.blocked_ips": 7, "pike.dropped_msgs": 4321,
                "load.udp_queue_delay_us": 1250, "load.udp_queue_delay_max_us": 48000,
                "load.reactor_lag_us": 310, "load.reactor_lag_max_us": 2000,
                "load.stream_queue_delay_us": 4500, "load.stream_queue_delay_max_us": 120000,
                "load.stream_backlog_bytes": 65536, "load.udp_kernel_drops": 300 * counts["n"],
                "core.shed_percent": 75}

    control.answers["system.listMethods"] = ["stats.fetch", "dlg.stats_active",
                                             "dispatcher.list", "auth.bans", "core.connections"]
    control.answers["core.connections"] = {
        "connections": {"tcp": 2, "tls": 0, "ws": 3, "wss": 0},
        "listeners": {"udp": 1, "tcp": 1, "tls": 1, "ws": 1, "wss": 0}, "total": 5}
    control.answers["stats.fetch"] = fetch
    control.answers["dlg.stats_active"] = {"ongoing": 4, "all": 4}
    control.answers["dispatcher.list"] = DISPATCHER_LIST
    control.answers["auth.bans"] = {"BANS": [{"NAME": "5009@example.com", "EXPIRES": 30}]}


def test_json_prints_one_object_per_round_with_rates_from_the_previous_round(run, control):
    serve_growing(control)
    code, out, err = run("top", "-c", str(control.config), "--json", "-n", "2",
                         "--interval", "0.1")
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["rates"]["requests/s"] == 0.0
    assert second["rates"]["requests/s"] > 0
    # What the kernel dropped, sipgw's UDP queue full: 300 a round to 10 requests read.
    rates = second["rates"]
    assert round(rates["kernel drops/s"] / rates["requests/s"]) == 30
    assert second["dialogs"]["all"] == 4
    assert second["dispatcher"][1] == {"set": 1, "uri": "sip:10.0.0.6:5060", "flags": "IP",
                                       "avg_ms": 0.0, "timeouts": 3}


def test_the_dashboard_shows_traffic_connections_auth_dialogs_and_destinations(run, control):
    serve_growing(control)
    code, out, err = run("top", "-c", str(control.config), "-n", "1")
    assert code == 0, err
    for text in ("traffic", "requests/s", "kernel drops/s", "transactions", "websocket now",
                 "authorized", "bans", "dialogs", "active", "sip:10.0.0.5:5060", "AP", "IP"):
        assert text in out, text
    # core.connections: open connections per transport, "off" where nothing listens.
    rows = dict(re.findall(r"│ (udp|tcp|tls|ws|wss) +(\S+) +│", out))
    assert rows == {"udp": "listening", "tcp": "2", "tls": "0", "ws": "3", "wss": "off"}
    # Pike: addresses blocked now and messages dropped.
    assert re.search(r"blocked now +7\b", out) and re.search(r"dropped +4321\b", out)
    # Load: queueing delay and loop lag in milliseconds, unread stream bytes.
    # Each delay now, then the worst of the window.
    assert re.search(r"udp queue ms +1\.25 / 48\.00\b", out)
    assert re.search(r"loop lag ms +0\.31 / 2\.00\b", out)
    assert re.search(r"stream queue ms +4\.50 / 120\.00\b", out)
    assert re.search(r"stream unread +65536\b", out)
    # Overload control: refusing 75 % of new requests now.
    assert re.search(r"shedding % +75\b", out)


def test_a_proxy_that_is_not_there_is_shown_and_top_keeps_going(run, tmp_path):
    config = tmp_path / "sipgw.toml"
    config.write_text(f'[control]\nsocket = "{tmp_path}/none.ctl"\n'
                      f'[state]\ndirectory = "{tmp_path}"\n')
    code, out, _ = run("top", "-c", str(config), "-n", "2", "--interval", "0.1")
    assert code == 0
    assert "proxy unreachable" in out
    code, out, _ = run("top", "-c", str(config), "--json", "-n", "1")
    assert "unreachable" in json.loads(out)


WORKERS = [
    {"index": 0, "pid": 4101, "running": True, "ready": True, "uptime": 3600.4,
     "restarts": 0, "last_exit": "", "connections": 120, "transactions": 8,
     "reactor_lag_us": 450, "udp_queue_delay_us": 1200, "backend_address": "127.0.0.1:40001",
     "heartbeat_age": 0.4},
    {"index": 1, "pid": 4388, "running": True, "ready": True, "uptime": 12.0,
     "restarts": 2, "last_exit": "signal 9", "connections": 97, "transactions": 5,
     "reactor_lag_us": 700, "udp_queue_delay_us": 0, "backend_address": "127.0.0.1:40002",
     "heartbeat_age": 0.2},
]


def test_a_service_with_workers_gets_a_workers_panel(run, control):
    serve_growing(control)
    control.answers["system.listMethods"].append("core.workers")
    control.answers["core.workers"] = WORKERS
    code, out, err = run("top", "-c", str(control.config), "-n", "1")
    assert code == 0, err
    assert "workers" in out
    # worker, pid, uptime, restarts, connections, transactions, loop lag, udp queue, exit
    assert re.search(r"0 +4101 +3600 +0 +120 +8 +0\.45 +1\.20", out)
    assert re.search(r"1 +4388 +12 +2 +97 +5 +0\.70 +0\.00 +signal 9", out)
    code, out, err = run("top", "-c", str(control.config), "--json", "-n", "1")
    assert json.loads(out)["workers"][1]["restarts"] == 2


def test_a_single_process_has_no_workers_panel(run, control):
    serve_growing(control)
    code, out, err = run("top", "-c", str(control.config), "-n", "1")
    assert code == 0, err
    assert "worker" not in out
