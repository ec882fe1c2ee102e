"""``sipgw log level [LEVEL]``: the running proxy's log level (kamcmd log.level)."""

from __future__ import annotations

import click

from sipgw.cli.app import App, pass_app
from sipgw.cli.connect import call_once
from sipgw.cli.options import config_option
from sipgw.cli.render import print_json


@click.group()
def log() -> None:
    """The running proxy's log."""


@log.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help='Print {"level": N, "name": NAME}.')
@click.argument("level", required=False)
@pass_app
def level(app: App, config_path: str | None, as_json: bool, level: str | None) -> None:
    """Show the log level, or set it to LEVEL (error, warning, notice, info, debug or a
    Kamailio number -5..3) until the next reload."""
    params = [] if level is None else [int(level) if level.lstrip("-").isdigit() else level]
    result = call_once(app, config_path, "log.level", params)
    if as_json:
        print_json(app.out, result)
    else:
        app.out.print(f"{result['name']} ({result['level']})")
