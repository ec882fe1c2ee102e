"""The dispatcher inside the proxy: failover at the relay, probes on the clock, 503 when
none is left, the operations API. A fake link and ``task.Clock``, as in test_relay.py."""

from __future__ import annotations

import os
import tempfile

import pytest

from sipgw.config import DispatcherConfig
from sipgw.proxy.core import Proxy
from sipgw.proxy.transport import Source
from sipgw.rpc.registry import RpcError, methods_of
from sipgw.tools.harness import config_with, core
from tests.proxy.relay import test_relay
from tests.proxy.relay.test_relay import CALLER, Link, reply_from_backend, request

# test_relay's fixtures: the same Clock and the same fake link.
clock = test_relay.clock
link = test_relay.link

A = ("127.0.0.1", 5081)
B = ("127.0.0.1", 5082)
BACKUP = ("127.0.0.1", 5089)
LIST = ("1 sip:127.0.0.1:5081 0 10\n1 sip:127.0.0.1:5082 0 10\n"
        "1 sip:127.0.0.1:5089 0 0 duid=backup\n")


def src(hostport) -> Source:
    return Source(transport="udp", host=hostport[0], port=hostport[1], local_host="127.0.0.1",
                  local_port=5060)


def build(clock, link, text: str = LIST, **settings) -> Proxy:
    """A core with the dispatcher of ``[dispatcher]`` list_file = ``text`` and
    ``settings`` (config keys), probes every 10 s with a 2 s timeout, round robin."""
    fd, path = tempfile.mkstemp(suffix=".list")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    section = dict(ping_interval=10.0, ping_timeout=2.0, algorithm=4, list_file=path,
                   destinations=("sip:127.0.0.1:5081",))
    proxy = core(clock=clock, send=link, dispatch=True,
                 config=config_with(dispatcher={**section, **settings}))
    os.unlink(path)  # read once at load; a reload would need it again
    return proxy


@pytest.fixture
def proxy(clock, link) -> Proxy:
    return build(clock, link)


def flags(proxy: Proxy) -> dict[str, str]:
    [record] = proxy.dispatcher.rpc_list()["RECORDS"]
    return {t["DEST"]["URI"]: t["DEST"]["FLAGS"] for t in record["SET"]["TARGETS"]}


def answer_probes(proxy: Proxy, link: Link, *alive, status: int = 200) -> None:
    for msg, dest in list(link.sent):
        if getattr(msg, "method", None) == "OPTIONS" and (dest.host, dest.port) in alive:
            proxy.receive(reply_from_backend(msg, status, "OK"), src((dest.host, dest.port)))
    link.clear()


def test_a_5xx_goes_to_the_next_destination_and_the_caller_sees_only_the_final_answer(
    proxy, link
):
    proxy.receive(request(), CALLER)
    [first] = [m for m in link.to(*A) if getattr(m, "method", None) == "INVITE"]
    proxy.receive(reply_from_backend(first, 503, "Service Unavailable"), src(A))
    assert link.to(*A)[-1].method == "ACK"  # hop by hop, for the 503 we absorbed
    [second] = [m for m in link.to(*B) if getattr(m, "method", None) == "INVITE"]
    assert second.top_via.branch != first.top_via.branch
    assert second.call_id == first.call_id
    proxy.receive(reply_from_backend(second, 200, "OK"), src(B))
    assert [m.status for m in link.to_caller()] == [100, 200]
    assert proxy.stats.get("dispatcher:failovers") == 1


def test_a_timeout_fails_over_and_the_dead_destination_is_marked(clock, link):
    proxy = build(clock, link)  # probes configured (not started): they could revive it
    proxy.receive(request(), CALLER)
    clock.advance(32.5)  # timer B on the first destination
    [invite_b] = [m for m in link.to(*B) if m.method == "INVITE"]
    assert flags(proxy)["sip:127.0.0.1:5081"] == "IP"
    proxy.receive(reply_from_backend(invite_b, 200, "OK"), src(B))
    assert [m.status for m in link.to_caller()] == [100, 200]


def test_a_transport_error_fails_over_at_once(proxy, link):
    proxy.receive(request(), CALLER)
    proxy.relay.transport_failed(*A, "udp")
    assert [m.method for m in link.to(*B) if m.method == "INVITE"] == ["INVITE"]
    assert flags(proxy)["sip:127.0.0.1:5081"] == "IP"


def test_a_cancel_during_failover_reaches_the_branch_that_took_over(proxy, link):
    proxy.receive(request(), CALLER)
    [first] = [m for m in link.to(*A) if m.method == "INVITE"]
    proxy.receive(reply_from_backend(first, 500, "Server Error"), src(A))
    [second] = [m for m in link.to(*B) if m.method == "INVITE"]
    proxy.receive(reply_from_backend(second, 180, "Ringing"), src(B))
    link.clear()
    proxy.receive(request("CANCEL", body=b""), CALLER)
    [cancel] = [m for m in link.to(*B) if m.method == "CANCEL"]
    assert cancel.top_via.branch == second.top_via.branch
    assert not [m for m in link.to(*A) if m.method == "CANCEL"]


