"""``sipgw doctor``: each troubleshooting check as pass / warn / fail, with the fix."""

from __future__ import annotations

import json
import sys

import click
from rich.text import Text

from sipgw.cli.app import App, pass_app
from sipgw.cli.options import config_option
from sipgw.config import config_path_from_env
from sipgw.tools.doctor import FAIL, PASS, WARN, Doctor, exit_code, summary

STYLE = {PASS: "green", WARN: "yellow", FAIL: "bold red"}


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array of the checks.")
@click.option("--timeout", type=float, default=2.0, show_default=True, metavar="SECONDS",
              help="How long each network check waits.")
@click.option("--user", metavar="USER", help="Also check this subscriber (exists, domain, HA1).")
@click.option("--domain", metavar="DOMAIN", help="The subscriber's domain, when several.")
@click.option("--password-stdin", is_flag=True,
              help="Read USER's password from stdin and check the stored HA1 against it.")
@pass_app
def doctor(app: App, config_path: str | None, as_json: bool, timeout: float,
           user: str | None, domain: str | None, password_stdin: bool) -> None:
    """Check the running sipgw and what it depends on; exit 0 only when nothing fails."""
    password = None
    if password_stdin:
        if not user:
            raise click.UsageError("--password-stdin needs --user")
        password = sys.stdin.readline().rstrip("\r\n")
    checks = []
    doc = Doctor(config_path_from_env(config_path), timeout=timeout, user=user,
                 domain=domain, password=password)
    for check in doc.run():
        checks.append(check)
        if as_json:
            continue
        line = Text(f"{check.status.upper():5} ", style=STYLE[check.status])
        line.append(f"{check.name}: ", style="bold")
        line.append(check.detail)
        app.out.print(line)
        if check.fix and check.status != PASS:
            app.out.print(Text(f"      fix: {check.fix}", style="dim"))
    if as_json:
        app.out.out(json.dumps([c.as_dict() for c in checks], indent=2), highlight=False)
    else:
        counts = summary(checks)
        app.err.print(f"{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed")
    raise SystemExit(exit_code(checks))
