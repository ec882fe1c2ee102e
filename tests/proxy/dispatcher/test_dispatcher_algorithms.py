"""Which destination each Kamailio algorithm picks, and where a request fails over to."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from twisted.internet.task import Clock

from sipgw.config import DispatcherConfig
from sipgw.proxy.dispatcher import Dispatcher
from sipgw.proxy.dispatcher.build import resolve_uri
from sipgw.proxy.dispatcher.listfile import parse_list
from sipgw.proxy.dispatcher.state import INACTIVE
from sipgw.proxy.stats import Stats
from sipgw.sip.parser import parse_message

THREE = "1 sip:10.0.0.1:5060\n1 sip:10.0.0.2:5060\n1 sip:10.0.0.3:5060\n"


def make(text: str = THREE, probes=None, **settings) -> Dispatcher:
    d = Dispatcher(clock=Clock(), stats=Stats(),
                   settings=DispatcherConfig(**{"ping_interval": 0, **settings}),
                   inline=parse_list(text), resolve=resolve_uri, rng=random.Random(5),
                   send_request=probes)
    d.reload()
    return d


def invite(call_id: str = "c1", *, from_user: str = "alice", to_user: str = "bob",
           ruri_user: str = "5002", method: str = "INVITE", auth: str = ""):
    text = (
        f"{method} sip:{ruri_user}@sipgw.example SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK1\r\n"
        f"From: <sip:{from_user}@example.com>;tag=1\r\nTo: <sip:{to_user}@example.com>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())


def chosen(d: Dispatcher, n: int, **kw) -> Counter:
    return Counter(d.select(invite(f"call-{i}", **kw)).uri for i in range(n))


def target(d: Dispatcher, uri: str):
    return next(t for t in d.targets() if t.uri == uri)


def test_round_robin_takes_each_destination_in_turn():
    d = make(algorithm=4)
    assert [d.select(invite()).address.host for _ in range(4)] == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1"]


def test_round_robin_skips_a_destination_that_is_down():
    d = make(algorithm=4)
    target(d, "sip:10.0.0.2:5060").flags |= INACTIVE
    assert "sip:10.0.0.2:5060" not in chosen(d, 30)


@pytest.mark.parametrize(("algorithm", "vary"), [
    (0, {"call_id"}), (1, {"from_user"}), (2, {"to_user"}), (3, {"ruri_user"})])
def test_hash_algorithms_send_the_same_key_to_the_same_destination(algorithm, vary):
    d = make(algorithm=algorithm)
    key = dict(call_id="same", from_user="u1", to_user="u2", ruri_user="u3")
    picks = set()
    for i in range(20):
        other = {k: f"{v}-{i}" for k, v in key.items() if k not in vary}
        picks.add(d.select(invite(**{**key, **other})).uri)
    assert len(picks) == 1
    spread = Counter(d.select(invite(**{k: f"k{i}" for k in key})).uri for i in range(300))
    assert len(spread) == 3  # different keys do spread


def test_a_hash_whose_destination_is_down_moves_to_the_next_active_one_and_back():
    d = make(algorithm=0)
    home = d.select(invite("sticky")).uri
    uris = [t.uri for t in d.targets()]
    target(d, home).flags |= INACTIVE
    assert d.select(invite("sticky")).uri == uris[(uris.index(home) + 1) % 3]
    target(d, home).flags &= ~INACTIVE
    assert d.select(invite("sticky")).uri == home


def test_auth_username_hash_without_credentials_goes_round_robin():
    d = make(algorithm=5)
    auth = 'Proxy-Authorization: Digest username="agent7", realm="x", nonce="n", uri="sip:x", response="r"\r\n'  # noqa: E501
    assert len({d.select(invite(f"c{i}", auth=auth)).uri for i in range(10)}) == 1
    assert len(chosen(d, 3)) == 3


def test_random_uses_every_destination():
    assert len(chosen(make(algorithm=6), 100)) == 3


def test_priority_algorithm_takes_the_highest_priority_and_fails_over_down_the_list():
    d = make("1 sip:10.0.0.1:5060 0 1\n1 sip:10.0.0.2:5060 0 9\n1 sip:10.0.0.3:5060 0 5\n",
             algorithm=8)
    attempt = d.begin(invite())
    assert [t.address.host for t in attempt.order] == ["10.0.0.2", "10.0.0.3", "10.0.0.1"]


def test_weights_70_30_give_exactly_70_30_per_hundred_requests():
    d = make("1 sip:10.0.0.1:5060 0 0 weight=70\n1 sip:10.0.0.2:5060 0 0 weight=30\n",
             algorithm=9)
    assert chosen(d, 2000) == {"sip:10.0.0.1:5060": 1400, "sip:10.0.0.2:5060": 600}


def test_relative_weights_share_among_the_usable_destinations_only():
    d = make("1 sip:10.0.0.1:5060 0 0 rweight=50\n1 sip:10.0.0.2:5060 0 0 rweight=25\n"
             "1 sip:10.0.0.3:5060 0 0 rweight=25\n", algorithm=11)
    assert chosen(d, 400)["sip:10.0.0.1:5060"] == 200
    target(d, "sip:10.0.0.1:5060").flags |= INACTIVE
    assert chosen(d, 400) == {"sip:10.0.0.2:5060": 200, "sip:10.0.0.3:5060": 200}


def test_call_load_picks_the_least_busy_within_maxload_and_bye_frees_the_slot():
    d = make("1 sip:10.0.0.1:5060 0 0 maxload=1\n1 sip:10.0.0.2:5060 0 0 maxload=1\n",
             algorithm=10)
    a = d.begin(invite("c1"))
    b = d.begin(invite("c2"))
    assert {a.target.uri, b.target.uri} == {"sip:10.0.0.1:5060", "sip:10.0.0.2:5060"}
    assert d.begin(invite("c3")) is None  # both at maxload
    d.call_ended(invite("c1", method="BYE"))
    assert d.begin(invite("c4")).target.uri == a.target.uri


def test_lower_priority_is_a_backup_used_only_when_the_primaries_are_down():
    d = make("1 sip:10.0.0.1:5060 0 10\n1 sip:10.0.0.2:5060 0 10\n1 sip:10.0.0.9:5060 0 0\n",
             algorithm=4)
    assert chosen(d, 100) == {"sip:10.0.0.1:5060": 50, "sip:10.0.0.2:5060": 50}
    target(d, "sip:10.0.0.1:5060").flags |= INACTIVE
    assert chosen(d, 10) == {"sip:10.0.0.2:5060": 10}
    target(d, "sip:10.0.0.2:5060").flags |= INACTIVE
    assert chosen(d, 10) == {"sip:10.0.0.9:5060": 10}
    target(d, "sip:10.0.0.9:5060").flags |= INACTIVE
    assert d.begin(invite()) is None
    assert d.stats.get("dispatcher:no_destination") == 1


def test_failover_walks_the_set_on_timeout_and_5xx_up_to_the_limit():
    d = make(algorithm=8, max_failover=1)
    attempt = d.begin(invite())
    assert attempt.target.uri == "sip:10.0.0.1:5060"
    assert attempt.failed(503, False).uri == "sip:10.0.0.2:5060"
    assert attempt.failed(408, True) is None  # the limit: one further destination
    assert d.stats.get("dispatcher:failovers") == 1
    assert [t.failures for t in d.targets()] == [1, 1, 0]


def test_a_final_answer_that_is_not_a_failover_code_is_passed_on():
    d = make(algorithm=8)
    attempt = d.begin(invite())
    assert attempt.failed(486, False) is None
    assert d.stats.get("dispatcher:failovers") == 0


def test_a_transport_error_takes_the_destination_down_at_once():
    d = make(algorithm=8, probing_threshold=3, ping_interval=10, probes=lambda *a, **k: None)
    attempt = d.begin(invite())
    assert attempt.failed(503, True).uri == "sip:10.0.0.2:5060"
    assert target(d, "sip:10.0.0.1:5060").state == "IP"
    assert d.stats.get("dispatcher:active_destinations") == 2


def test_without_probes_failures_fail_over_but_take_nothing_down():
    # Nothing would ever bring the destination back: only an operator's set_state.
    d = make(algorithm=8, ping_interval=0)
    attempt = d.begin(invite())
    assert attempt.failed(503, True).uri == "sip:10.0.0.2:5060"
    assert attempt.failed(408, True).uri == "sip:10.0.0.3:5060"
    assert {t.state for t in d.targets()} == {"AP"}


def test_select_skips_excluded_destinations():
    d = make(algorithm=8)
    first = d.select(invite())
    assert d.select(invite(), exclude=[first]).uri == "sip:10.0.0.2:5060"


def test_unsupported_algorithms_are_refused():
    with pytest.raises(ValueError, match="algorithm 7 is not supported"):
        make(algorithm=7)
