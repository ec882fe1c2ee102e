"""``sipgw ws list|close``: the browsers' WebSocket connections (kamcmd ws.dump / ws.close)."""

from __future__ import annotations

import click

from sipgw.cli.app import App, pass_app
from sipgw.cli.connect import call_once
from sipgw.cli.options import config_option
from sipgw.cli.render import print_json, show


@click.group()
def ws() -> None:
    """WebSocket connections of the running proxy."""


@ws.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the RPC result unchanged.")
@pass_app
def list_(app: App, config_path: str | None, as_json: bool) -> None:
    """Open connections: id, client and local address, state, idle and open time, users."""
    result = call_once(app, config_path, "ws.dump")
    if as_json:
        print_json(app.out, result)
        return
    connections = (result or {}).get("connections", [])
    rows = [{k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in c.items()}
            for c in connections]
    if rows:
        show(app.out, rows)
    app.err.print(f"{len(rows)} connection(s)")


@ws.command()
@config_option
@click.argument("which")
@pass_app
def close(app: App, config_path: str | None, which: str) -> None:
    """Close connection WHICH (an id from sipgw ws list), or every connection a user
    (sip:5001@domain) registered on."""
    call_once(app, config_path, "ws.close", [int(which) if which.isdigit() else which])
    app.err.print(f"closed {which}")
