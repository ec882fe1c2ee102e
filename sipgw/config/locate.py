"""Which sipgw.toml to load: ``-c``, else $SIPGW_CONFIG, else the system file if it exists."""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_CONFIG_PATH = "/etc/sipgw/sipgw.toml"
CONFIG_ENV_VAR = "SIPGW_CONFIG"

StrPath = str | os.PathLike[str]


def config_path_from_env(
    cli_value: StrPath | None, *, environ: Mapping[str, str] | None = None
) -> str | None:
    """Which file to load: ``-c`` value, else $SIPGW_CONFIG, else /etc/sipgw/sipgw.toml if it
    exists, else None (the embedded default)."""
    if cli_value:
        return os.fspath(cli_value)
    from_env = (os.environ if environ is None else environ).get(CONFIG_ENV_VAR)
    if from_env:
        return from_env
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH
    return None
