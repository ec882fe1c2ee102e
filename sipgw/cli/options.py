"""Options shared by several commands, defined once."""

from __future__ import annotations

import click

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $SIPGW_CONFIG, else /etc/sipgw/sipgw.toml if it exists, "
    "else the embedded default).",
)
