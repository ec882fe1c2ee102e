"""``sipgw ctl``: any method, any result shape rendered, raw JSON on demand, clean failures."""

from __future__ import annotations

import json

DISPATCHER_LIST = {
    "NRSETS": 1,
    "RECORDS": [{"SET": {"ID": 1, "TARGETS": [
        {"DEST": {"URI": "sip:10.0.0.5:5060", "FLAGS": "AP", "PRIORITY": 0,
                  "LATENCY": {"AVG": 1.2, "MAX": 4.0, "TIMEOUT": 0}}},
        {"DEST": {"URI": "sip:10.0.0.6:5060", "FLAGS": "IP", "PRIORITY": 0,
                  "LATENCY": {"AVG": 0.0, "MAX": 0.0, "TIMEOUT": 3}}},
    ]}}],
}


def test_a_method_owned_by_another_module_renders_as_a_tree_without_special_code(run, control):
    control.answers["dispatcher.list"] = DISPATCHER_LIST
    code, out, err = run("ctl", "-c", str(control.config), "dispatcher.list")
    assert (code, err) == (0, "")
    assert "NRSETS: 1" in out
    assert "URI: sip:10.0.0.5:5060" in out
    assert "FLAGS: IP" in out
    assert "TIMEOUT: 3" in out
    assert out.index("10.0.0.5") < out.index("10.0.0.6")


def test_json_prints_the_result_unchanged(run, control):
    control.answers["dispatcher.list"] = DISPATCHER_LIST
    code, out, _ = run("ctl", "-c", str(control.config), "--json", "dispatcher.list")
    assert code == 0
    assert json.loads(out) == DISPATCHER_LIST


def test_rows_become_a_table_and_a_flat_object_a_key_value_list(run, control):
    control.answers["ws.dump"] = [
        {"id": 3, "remote": "198.51.100.7:50112", "user": "5001", "idle": 2},
        {"id": 4, "remote": "198.51.100.9:40001", "user": "[bold]x[/]", "idle": 0},
    ]
    control.answers["core.uptime"] = {"now": "Sun Dec  6 08:52:35 2026",
                                      "up_since": "Sun Dec  6 08:52:29 2026", "uptime": 6}
    code, out, _ = run("ctl", "-c", str(control.config), "ws.dump")
    lines = out.splitlines()
    assert lines[0].split() == ["id", "remote", "user", "idle"]
    assert lines[1].split() == ["3", "198.51.100.7:50112", "5001", "2"]
    assert "[bold]x[/]" in lines[2]  # user data is never read as markup
    code, out, _ = run("ctl", "-c", str(control.config), "core.uptime")
    assert [line.split() for line in out.splitlines()] == [
        ["now", "Sun", "Dec", "6", "08:52:35", "2026"],
        ["up_since", "Sun", "Dec", "6", "08:52:29", "2026"], ["uptime", "6"]]


def test_a_summary_with_a_list_of_records_prints_pairs_then_a_table(run, control):
    control.answers["pike.top"] = {
        "max_hits": 30,
        "list": [{"ip_addr": "203.0.113.9", "leaf_hits_prev": 0, "leaf_hits_curr": 31,
                  "expires": 118, "status": "HOT"}],
        "number_of_rows": 1,
    }
    code, out, _ = run("ctl", "-c", str(control.config), "pike.top")
    lines = [line.split() for line in out.splitlines()]
    assert code == 0
    assert ["max_hits", "30"] in lines and ["number_of_rows", "1"] in lines
    assert lines[-2:] == [["ip_addr", "leaf_hits_prev", "leaf_hits_curr", "expires", "status"],
                          ["203.0.113.9", "0", "31", "118", "HOT"]]


def test_arguments_are_typed_as_kamcmd_types_them(run, control):
    control.answers["dispatcher.set_state"] = None
    code, out, _ = run("ctl", "-c", str(control.config), "dispatcher.set_state", "ip", "1",
                       "sip:10.0.0.5:5060", "s:2", "i:7", '{"a": [1]}', "0.5")
    assert (code, out) == (0, "")
    assert control.methods_called() == [
        ("dispatcher.set_state", ["ip", 1, "sip:10.0.0.5:5060", "2", 7, {"a": [1]}, 0.5])
    ]


def test_a_refused_call_is_one_line_on_stderr_and_exit_1(run, control):
    control.answers["auth.unban"] = ValueError("no ban for 5009")
    code, out, err = run("ctl", "-c", str(control.config), "auth.unban", "5009")
    assert (code, out) == (1, "")
    assert err == "sipgw: auth.unban: no ban for 5009\n"
    code, _, err = run("ctl", "-c", str(control.config), "no.such")
    assert code == 1
    assert err == "sipgw: no.such: Method not found: no.such\n"


