"""Issue acceptance: against a running sipgw with real SIPp traffic, sipgw ctl
dispatcher.list, sipgw stats all, sipgw ctl ws.dump and sipgw log level 3, through the real
socket, rendered and --json. (log level and stats: test_control_sipp.py.)"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from sipgw.tools.process import run_cli
from tests.integration.sipgw_process import build_request
from tests.integration.sipp import SippRunner, free_port
from tests.integration.test_trace_sipp import start_trace
from tests.integration.test_ws_sipp import WsSipgw
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration


@pytest.fixture
def ws_gw(sipp: SippRunner, tmp_path: Path):
    uas = sipp.uas("uas_options.xml", timeout=30, calls=1000)
    gw = WsSipgw(tmp_path / "sipgw", ws_port=free_port("tcp"), backend=uas.address,
                 extra_toml=f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    gw.start()
    yield gw, uas
    gw.stop()


def ctl(gw, *args):
    return run_cli("ctl", "-c", str(gw.config_path), *args)


def test_dispatcher_list_shows_the_backend_active_and_probing_rendered_and_as_json(ws_gw):
    gw, uas = ws_gw
    raw = json.loads(ctl(gw, "--json", "dispatcher.list").stdout)
    assert raw["NRSETS"] == 1
    dest = raw["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"]
    assert dest["URI"] == f"sip:{uas.address}"
    shown = ctl(gw, "dispatcher.list")
    assert shown.returncode == 0
    assert f"URI: sip:{uas.address}" in shown.stdout
    assert f"FLAGS: {dest['FLAGS']}" in shown.stdout


def test_ws_dump_lists_a_browser_connection_and_ws_close_ends_it(ws_gw):
    gw, _ = ws_gw
    with WsPeer(gw.ws_address) as ws:
        assert ws.status == 101
        dumped = json.loads(ctl(gw, "--json", "ws.dump").stdout)
        text = json.dumps(dumped)
        assert f":{ws.port}" in text, dumped
        shown = ctl(gw, "ws.dump")
        assert shown.returncode == 0 and f":{ws.port}" in shown.stdout
        stats = json.loads(run_cli("stats", "-c", str(gw.config_path), "--json",
                                   "websocket:").stdout)
        assert stats["websocket:ws_current_connections"] == 1
        (conn,) = dumped["connections"]
        closed = ctl(gw, "ws.close", f"i:{conn['id']}")
        assert (closed.returncode, closed.stdout) == (0, "ok\n")
        ws.socket.settimeout(5)
        assert ws.socket.recv(4096)[:1] == b"\x88"  # a close frame (RFC 6455 §5.5.1)


def test_trace_pcap_includes_websocket_flows_decoded_as_sip(ws_gw, tmp_path):
    gw, uas = ws_gw
    tshark = shutil.which("tshark")
    assert tshark, "tshark is not installed (Debian package tshark): run ./scripts/setup"
    pcap = tmp_path / "ws.pcap"
    trace = start_trace(gw.config_path, "--call-id", "ws-pcap-1", "--pcap", str(pcap),
                        "-n", "4")
    try:
        with WsPeer(gw.ws_address) as ws:
            ws.send(build_request("OPTIONS", f"sip:service@{uas.address}", peer=ws,
                                  call_id="ws-pcap-1", branch="z9hG4bKwspcap"))
            ws.expect("200", timeout=5)
        assert trace.wait(10) == 0, trace.stderr.read()
    finally:
        if trace.poll() is None:
            trace.send_signal(signal.SIGINT)
            trace.wait(5)
    done = subprocess.run([tshark, "-r", str(pcap), "-Y", "sip", "-T", "fields",
                           "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "tcp.port",
                           "-e", "udp.port"], capture_output=True, text=True, timeout=60)
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    # OPTIONS in over WS, out over UDP; 200 in over UDP, out over WS.
    assert [r[0] or r[1] for r in rows] == ["OPTIONS", "OPTIONS", "200", "200"], rows
    ws_rows = [r for r in rows if str(gw.ws_port) in r[2]]
    assert len(ws_rows) == 2
