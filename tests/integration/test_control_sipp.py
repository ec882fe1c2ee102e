"""The control plane end to end: a real sipgw with real SIPp calls, asked through the real
socket by the real ``sipgw`` command, rendered and as JSON."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess, run_cli
from tests.integration.sipgw_process import SipgwRunner, TcpPeer
from tests.integration.sipp import SippRunner

pytestmark = pytest.mark.integration

CALLS = 3


def control_toml(directory: Path) -> str:
    return f'[control]\nsocket = "{directory}/sipgw.ctl"\n'


def ctl(gw: SipgwProcess, *args: str):
    """``sipgw COMMAND -c CONFIG ARGS`` (``log level`` is a command of two words)."""
    words = 2 if args[0] == "log" else 1
    return run_cli(*args[:words], "-c", str(gw.config_path), *args[words:])


@pytest.fixture
def calls_done(sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path):
    """A sipgw that has relayed CALLS complete calls from a SIPp caller to a SIPp backend."""
    # The backend takes any number of calls: OPTIONS probes from the dispatcher count as
    # (failed) calls for SIPp. It is stopped with the test.
    uas = sipp.uas("uas_call.xml", timeout=30, calls=1000)
    gw = sipgw(backend=uas.address, extra_toml=control_toml(tmp_path), log_level="info")
    uac = sipp.uac("uac_call.xml", remote=gw.address, timeout=10, calls=CALLS)
    assert uac.wait(20) == 0, uac.describe()
    return gw


def test_the_socket_is_where_the_config_says_with_mode_0660(calls_done: SipgwProcess,
                                                            tmp_path: Path):
    st = os.stat(tmp_path / "sipgw.ctl")
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_stats_after_real_calls_count_what_was_relayed(calls_done: SipgwProcess):
    gw = calls_done
    done = ctl(gw, "stats", "--json", "core:")
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout)
    # Per call: INVITE, ACK and BYE forwarded; 180, 200 (INVITE) and 200 (BYE) back.
    assert values["core:fwd_requests"] == 3 * CALLS
    assert values["core:fwd_replies"] == 3 * CALLS
    shown = ctl(gw, "stats", "all")
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines()]
    assert ["core", "fwd_requests", str(3 * CALLS)] in rows
    assert ["tm", "inuse_transactions"] == [
        r[0:2] for r in rows if r[1:2] == ["inuse_transactions"]
    ][0]
    kamailio = ctl(gw, "ctl", "--json", "stats.get_statistics", "fwd_replies")
    assert json.loads(kamailio.stdout) == [f"core:fwd_replies = {3 * CALLS}"]


def test_reset_statistics_zeroes_the_counters_the_proxy_reports(calls_done: SipgwProcess):
    gw = calls_done
    assert ctl(gw, "ctl", "stats.reset_statistics", "core:").returncode == 0
    values = json.loads(ctl(gw, "stats", "--json", "fwd_requests").stdout)
    assert values == {"core:fwd_requests": 0}


def test_core_info_names_the_running_process_and_its_config(calls_done: SipgwProcess):
    gw = calls_done
    info = json.loads(ctl(gw, "ctl", "--json", "core.info").stdout)
    assert info["pid"] == gw.pid
    assert info["config"] == str(gw.config_path)
    assert f"udp:{gw.address}" in info["listen"]
    shown = ctl(gw, "ctl", "core.info")
    assert f"pid: {gw.pid}" in shown.stdout or any(
        line.split() == ["pid", str(gw.pid)] for line in shown.stdout.splitlines())


def test_log_level_3_makes_the_proxy_log_debug_lines_it_did_not_log_before(
    calls_done: SipgwProcess,
):
    gw = calls_done
    assert json.loads(ctl(gw, "log", "level", "--json").stdout) == {"level": 2, "name": "info"}
    with TcpPeer(gw.address) as quiet:
        quiet_port = quiet.port
        gw.wait_for_log(r"xx-never-xx|", timeout=0)  # the log file exists and is readable
    done = ctl(gw, "log", "level", "3")
    assert (done.returncode, done.stdout) == (0, "debug (3)\n")
    mark = len(gw.log_text())
    with TcpPeer(gw.address) as loud:
        gw.wait_for_log(rf"DEBUG .*flow \d+ from tcp:127\.0\.0\.1:{loud.port}\b", after=mark)
    assert f":{quiet_port}\n" not in gw.log_text() and f":{quiet_port} " not in gw.log_text()


def test_cfg_reload_through_the_socket_reports_a_bad_file_and_keeps_running(
    calls_done: SipgwProcess,
):
    gw = calls_done
    good = gw.config_path.read_text()
    gw.write_config(good.replace("[proxy]\n", "[proxy]\nmax_forwards = 0\n", 1))
    refused = ctl(gw, "ctl", "cfg.reload")
    assert refused.returncode == 1
    assert "proxy.max_forwards" in refused.stderr and refused.stderr.count("\n") == 1
    gw.write_config(good.replace("[proxy]\n", "[proxy]\nmax_forwards = 9\n", 1))
    assert ctl(gw, "ctl", "cfg.reload").returncode == 0
    assert ctl(gw, "ctl", "cfg.get", "proxy.max_forwards").stdout == "9\n"


def test_a_garbage_line_on_the_socket_gets_a_parse_error_and_the_proxy_serves_on(
    calls_done: SipgwProcess, tmp_path: Path,
):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(tmp_path / "sipgw.ctl"))
        s.sendall(b"\x00garbage{\n")
        answer = json.loads(s.makefile("rb").readline())
    assert answer["error"]["code"] == -32700
    assert ctl(calls_done, "ctl", "core.version").stdout.startswith("sipgw ")


def test_ctl_against_a_stopped_proxy_exits_3_with_a_hint(calls_done: SipgwProcess):
    gw = calls_done
    gw.stop()
    done = ctl(gw, "ctl", "core.version")
    assert done.returncode == 3
    assert done.stderr.startswith("sipgw: cannot reach sipgw at ")
    assert done.stderr.count("\n") == 1


def test_dialogs_are_active_from_the_200_to_the_bye_and_counted(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path,
):
    uas = sipp.uas("uas_call.xml", timeout=30, calls=1000)
    gw = sipgw(backend=uas.address, extra_toml=control_toml(tmp_path))
    # A 4 s pause between the ACK and the BYE: time to look at the dialog.
    uac = sipp.uac("uac_call.xml", remote=gw.address, timeout=20, pause_ms=4000)
    deadline = time.monotonic() + 4
    while True:
        listed = json.loads(ctl(gw, "ctl", "--json", "dlg.list").stdout)
        if listed or time.monotonic() > deadline:
            break
    assert len(listed) == 1, listed
    (dialog,) = listed
    assert dialog["state"] == 4
    assert dialog["from_uri"].startswith("sip:") and dialog["to_tag"]
    assert json.loads(ctl(gw, "ctl", "--json", "dlg.stats_active").stdout)["all"] == 1
    shown = ctl(gw, "ctl", "dlg.list")
    assert dialog["call-id"] in shown.stdout
    assert uac.wait(20) == 0, uac.describe()
    values = json.loads(ctl(gw, "stats", "--json", "dialog:").stdout)
    assert values == {"dialog:active_dialogs": 0, "dialog:processed_dialogs": 1,
                      "dialog:expired_dialogs": 0}


def test_prometheus_metrics_show_the_same_numbers_as_sipgw_stats(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path,
):
    import urllib.request

    from tests.integration.sipp import free_port

    port = free_port("tcp")
    uas = sipp.uas("uas_call.xml", timeout=30, calls=1000)
    gw = sipgw(backend=uas.address,
               extra_toml=control_toml(tmp_path) + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    uac = sipp.uac("uac_call.xml", remote=gw.address, timeout=10, calls=2)
    assert uac.wait(20) == 0, uac.describe()
    stats = json.loads(ctl(gw, "stats", "--json", "core:fwd_requests", "dialog:").stdout)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    assert f"sipgw_core_fwd_requests_total {float(stats['core:fwd_requests'])}" in text
    assert stats["core:fwd_requests"] == 6
    assert "sipgw_dialog_processed_dialogs_total 2.0" in text
    assert "sipgw_dialog_active_dialogs 0.0" in text
