"""Every public name is documented: the man pages name each statistic and command, and the
configuration they show is the one shipped."""

from __future__ import annotations

import re
from pathlib import Path

import click

from sipgw.cli.main import cli
from sipgw.proxy.auth import AUTH_STATS
from sipgw.proxy.dispatcher import DISPATCHER_STATS
from sipgw.proxy.load import LOAD_STATS
from sipgw.proxy.overload import OVERLOAD_STATS
from sipgw.proxy.stats import CORE_STATS
from sipgw.proxy.transport.ws import WS_STATS

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
ASTERISK_FILES = [ROOT / "etc" / "asterisk" / name
                  for name in ("pjsip-sipgw.conf", "extensions-sipgw.conf")]


def troff(text: str) -> str:
    """``text`` as a man page writes it: backslashes and hyphen-minus escaped."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command below ``group``, as the words that run it (groups included)."""
    out = []
    for name, command in group.commands.items():
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out += command_paths(command, (*prefix, name))
    return out


def test_sipgw_stats_7_names_every_statistic():
    text = (MAN / "sipgw-stats.7").read_text()
    missing = [d.full_name
               for d in (*CORE_STATS, *WS_STATS, *DISPATCHER_STATS, *AUTH_STATS, *LOAD_STATS,
                         *OVERLOAD_STATS)
               if f".B {d.full_name}\n" not in text]
    assert missing == []


def test_every_command_has_a_man_page_named_in_sipgw_1():
    top = (MAN / "sipgw.1").read_text()
    for name in cli.commands:
        assert (MAN / f"sipgw-{name}.1").exists(), name
        assert f"sipgw\\-{name} (1)" in top, name


def test_sipgw_1_lists_every_subcommand_as_an_entry_of_its_own():
    top = (MAN / "sipgw.1").read_text()
    paths = command_paths(cli)
    assert ("users", "add") in paths and ("dispatcher", "set-state") in paths  # the walk works
    missing = []
    for path in paths:
        command = cli
        for word in path:
            command = command.commands[word]
        words = troff(" ".join(("sipgw", *path)))
        # A command that runs: its own ".B sipgw ..." entry; a group: named at least.
        entry = words if isinstance(command, click.Group) else f".B {words}\n"
        if entry not in top:
            missing.append(" ".join(path))
    assert missing == []


def test_every_man_page_a_page_refers_to_exists():
    refs = set()
    for page in MAN.iterdir():
        refs |= {(name.replace("\\-", "-"), section) for name, section in
                 re.findall(r"\.BR? +(sipgw[a-z.\\-]*) +\(([1-8])\)", page.read_text())}
    assert ("sipgw-asterisk", "7") in refs
    missing = sorted(f"{name}({section})" for name, section in refs
                     if not (MAN / f"{name}.{section}").is_file())
    assert missing == []


def test_the_asterisk_configuration_shown_in_readme_and_sipgw_asterisk_7_is_the_shipped_one():
    readme = (ROOT / "README.md").read_text()
    page = (MAN / "sipgw-asterisk.7").read_text()
    examples = re.findall(r"^\.EX\n(.*?)^\.EE\n", page, re.S | re.M)
    for path in ASTERISK_FILES:
        text = path.read_text()
        assert f"```ini\n{text}```\n" in readme, f"README.md does not show {path.name} as shipped"
        assert troff(text) in examples, f"sipgw-asterisk(7) does not show {path.name} as shipped"
