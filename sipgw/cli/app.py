"""The object every command receives: consoles, json mode, and how to fail.

Data goes to stdout, messages to stderr; exit codes are 0 ok, 1 failed, 2 usage,
3 proxy unreachable (DESIGN.md §6).
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from rich.console import Console

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class App:
    def __init__(self, *, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        # markup=False: user data (SIP URIs, config text) never parses as rich markup.
        self.out = Console(markup=False, highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

    def fail(self, message: str, code: int = EXIT_FAILED) -> NoReturn:
        self.err.print(f"sipgw: {message}")
        sys.exit(code)


pass_app = click.make_pass_decorator(App, ensure=True)
