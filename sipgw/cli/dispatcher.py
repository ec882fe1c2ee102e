"""``sipgw dispatcher list|reload|set-state``: the backends, as kamcmd dispatcher.* shows them."""

from __future__ import annotations

from typing import Any

import click

from sipgw.cli.app import App, pass_app
from sipgw.cli.connect import call_once
from sipgw.cli.options import config_option
from sipgw.cli.render import print_json, rows_table, show

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the RPC result unchanged, as JSON.")


def destination_rows(listing: Any) -> list[dict[str, Any]]:
    """Kamailio's nested dispatcher.list → one row per destination."""
    rows = []
    for record in (listing or {}).get("RECORDS", []) or []:
        s = record.get("SET", {})
        for target in s.get("TARGETS", []) or []:
            dest = target.get("DEST", {})
            latency = dest.get("LATENCY") or {}
            rows.append({"set": s.get("ID"), "uri": dest.get("URI"), "flags": dest.get("FLAGS"),
                         "priority": dest.get("PRIORITY"), "avg ms": latency.get("AVG"),
                         "max ms": latency.get("MAX"), "timeouts": latency.get("TIMEOUT")})
    return rows


@click.group()
def dispatcher() -> None:
    """The backends (dispatcher sets) of the running proxy."""


@dispatcher.command("list")
@config_option
@json_option
@pass_app
def list_(app: App, config_path: str | None, as_json: bool) -> None:
    """Destinations with their state flags (A active, I inactive, D disabled, T trying;
    P probing) and probe latency."""
    result = call_once(app, config_path, "dispatcher.list")
    if as_json:
        print_json(app.out, result)
    else:
        app.out.print(rows_table(destination_rows(result)))


@dispatcher.command()
@config_option
@json_option
@pass_app
def reload(app: App, config_path: str | None, as_json: bool) -> None:
    """Read the destination list again; a bad list is refused and the running one kept."""
    result = call_once(app, config_path, "dispatcher.reload")
    (print_json if as_json else show)(app.out, result)


@dispatcher.command("set-state")
@config_option
@json_option
@click.argument("state")
@click.argument("setid")
@click.argument("uri")
@pass_app
def set_state(app: App, config_path: str | None, as_json: bool, state: str, setid: str,
              uri: str) -> None:
    """Set URI in SETID (or all) to STATE: a, i, d or t, optionally followed by p (probing)."""
    set_arg: int | str = int(setid) if setid.isdigit() else setid
    result = call_once(app, config_path, "dispatcher.set_state", [state, set_arg, uri])
    (print_json if as_json else show)(app.out, result)