def test_when_every_destination_fails_the_last_answer_goes_to_the_caller(clock, link):
    proxy = build(clock, link, max_failover=1, ping_interval=0)
    proxy.receive(request(), CALLER)
    for peer in (A, B):
        [inv] = [m for m in link.to(*peer) if m.method == "INVITE"]
        proxy.receive(reply_from_backend(inv, 503, "Service Unavailable"), src(peer))
    assert not [m for m in link.to(*BACKUP) if m.method == "INVITE"]  # limit reached
    assert [m.status for m in link.to_caller()] == [100, 503]


def test_no_usable_destination_is_a_503_with_retry_after(clock, link):
    proxy = build(clock, link, retry_after=30)
    for uri in ("sip:127.0.0.1:5081", "sip:127.0.0.1:5082", "sip:127.0.0.1:5089"):
        proxy.dispatcher.rpc_set_state("ip", 1, uri)
    link.clear()
    proxy.receive(request(), CALLER)
    final = link.to_caller()[-1]
    assert (final.status, final.header("retry-after")) == (503, "30")
    assert not link.to(*A) and not link.to(*B) and not link.to(*BACKUP)


def test_probes_go_out_every_interval_and_a_silent_destination_goes_inactive_after_the_timeout(
    proxy, clock, link
):
    proxy.dispatcher.start()
    proxy.clock.advance(0)  # the first round goes out once the reactor runs
    probes = [(d.host, d.port) for m, d in link.sent if m.method == "OPTIONS"]
    assert sorted(probes) == [A, B, BACKUP]
    answer_probes(proxy, link, A, BACKUP)  # B stays silent
    assert flags(proxy) == {"sip:127.0.0.1:5081": "AP", "sip:127.0.0.1:5082": "AP",
                            "sip:127.0.0.1:5089": "AP"}
    clock.advance(1.9)
    assert flags(proxy)["sip:127.0.0.1:5082"] == "AP"  # retransmitted, still waiting
    clock.advance(0.2)  # 2 s probe timeout, not 32 s timer F
    assert flags(proxy)["sip:127.0.0.1:5082"] == "IP"
    assert proxy.stats.get("dispatcher:active_destinations") == 2
    link.clear()
    clock.advance(8.0)  # the next round, 10 s after the first
    answer_probes(proxy, link, A, B, BACKUP)
    assert flags(proxy)["sip:127.0.0.1:5082"] == "AP"
    proxy.dispatcher.stop()


def test_thresholds_need_that_many_failures_to_go_down_and_answers_to_come_back(clock, link):
    proxy = build(clock, link, probing_threshold=2, inactive_threshold=2, ping_interval=5)
    proxy.dispatcher.start()
    proxy.clock.advance(0)  # the first round goes out once the reactor runs
    seen = []
    for answer in (False, False, True, True):
        if answer:
            answer_probes(proxy, link, A, B, BACKUP)
        else:
            answer_probes(proxy, link, B, BACKUP)
            clock.advance(2.0)
        seen.append(flags(proxy)["sip:127.0.0.1:5081"])
        link.clear()
        clock.advance(5.0 - (0 if answer else 2.0))
    assert seen == ["TP", "IP", "IP", "AP"]
    proxy.dispatcher.stop()


def test_reply_codes_that_count_as_alive_are_configurable(clock, link):
    proxy = build(clock, link, ping_reply_codes=("2xx",))
    proxy.dispatcher.start()
    proxy.clock.advance(0)  # the first round goes out once the reactor runs
    answer_probes(proxy, link, A, B, BACKUP, status=404)
    assert set(flags(proxy).values()) == {"IP"}
    link.clear()
    proxy = build(clock, link)  # default: 404 means it answered
    proxy.dispatcher.start()
    proxy.clock.advance(0)  # the first round goes out once the reactor runs
    answer_probes(proxy, link, A, B, BACKUP, status=404)
    assert set(flags(proxy).values()) == {"AP"}


@pytest.mark.parametrize(("mode", "initial", "probed"), [
    (0, "AX", set()), (1, "AP", {A, B, BACKUP}), (2, "AX", set()), (3, "AX", set())])
def test_probing_modes_choose_which_destinations_are_probed(clock, link, mode, initial, probed):
    proxy = build(clock, link, probing_mode=mode)
    proxy.dispatcher.start()
    proxy.clock.advance(0)  # the first round goes out once the reactor runs
    assert set(flags(proxy).values()) == {initial}
    assert {(d.host, d.port) for m, d in link.sent if m.method == "OPTIONS"} == probed


