from __future__ import annotations

import pytest

from sipgw.proxy.stats import StatDef, Stats
from sipgw.rpc.registry import methods_of, rpc


class Owner:
    def __init__(self) -> None:
        self.n = 3

    @rpc("thing.count", help="How many things.")
    def rpc_count(self) -> int:
        return self.n


def test_methods_are_collected_bound_with_their_help():
    methods = methods_of(Owner())
    assert list(methods) == ["thing.count"]
    assert methods["thing.count"].handler() == 3
    assert methods["thing.count"].help == "How many things."


def test_a_method_declared_twice_is_refused():
    with pytest.raises(ValueError, match="thing.count"):
        methods_of(Owner(), Owner())


def test_modules_declare_their_statistics_and_selection_follows_kamailio_rules():
    stats = Stats()
    stats.declare((StatDef(group="auth", name="authorized", help="x"),))
    stats.inc("auth:authorized", 2)
    assert stats.select("auth:") == {"auth:authorized": 2}
    assert stats.select("authorized") == {"auth:authorized": 2}
    assert "core:rcv_requests" in stats.select("all")


def test_stats_describe_says_what_each_statistic_counts_and_whether_it_is_a_level():
    stats = Stats()
    described = stats.rpc_describe("tm:")
    assert described["tm.UAS_transactions"] == {"help": "server transactions created",
                                                "kind": "counter"}
    assert described["tm.inuse_transactions"]["kind"] == "gauge"
    assert set(described) == set(stats.rpc_fetch("tm:"))
