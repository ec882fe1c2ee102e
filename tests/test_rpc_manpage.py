"""sipgw-rpc(7) names every method a fully built proxy serves."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from sipgw.config import parse_config
from sipgw.proxy.service import make_service

MAN = Path(__file__).resolve().parent.parent / "man"


class UdpMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock has no UDP: the HEP exporter's socket is only recorded."""

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        return None


def served_methods(tmp_path) -> list[str]:
    loaded = parse_config(
        '[listen]\nudp = []\ntcp = ["127.0.0.1:25098"]\n'
        f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n[state]\ndirectory = "{tmp_path}"\n'
    )
    svc = make_service(loaded, MemoryReactorClock())
    svc.startService()
    try:
        return svc.control.rpc_list_methods()
    finally:
        svc.stopService()


def test_sipgw_rpc_7_names_every_method_of_a_fully_built_service(tmp_path):
    text = (MAN / "sipgw-rpc.7").read_text()
    methods = served_methods(tmp_path)
    assert {"core.version", "stats.get_statistics", "system.listMethods"} <= set(methods)
    missing = [m for m in methods if f".B {m}\n" not in text]
    assert missing == []


def test_sipgw_stats_7_names_every_statistic_a_fully_built_service_declares(tmp_path):
    loaded = parse_config(
        '[listen]\nudp = []\ntcp = ["127.0.0.1:25097"]\n'
        f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n[state]\ndirectory = "{tmp_path}"\n'
        '[trace]\nhep = "127.0.0.1:9060"\n'
    )
    svc = make_service(loaded, UdpMemoryReactor())
    svc.startService()
    try:
        names = list(svc.stats.defs)
    finally:
        svc.stopService()
    assert "dialog:active_dialogs" in names and "trace:hep_sent" in names
    text = (MAN / "sipgw-stats.7").read_text()
    assert [n for n in names if f".B {n}\n" not in text] == []


def test_sipgw_rpc_7_names_the_methods_a_service_with_workers_answers_itself():
    from sipgw.proxy.workers.control import ServiceControl
    from sipgw.proxy.workers.supervisor import Supervisor
    from sipgw.rpc.registry import methods_of

    own = methods_of(ServiceControl.__new__(ServiceControl), Supervisor.__new__(Supervisor))
    assert {"core.workers", "core.uptime", "cfg.reload", "log.level"} <= set(own)
    text = (MAN / "sipgw-rpc.7").read_text()
    assert [m for m in own if f".B {m}\n" not in text] == []
