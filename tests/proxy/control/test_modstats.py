"""mod.stats: each component's tables, their entries and estimated bytes, on a real service."""

from __future__ import annotations

import sys

import pytest

from sipgw.proxy.control import modstats
from sipgw.proxy.control.modstats import ModStats, Sizer
from sipgw.proxy.transport import Source
from sipgw.rpc.registry import RpcError
from tests.proxy.control.test_admin import service  # noqa: F401 - the same running service


def _source(host: str) -> Source:
    return Source(transport="udp", host=host, port=5060, local_host="127.0.0.1",
                  local_port=5060)


def test_all_names_every_component_with_its_tables_and_a_total(service):
    everything = ModStats(service).rpc_stats("all")
    assert list(everything) == ["core", "tm", "registrar", "dispatcher", "websocket", "auth",
                                "pike", "dialog"]
    tm = everything["tm"]
    assert list(tm) == ["server_transactions", "client_transactions",
                        "retired_server_transactions", "retired_client_transactions", "Total"]
    assert tm["server_transactions"]["entries"] == 0 and tm["server_transactions"]["bytes"] > 0
    for module in everything.values():
        tables = {k: v for k, v in module.items() if k != "Total"}
        assert module["Total"] == sum(t["bytes"] for t in tables.values())


def test_pike_sources_are_counted_and_grow_the_estimate(service):
    stats = ModStats(service)
    before = stats.rpc_stats("pike")["pike"]
    for i in range(200):
        service.proxy.pike.check(_source(f"198.51.100.{i}"))
    after = stats.rpc_stats("pike", "all")["pike"]
    assert before["sources"]["entries"] == 0 and after["sources"]["entries"] == 200
    # Each entry holds at least its address string and its slotted record.
    assert after["Total"] - before["Total"] > 200 * (sys.getsizeof("198.51.100.100") + 64)


def test_auth_db_is_the_guides_name_for_auth_and_pkg_shm_are_accepted(service):
    stats = ModStats(service)
    service.proxy.auth.nonces.use(service.proxy.auth.nonces.new(), 1)
    assert stats.rpc_stats("auth_db", "shm")["auth_db"] == stats.rpc_stats("auth")["auth"]
    assert stats.rpc_stats("auth_db")["auth_db"]["nonces"]["entries"] == 1
    with pytest.raises(RpcError, match="no module 'auth_dbx'; modules: core, tm, .* or all"):
        stats.rpc_stats("auth_dbx")
    with pytest.raises(RpcError, match="memory kind 'heap': use pkg, shm or all"):
        stats.rpc_stats("tm", "heap")


class Entry:
    def __init__(self, text: str, shared: object) -> None:
        self.text = text
        self.shared = shared


Entry.__module__ = "sipgw.test"  # sized as sipgw's own objects are: followed


def test_the_sizer_follows_our_objects_counts_shared_ones_once_and_stops_at_components():
    shared = "s" * 10_000
    component = ["c" * 50_000]
    table = {i: Entry(f"{i:04}" + "x" * 996, shared) for i in range(10)}
    table[10] = component
    sized = Sizer(stop=[component]).table(table)
    assert sized["entries"] == 11
    # Ten 1000-character strings and the shared one once, but not the component.
    assert 10 * 1000 + 10_000 < sized["bytes"] < 10 * 1000 + 10_000 + 11 * 1000 + 10_000


def test_a_large_table_is_estimated_from_a_sample(monkeypatch):
    table = {i: "y" * (100 + i % 7) for i in range(5000)}
    exact = Sizer(stop=[]).table(table)
    monkeypatch.setattr(modstats, "SAMPLE", 100)
    estimated = Sizer(stop=[]).table(table)
    assert estimated["entries"] == exact["entries"] == 5000
    assert abs(estimated["bytes"] - exact["bytes"]) < exact["bytes"] * 0.02
