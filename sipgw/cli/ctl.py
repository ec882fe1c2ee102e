"""``sipgw ctl METHOD [ARGS...]``: call any control method, like kamcmd."""

from __future__ import annotations

import json
from typing import Any

import click

from sipgw.cli.app import App, pass_app
from sipgw.cli.connect import call, connect
from sipgw.cli.options import config_option
from sipgw.cli.render import print_json, show


def parse_arg(text: str) -> Any:
    """kamcmd's habits: ``s:TEXT`` is a string, ``i:N`` an integer; a bare number is a number,
    ``{...}``/``[...]`` JSON; anything else a string."""
    if text.startswith("s:"):
        return text[2:]
    if text.startswith("i:"):
        try:
            return int(text[2:])
        except ValueError:
            raise click.BadParameter(f"{text!r}: i: needs an integer") from None
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError as e:
            raise click.BadParameter(f"{text!r}: not JSON ({e})") from None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if text.strip().lower() not in ("nan", "inf", "-inf", "infinity") else text


def _complete_method(ctx: click.Context, param: click.Parameter, incomplete: str):
    """Shell completion: the methods the running proxy serves (nothing if it is down)."""
    from sipgw.config import config_path_from_env, load_config
    from sipgw.rpc.client import Client, find_socket

    try:
        loaded = load_config(config_path_from_env(ctx.params.get("config_path")))
        c = loaded.config
        with Client(find_socket(c.control.socket, c.state.directory), timeout=1.0) as client:
            names = client.call("system.listMethods")
    except Exception:
        return []
    return [n for n in names if n.startswith(incomplete)]


@click.command(context_settings={"ignore_unknown_options": True})
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw result as JSON.")
@click.option("--timeout", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the answer.")
@click.option("-w", "--worker", type=click.IntRange(min=0), metavar="N",
              help="Ask worker N alone (a service with workers), on its own socket.")
@click.argument("method", shell_complete=_complete_method)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def ctl(app: App, config_path: str | None, as_json: bool, timeout: float, worker: int | None,
        method: str, args: tuple[str, ...]) -> None:
    """Call METHOD on the running proxy with ARGS (sipgw ctl system.listMethods lists them).

    Arguments are numbers when they look like numbers; s:TEXT forces a string, i:N an
    integer, and {...} or [...] is JSON.
    """
    params = [parse_arg(a) for a in args]
    app.json_mode = as_json
    client = connect(app, config_path, timeout=timeout, worker=worker)
    try:
        result = call(app, client, method, params)
    finally:
        client.close()
    if as_json:
        print_json(app.out, result)
    else:
        show(app.out, result)