def test_probing_mode_0_probes_a_flagged_destination_until_it_answers(clock, link):
    proxy = build(clock, link, text="1 sip:127.0.0.1:5081 8\n1 sip:127.0.0.1:5082 0\n",
                  probing_mode=0)
    proxy.dispatcher.start()
    proxy.clock.advance(0)  # the first round goes out once the reactor runs
    assert {(d.host, d.port) for m, d in link.sent if m.method == "OPTIONS"} == {A}
    answer_probes(proxy, link, A)
    assert flags(proxy) == {"sip:127.0.0.1:5081": "AX", "sip:127.0.0.1:5082": "AX"}
    clock.advance(10)
    assert link.sent == []


def test_the_list_has_kamailios_shape_with_counters(proxy, link, clock):
    proxy.dispatcher.start()
    proxy.clock.advance(0)  # the first round goes out once the reactor runs
    clock.advance(0.004)
    answer_probes(proxy, link, A, B, BACKUP)
    proxy.receive(request(), CALLER)
    listing = proxy.dispatcher.rpc_list()
    assert listing["NRSETS"] == 1
    dest = listing["RECORDS"][0]["SET"]["TARGETS"][2]["DEST"]
    assert dest["URI"] == "sip:127.0.0.1:5089"
    assert (dest["FLAGS"], dest["PRIORITY"], dest["ATTRS"]["DUID"]) == ("AP", 0, "backup")
    assert dest["LATENCY"] == {"AVG": 4.0, "MAX": 4.0, "TIMEOUT": 0}
    first = listing["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"]
    assert first["STATS"]["REQUESTS"] == 1 and first["STATS"]["FAILURES"] == 0


def test_the_operations_are_declared_for_the_control_plane(proxy):
    assert set(methods_of(proxy.dispatcher)) == {
        "dispatcher.list", "dispatcher.reload", "dispatcher.set_state"}


def test_set_state_takes_kamailio_states_and_refuses_unknown_ones(proxy):
    proxy.dispatcher.rpc_set_state("d", "all", "sip:127.0.0.1:5082")
    assert flags(proxy)["sip:127.0.0.1:5082"] == "DX"
    proxy.dispatcher.rpc_set_state("ap", 1, "sip:127.0.0.1:5082")
    assert flags(proxy)["sip:127.0.0.1:5082"] == "AP"
    with pytest.raises(RpcError, match="bad state"):
        proxy.dispatcher.rpc_set_state("x", 1, "sip:127.0.0.1:5082")
    with pytest.raises(RpcError, match="not found"):
        proxy.dispatcher.rpc_set_state("a", 2, "sip:127.0.0.1:5082")


def test_a_disabled_destination_is_neither_probed_nor_revived_by_probes(proxy, link):
    proxy.dispatcher.rpc_set_state("d", 1, "sip:127.0.0.1:5081")
    proxy.dispatcher.start()
    proxy.clock.advance(0)  # the first round goes out once the reactor runs
    assert A not in {(d.host, d.port) for m, d in link.sent if m.method == "OPTIONS"}


def test_reload_keeps_states_of_destinations_still_listed_and_refuses_a_bad_file(
    proxy, tmp_path
):
    proxy.dispatcher.rpc_set_state("ip", 1, "sip:127.0.0.1:5082")
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:127.0.0.1:5082 0 10\n1 sip:127.0.0.1:5083 0 10\n")
    proxy.dispatcher.configure(DispatcherConfig(list_file=str(path)))
    proxy.dispatcher.rpc_reload()
    assert flags(proxy) == {"sip:127.0.0.1:5082": "IP", "sip:127.0.0.1:5083": "AP"}
    path.write_text("1 sip:127.0.0.1:5084\nbad line here\n")
    with pytest.raises(RpcError, match=r"dispatcher.list:2: setid"):
        proxy.dispatcher.rpc_reload()
    assert list(flags(proxy)) == ["sip:127.0.0.1:5082", "sip:127.0.0.1:5083"]


def test_requests_from_any_destination_are_from_a_backend(proxy):
    assert proxy.backends.is_backend(src(BACKUP)) and proxy.backends.is_backend(src(B))
    assert not proxy.backends.is_backend(src(("127.0.0.1", 5070)))


def test_a_reload_that_turns_probes_on_starts_them_and_one_that_turns_them_off_stops_them(
    clock, link
):
    proxy = build(clock, link, ping_interval=0)
    proxy.dispatcher.start()
    clock.advance(10)
    assert link.sent == []
    proxy.dispatcher.configure(DispatcherConfig(ping_interval=5))
    clock.advance(0)
    assert {(d.host, d.port) for m, d in link.sent if m.method == "OPTIONS"} == {A, B, BACKUP}
    answer_probes(proxy, link, A, B, BACKUP)
    proxy.dispatcher.configure(DispatcherConfig(ping_interval=0))
    clock.advance(20)
    assert link.sent == []