def test_a_stopped_proxy_is_exit_3_with_a_one_line_hint(run, tmp_path):
    config = tmp_path / "sipgw.toml"
    config.write_text(f'[control]\nsocket = "{tmp_path}/gone.ctl"\n'
                      f'[state]\ndirectory = "{tmp_path}"\n')
    code, out, err = run("ctl", "-c", str(config), "core.version")
    assert (code, out) == (3, "")
    assert err.count("\n") == 1
    assert err.startswith(f"sipgw: cannot reach sipgw at {tmp_path}/gone.ctl: ")
    assert "is sipgw serve running" in err


def test_a_worker_the_service_does_not_have_is_a_usage_error_saying_which_it_has(
    run, control
):
    control.answers["system.listMethods"] = ["core.version", "core.workers"]
    control.answers["core.workers"] = [{"index": 0}, {"index": 1}]
    code, out, err = run("ctl", "-c", str(control.config), "-w", "5", "core.uptime")
    assert (code, out, err) == (2, "", "sipgw: -w 5: this sipgw has 2 workers, 0 to 1\n")
    control.answers["system.listMethods"] = ["core.version"]
    code, out, err = run("ctl", "-c", str(control.config), "-w", "0", "core.uptime")
    assert (code, err) == (2, "sipgw: -w 0: this sipgw runs as a single process, without "
                              "workers\n")
    # A worker it has but that is not there now (restarting) is unreachable, as before.
    control.answers["system.listMethods"] = ["core.version", "core.workers"]
    code, _, err = run("ctl", "-c", str(control.config), "-w", "1", "core.uptime")
    assert code == 3 and f"cannot reach sipgw at {control.path}.w1" in err


def test_a_file_that_is_not_toml_is_a_usage_error_naming_the_file_and_line(run, tmp_path):
    config = tmp_path / "sipgw.toml"
    config.write_text('[control]\nsocket = "x\n')
    code, _, err = run("ctl", "-c", str(config), "core.version")
    assert code == 2
    assert err.startswith(f"sipgw: {config}:2: ")


def test_a_config_being_edited_still_finds_the_socket_so_cfg_reload_can_say_why(run, control):
    text = control.config.read_text()
    control.config.write_text(text + "[proxy]\nmax_forwards = 0\n")
    control.answers["cfg.reload"] = ValueError("reload refused, running config kept: ...")
    code, _, err = run("ctl", "-c", str(control.config), "cfg.reload")
    assert code == 1
    assert err.startswith("sipgw: cfg.reload: reload refused")


def test_stats_prints_a_table_and_json_keeps_the_kamailio_names(run, control):
    control.answers["stats.get_statistics"] = ["core:rcv_requests = 12", "auth:failed = 3"]
    control.answers["stats.reset_statistics"] = None
    code, out, _ = run("stats", "-c", str(control.config), "rcv_requests", "auth:")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["group", "name", "value"], ["core", "rcv_requests", "12"], ["auth", "failed", "3"]]
    assert control.methods_called() == [("stats.get_statistics", ["rcv_requests", "auth:"])]
    code, out, _ = run("stats", "-c", str(control.config), "--json", "--reset")
    assert json.loads(out) == {"core:rcv_requests": 12, "auth:failed": 3}
    assert control.methods_called()[1:] == [("stats.reset_statistics", ["all"]),
                                            ("stats.get_statistics", ["all"])]


def test_log_level_shows_and_sets_the_level(run, control):
    control.answers["log.level"] = lambda params: (
        {"level": 3, "name": "debug"} if params else {"level": 2, "name": "info"})
    code, out, _ = run("log", "level", "-c", str(control.config))
    assert (code, out) == (0, "info (2)\n")
    code, out, _ = run("log", "level", "-c", str(control.config), "--json", "3")
    assert json.loads(out) == {"level": 3, "name": "debug"}
    assert control.methods_called()[-1] == ("log.level", [3])


def test_rows_too_wide_for_the_terminal_print_as_one_block_per_record(run, control):
    long = "x" * 60
    control.answers["dlg.list"] = [{"call-id": f"{long}-1", "from_uri": f"sip:{long}@a"},
                                   {"call-id": f"{long}-2", "from_uri": f"sip:{long}@b"}]
    code, out, _ = run("ctl", "-c", str(control.config), "dlg.list")
    assert code == 0
    blocks = out.split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].splitlines()[0].split() == ["call-id", f"{long}-1"]
    assert "…" not in out


def test_shell_completion_offers_the_methods_the_running_proxy_serves(control):
    import click

    from sipgw.cli.ctl import _complete_method, ctl

    control.answers["system.listMethods"] = ["core.info", "core.uptime", "dispatcher.list"]
    ctx = click.Context(ctl, info_name="ctl")
    ctx.params["config_path"] = str(control.config)
    assert _complete_method(ctx, None, "core.") == ["core.info", "core.uptime"]
    ctx.params["config_path"] = str(control.config) + ".missing"
    assert _complete_method(ctx, None, "") == []  # no proxy: nothing, and no error
