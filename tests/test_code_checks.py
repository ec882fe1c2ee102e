"""The code checks CI runs with the tests: ruff (lint), mypy (types: strict on the pure
packages, checked on the rest of sipgw) and lint-imports (the layers). Their settings are in
pyproject.toml; each runs on the whole tree from the repository root, as a developer would
run it, and its output is the failure message. They live here, at the top of tests/, so that
a focused run (``./scripts/test tests/sip``) does not pay for them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BIN = Path(sys.executable).parent


def run(*command: str) -> str:
    """Run a check from the repository root; its output, or a failure showing it."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{output}"
    return output


def python_files(*packages: str) -> int:
    return sum(1 for package in packages for _ in (ROOT / package).rglob("*.py"))


def checked_files(output: str) -> int:
    found = re.search(r"Success: no issues found in (\d+) source files", output)
    assert found, output
    return int(found.group(1))


def strict_packages() -> list[str]:
    """The packages pyproject's [[tool.mypy.overrides]] holds to --strict's rules."""
    for override in PYPROJECT["tool"]["mypy"]["overrides"]:
        if override.get("disallow_untyped_defs"):
            return [module.removesuffix(".*").replace(".", "/") for module in override["module"]]
    raise AssertionError("no strict override in pyproject.toml [tool.mypy]")


def test_ruff_finds_nothing_in_the_tree() -> None:
    run(str(BIN / "ruff"), "check", "--output-format", "concise", ".")


def test_mypy_checks_every_module_of_sipgw_and_finds_nothing() -> None:
    # The cache (.mypy_cache, git-ignored) makes a run after a small change take seconds.
    assert checked_files(run(str(BIN / "mypy"))) == python_files("sipgw")


def test_mypy_strict_finds_nothing_in_the_pure_packages() -> None:
    packages = strict_packages()
    assert {"sipgw/sip", "sipgw/wire", "sipgw/rpc", "sipgw/config"} <= set(packages)
    output = run(str(BIN / "mypy"), "--strict", *packages)
    assert checked_files(output) == python_files(*packages)


def test_the_layers_hold_every_import_linter_contract_kept() -> None:
    output = run(str(BIN / "lint-imports"))
    contracts = len(PYPROJECT["tool"]["importlinter"]["contracts"])
    assert f"Contracts: {contracts} kept, 0 broken." in output, output
