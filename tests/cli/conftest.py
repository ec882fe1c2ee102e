from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from tests.cli.fake_control import FakeControl


@pytest.fixture
def control(tmp_path) -> Iterator[FakeControl]:
    fake = FakeControl(tmp_path)
    yield fake
    fake.stop()


@pytest.fixture
def run(monkeypatch):
    """``run("ctl", "core.version")``: the real ``sipgw`` command through CliRunner at a
    fixed width; returns (exit code, stdout, stderr)."""
    from sipgw.cli.main import cli

    monkeypatch.delenv("SIPGW_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "100")

    def invoke(*args: str, input: str | None = None):
        result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False,
                               terminal_width=100)
        return result.exit_code, result.stdout, result.stderr

    return invoke
