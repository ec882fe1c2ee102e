"""``sipgw stats [NAME|group:|all]...``: statistics, Kamailio's names and argument rules."""

from __future__ import annotations

import click

from sipgw.cli.app import App, pass_app
from sipgw.cli.connect import call, connect
from sipgw.cli.options import config_option
from sipgw.cli.render import print_json, rows_table


def parse_lines(lines: list[str]) -> dict[str, int | str]:
    """``["core:rcv_requests = 3", ...]`` → ``{"core:rcv_requests": 3, ...}``."""
    out: dict[str, int | str] = {}
    for line in lines:
        name, _, value = str(line).partition(" = ")
        value = value.strip()
        out[name.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return out


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help='Print {"group:name": value, ...}.')
@click.option("--reset", is_flag=True, help="Set the selected counters back to 0 first.")
@click.argument("names", nargs=-1)
@pass_app
def stats(app: App, config_path: str | None, as_json: bool, reset: bool,
          names: tuple[str, ...]) -> None:
    """Show statistics: all (default), a group such as core: or a name such as
    rcv_requests or auth:failed."""
    params = list(names) or ["all"]
    client = connect(app, config_path)
    try:
        if reset:
            call(app, client, "stats.reset_statistics", params)
        values = parse_lines(call(app, client, "stats.get_statistics", params))
    finally:
        client.close()
    if as_json:
        print_json(app.out, values)
        return
    rows = []
    for name, value in values.items():
        group, _, short = name.partition(":")
        rows.append({"group": group, "name": short, "value": value})
    app.out.print(rows_table(rows))
