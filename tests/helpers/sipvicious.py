"""Run Debian's sipvicious tools (svmap, svwar, svcrack) as an attacker would, bounded.

Each tool sends ``User-Agent: friendly-scanner`` (the default of sipvicious'
``svhelper.makeRequest``). An attacker can change it, and so can a test:
``user_agent=`` runs the installed tool unchanged except for that default, through the
tool's own Python interpreter, so the very same requests go out under another name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Run by the tool's interpreter: argv is TOOL_PATH USER_AGENT ARGS...
_WITH_USER_AGENT = """\
import importlib, os, sys
tool, agent = os.path.realpath(sys.argv[1]), sys.argv[2]
sys.path.insert(0, os.path.dirname(tool))
from sipvicious.libs import svhelper
code = svhelper.makeRequest.__code__
names = code.co_varnames[:code.co_argcount]
defaults = list(svhelper.makeRequest.__defaults__)
defaults[names.index("useragent") - (len(names) - len(defaults))] = agent
svhelper.makeRequest.__defaults__ = tuple(defaults)
sys.argv = [sys.argv[1], *sys.argv[3:]]
module = os.path.basename(tool).removeprefix("sipvicious_")
sys.exit(importlib.import_module("sipvicious." + module).main())
"""


def command(tool: str, *args: str, user_agent: str | None = None) -> list[str]:
    """The command line running ``tool`` (svmap, svwar, svcrack) with ``args``."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian package sipvicious): run ./scripts/setup")
    if user_agent is None:
        return [path, *args]
    with open(os.path.realpath(path)) as script:
        interpreter = script.readline().removeprefix("#!").strip()
    return [interpreter, "-c", _WITH_USER_AGENT, path, user_agent, *args]


def start(tool: str, *args: str, home: Path, user_agent: str | None = None
          ) -> subprocess.Popen[str]:
    """Start the tool with its own ``HOME`` (it keeps session files there)."""
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        command(tool, *args, user_agent=user_agent), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"})


def finish(process: subprocess.Popen[str], limit: float) -> str:
    """Its output once it ends; one still going after ``limit`` seconds (svcrack retries
    forever once it only gets 403s) is stopped."""
    try:
        out, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        process.terminate()
        out, _ = process.communicate(timeout=5)
    return out


def run(tool: str, *args: str, home: Path, limit: float = 30.0,
        user_agent: str | None = None) -> str:
    """Run the tool to its end (or ``limit``); its output."""
    return finish(start(tool, *args, home=home, user_agent=user_agent), limit)
