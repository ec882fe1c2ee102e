"""Fixtures for integration tests with real peers on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sipgw_process import SipgwRunner
from tests.integration.sipp import SippRunner


def _installed(program: str, package: str) -> str:
    """The path of ``program``; a missing one fails the test (``./scripts/setup`` installs
    it with the Debian ``package``)."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed (Debian package {package}): run ./scripts/setup")
    return path


@pytest.fixture(scope="session")
def sipp_executable() -> str:
    return _installed("sipp", "sip-tester")


@pytest.fixture(scope="session")
def sipsak_executable() -> str:
    return _installed("sipsak", "sipsak")


@pytest.fixture(scope="session")
def baresip_executable() -> str:
    return _installed("baresip", "baresip-core")


@pytest.fixture
def sipp(tmp_path: Path, sipp_executable: str) -> Iterator[SippRunner]:
    """Starts SIPp processes for this test; every one is stopped when the test ends.

    Their traces stay in the test's ``tmp_path`` (``sipp/``), which pytest keeps for the
    last few runs.
    """
    runner = SippRunner(tmp_path / "sipp", executable=sipp_executable)
    yield runner
    runner.stop_all()


@pytest.fixture
def sipgw(tmp_path: Path) -> Iterator[SipgwRunner]:
    """Starts sipgw processes for this test: ``sipgw(backend="127.0.0.1:PORT",
    transport="udp", extra_toml="")`` returns a ready :class:`SipgwProcess`.

    Every one is stopped when the test ends (SIGTERM, and it must exit 0). Config and log
    stay in the test's ``tmp_path`` (``sipgw/``).
    """
    runner = SipgwRunner(tmp_path / "sipgw")
    yield runner
    runner.stop_all()
