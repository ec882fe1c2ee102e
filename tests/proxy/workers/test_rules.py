"""What ``sipgw ctl`` shows of a service with workers: each method's answers merged by its
rule (the workers' answers here are the shapes their methods return)."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python.failure import Failure

from sipgw.proxy.workers.fanout import WorkerCallFailed, merged
from sipgw.proxy.workers.rules import RULES, rule_for
from sipgw.rpc.registry import RpcError, methods_of


def merge(method: str, *answers):
    return merged(rule_for(method), list(enumerate(answers)))


def test_counters_are_summed_and_a_worker_s_own_condition_or_a_copy_is_the_largest():
    w0 = {"core.rcv_requests": 10, "tm.inuse_transactions": 2, "load.reactor_lag_us": 900,
          "load.udp_queue_delay_max_us": 50, "pike.blocked_ips": 1,
          "dispatcher.active_destinations": 2, "core.shed_503": 40, "core.shed_percent": 60,
          "core.shed_dropping": 0}
    w1 = {"core.rcv_requests": 5, "tm.inuse_transactions": 3, "load.reactor_lag_us": 300,
          "load.udp_queue_delay_max_us": 70, "pike.blocked_ips": 1,
          "dispatcher.active_destinations": 2, "core.shed_503": 2, "core.shed_percent": 10,
          "core.shed_dropping": 1}
    assert merge("stats.fetch", w0, w1) == {
        "core.rcv_requests": 15, "tm.inuse_transactions": 5, "load.reactor_lag_us": 900,
        "load.udp_queue_delay_max_us": 70, "pike.blocked_ips": 1,
        "dispatcher.active_destinations": 2, "core.shed_503": 42, "core.shed_percent": 60,
        "core.shed_dropping": 1}


def test_kamailio_statistic_lines_are_merged_per_name_not_repeated():
    w0 = ["core:rcv_requests = 10", "load:reactor_lag_max_us = 4000"]
    w1 = ["core:rcv_requests = 7", "load:reactor_lag_max_us = 9000"]
    assert merge("stats.get_statistics", w0, w1) == [
        "core:rcv_requests = 17", "load:reactor_lag_max_us = 9000"]


def _listing(requests: int, avg: float, flags: str = "AP") -> dict:
    return {"NRSETS": 1, "RECORDS": [{"SET": {"ID": 1, "TARGETS": [{"DEST": {
        "URI": "sip:10.0.0.5:5060", "FLAGS": flags, "PRIORITY": 0,
        "LATENCY": {"AVG": avg, "MAX": avg, "TIMEOUT": 0},
        "STATS": {"REQUESTS": requests, "FAILURES": 0, "LOAD": 0}}}]}}]}


def test_dispatcher_list_shows_each_destination_once_with_requests_of_all_workers():
    shown = merge("dispatcher.list", _listing(3, 0.0), _listing(4, 1.5))
    assert shown["NRSETS"] == 1
    [record] = shown["RECORDS"]
    [target] = record["SET"]["TARGETS"]
    dest = target["DEST"]
    assert dest["URI"] == "sip:10.0.0.5:5060" and dest["FLAGS"] == "AP"
    assert dest["STATS"]["REQUESTS"] == 7
    assert dest["LATENCY"]["AVG"] == 1.5  # the prober's; the other worker measured nothing


def test_dialogs_and_websocket_connections_say_which_worker_holds_them():
    d0 = [{"call-id": "a@x"}]
    d1 = [{"call-id": "b@x"}, {"call-id": "c@x"}]
    assert merge("dlg.list", d0, d1) == [{"call-id": "a@x", "worker": 0},
                                         {"call-id": "b@x", "worker": 1},
                                         {"call-id": "c@x", "worker": 1}]
    assert merge("dlg.stats_active", {"ongoing": 1, "all": 1},
                 {"ongoing": 2, "all": 2}) == {"ongoing": 3, "all": 3}
    ws = merge("ws.dump", {"connections": [{"id": 1}], "info": {"wscounter": 1}},
               {"connections": [{"id": 2}, {"id": 4}], "info": {"wscounter": 2}})
    assert ws == {"connections": [{"id": 1, "worker": 0}, {"id": 2, "worker": 1},
                                  {"id": 4, "worker": 1}], "info": {"wscounter": 3}}


def test_a_ban_every_worker_holds_is_listed_once_with_the_longest_time_left():
    w0 = {"BANS": [{"TYPE": "user", "NAME": "5001@x", "EXPIRES": 890}]}
    w1 = {"BANS": [{"TYPE": "user", "NAME": "5001@x", "EXPIRES": 899},
                   {"TYPE": "source", "NAME": "192.0.2.9", "EXPIRES": 10}]}
    assert merge("auth.bans", w0, w1) == {"BANS": [
        {"TYPE": "user", "NAME": "5001@x", "EXPIRES": 899},
        {"TYPE": "source", "NAME": "192.0.2.9", "EXPIRES": 10}]}
    assert merge("auth.unban", {"REMOVED": 1}, {"REMOVED": 1}) == {"REMOVED": 1}


def test_pike_adds_up_what_each_worker_saw_from_an_address():
    def row(ip, prev, curr, status, expires):
        return {"ip_addr": ip, "leaf_hits_prev": prev, "leaf_hits_curr": curr,
                "expires": expires, "status": status}

    w0 = {"max_hits": 30, "list": [row("192.0.2.1", 20, 5, "WARM", 3)], "number_of_rows": 1}
    w1 = {"max_hits": 30, "list": [row("192.0.2.2", 1, 0, "", 9),
                                   row("192.0.2.1", 15, 2, "HOT", 8)], "number_of_rows": 2}
    assert merge("pike.top", w0, w1) == {"max_hits": 30, "number_of_rows": 2, "list": [
        row("192.0.2.1", 35, 7, "HOT", 8), row("192.0.2.2", 1, 0, "", 9)]}


def test_connections_are_summed_but_the_listeners_every_worker_shares_counted_once():
    one = {"connections": {"tcp": 1, "ws": 2}, "listeners": {"udp": 1, "tcp": 1}, "total": 3}
    two = {"connections": {"tcp": 0, "ws": 5}, "listeners": {"udp": 1, "tcp": 1}, "total": 5}
    assert merge("core.connections", one, two) == {
        "connections": {"tcp": 1, "ws": 7}, "listeners": {"udp": 1, "tcp": 1}, "total": 8}


def test_memory_is_summed_and_each_worker_shown():
    shown = merge("core.memory", {"rss_kb": 60000, "peak_rss_kb": 61000, "python_blocks": 9},
                  {"rss_kb": 50000, "peak_rss_kb": 52000, "python_blocks": 8})
    assert (shown["rss_kb"], shown["peak_rss_kb"], shown["python_blocks"]) == (110000,
                                                                                113000, 17)
    assert [w["worker"] for w in shown["workers"]] == [0, 1]
    assert merge("core.memory", {"rss_kb": None, "peak_rss_kb": None, "python_blocks": 1},
                 {"rss_kb": None, "peak_rss_kb": None, "python_blocks": 1})["rss_kb"] is None


def test_the_config_is_given_once_and_a_method_without_a_rule_never_adds_up():
    assert merge("cfg.get", 70, 70) == 70
    assert merge("log.level", {"level": 3, "name": "debug"},
                 {"level": 3, "name": "debug"}) == {"level": 3, "name": "debug"}
    # Workers that disagree (one set with sipgw ctl -s): each one's, labelled.
    assert merge("log.level", {"level": 3}, {"level": 2}) == [
        {"worker": 0, "result": {"level": 3}}, {"worker": 1, "result": {"level": 2}}]
    assert merge("new.method", 5, 5) == 5
    assert merge("new.method", 5, 6) == [{"worker": 0, "result": 5},
                                         {"worker": 1, "result": 6}]


def _refused(index: int, message: str, code: int = -32602) -> Failure:
    return Failure(WorkerCallFailed(index, code, message))


def test_a_command_for_the_worker_concerned_succeeds_when_that_one_takes_it():
    assert merged(rule_for("ws.close"), [(0, _refused(0, "no WebSocket connection for 7")),
                                         (1, "ok")]) == "ok"
    assert merged(rule_for("pike.unblock"), [(0, 1), (1, _refused(1, "not blocked"))]) == 1
    with pytest.raises(RpcError) as refused:
        merged(rule_for("ws.close"), [(0, _refused(0, "no WebSocket connection for 9")),
                                      (1, _refused(1, "no WebSocket connection for 9"))])
    assert refused.value.message == "no WebSocket connection for 9"


def test_a_command_for_every_worker_fails_when_one_refuses_and_says_which():
    rule = rule_for("dispatcher.set_state")
    assert merged(rule, [(0, None), (1, None)]) is None
    with pytest.raises(RpcError) as refused:
        merged(rule, [(0, None), (1, _refused(1, "destination not found", 404))])
    assert (refused.value.message, refused.value.code) == ("worker 1: destination not found",
                                                           404)
    with pytest.raises(RpcError) as every:
        merged(rule, [(0, _refused(0, "destination not found", 404)),
                      (1, _refused(1, "destination not found", 404))])
    assert every.value.message == "destination not found"


def test_every_method_a_worker_serves_has_its_rule_or_the_supervisor_answers_it(tmp_path):
    from sipgw.proxy.workers.control import ServiceControl
    from tests.test_rpc_manpage import served_methods

    served = served_methods(tmp_path)
    own = {m for m in methods_of(ServiceControl.__new__(ServiceControl))}
    assert "core.uptime" in own and "cfg.reload" in own
    assert [m for m in served if m not in RULES and m not in own] == []
    # No rule for a method gone (tls.info is served with a certificate: the page has it).
    page = (Path(__file__).resolve().parents[3] / "man" / "sipgw-rpc.7").read_text()
    assert [m for m in RULES if f".B {m}\n" not in page] == []
