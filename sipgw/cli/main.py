"""``sipgw``: the command line. Click wiring only; each command lives in its own module."""

from __future__ import annotations

import sys

import click

from sipgw import __version__
from sipgw.cli.app import EXIT_USAGE, App
from sipgw.cli.ctl import ctl
from sipgw.cli.dispatcher import dispatcher
from sipgw.cli.doctor import doctor
from sipgw.cli.log import log
from sipgw.cli.serve import serve
from sipgw.cli.stats import stats
from sipgw.cli.tools import tools
from sipgw.cli.top import top
from sipgw.cli.trace import trace
from sipgw.cli.users import users
from sipgw.cli.ws import ws


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sipgw")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """sipgw: SIP edge proxy and WebRTC gateway."""
    ctx.ensure_object(App)


cli.add_command(serve)
cli.add_command(users)
cli.add_command(ctl)
cli.add_command(stats)
cli.add_command(log)
cli.add_command(trace)
cli.add_command(top)
cli.add_command(doctor)
cli.add_command(tools)
cli.add_command(dispatcher)
cli.add_command(ws)


def main(argv: list[str] | None = None) -> None:
    """Entry point. A usage error is one line on stderr and exit code 2."""
    try:
        code = cli.main(args=argv, prog_name="sipgw", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        # "sipgw" alone: the help, on stdout like --help, but as a usage exit.
        click.echo(e.ctx.get_help() if e.ctx else "", err=True)
        sys.exit(EXIT_USAGE)
    except click.UsageError as e:
        hint = f" (try 'sipgw {e.ctx.command_path.partition(' ')[2]} --help'.)".replace(
            "sipgw  ", "sipgw "
        ) if e.ctx else ""
        click.echo(f"sipgw: {e.format_message()}{hint}", err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort:
        click.echo("sipgw: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        click.echo(f"sipgw: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    sys.exit(code or 0)
