"""The friendly groups: sipgw dispatcher list|reload|set-state, sipgw ws list|close."""

from __future__ import annotations

import json

from tests.cli.test_ctl import DISPATCHER_LIST


def test_dispatcher_list_is_one_row_per_destination(run, control):
    control.answers["dispatcher.list"] = DISPATCHER_LIST
    code, out, _ = run("dispatcher", "list", "-c", str(control.config))
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["set", "uri", "flags", "priority", "avg", "ms", "max", "ms", "timeouts"]
    assert rows[1] == ["1", "sip:10.0.0.5:5060", "AP", "0", "1.2", "4", "0"]
    assert rows[2][:3] == ["1", "sip:10.0.0.6:5060", "IP"]
    code, out, _ = run("dispatcher", "list", "-c", str(control.config), "--json")
    assert json.loads(out) == DISPATCHER_LIST


def test_dispatcher_set_state_and_reload_call_the_kamailio_methods(run, control):
    control.answers["dispatcher.set_state"] = "ok"
    control.answers["dispatcher.reload"] = "ok"
    assert run("dispatcher", "set-state", "-c", str(control.config), "ip", "1",
               "sip:10.0.0.5:5060")[0] == 0
    assert run("dispatcher", "reload", "-c", str(control.config))[0] == 0
    assert control.methods_called() == [
        ("dispatcher.set_state", ["ip", 1, "sip:10.0.0.5:5060"]), ("dispatcher.reload", [])]


def test_ws_list_and_close(run, control):
    control.answers["ws.dump"] = {"connections": [
        {"id": 7, "proto": "ws", "remote": "198.51.100.7:50112", "users": ["5001@example.com"]}],
        "info": {"wscounter": 1}}
    control.answers["ws.close"] = "ok"
    code, out, err = run("ws", "list", "-c", str(control.config))
    assert code == 0
    assert out.splitlines()[1].split() == ["7", "ws", "198.51.100.7:50112", "5001@example.com"]
    assert err == "1 connection(s)\n"
    code, _, err = run("ws", "close", "-c", str(control.config), "7")
    assert (code, err) == (0, "closed 7\n")
    assert control.methods_called()[-1] == ("ws.close", [7])


def test_tools_ha1_is_the_md5_the_guide_computes_with_md5sum(run):
    import hashlib

    code, out, _ = run("tools", "ha1", "5001", "192.168.210.54", input="password5001\n")
    assert code == 0
    assert out == hashlib.md5(b"5001:192.168.210.54:password5001").hexdigest() + "\n"
    code, out, _ = run("tools", "ha1", "5001", "example.com", "--realm", "r", "--json",
                       input="pw\n")
    hashes = json.loads(out)
    assert hashes["ha1"] == hashlib.md5(b"5001:r:pw").hexdigest()
    assert hashes["ha1b"] == hashlib.md5(b"5001@example.com:r:pw").hexdigest()
    assert hashes["ha1_sha256"] == hashlib.sha256(b"5001:r:pw").hexdigest()
