"""Every public name is documented: the man pages name each statistic and command."""

from __future__ import annotations

from pathlib import Path

from sipgw.cli.main import cli
from sipgw.proxy.auth import AUTH_STATS
from sipgw.proxy.dispatcher import DISPATCHER_STATS
from sipgw.proxy.stats import CORE_STATS
from sipgw.proxy.transport.ws import WS_STATS

MAN = Path(__file__).resolve().parent.parent / "man"


def test_sipgw_stats_7_names_every_statistic():
    text = (MAN / "sipgw-stats.7").read_text()
    missing = [d.full_name for d in (*CORE_STATS, *WS_STATS, *DISPATCHER_STATS, *AUTH_STATS)
               if f".B {d.full_name}\n" not in text]
    assert missing == []


def test_every_command_has_a_man_page_named_in_sipgw_1():
    top = (MAN / "sipgw.1").read_text()
    for name in cli.commands:
        assert (MAN / f"sipgw-{name}.1").exists(), name
        assert f"sipgw\\-{name} (1)" in top, name
