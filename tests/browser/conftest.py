"""Fixtures for the browser tests: real Chromium pages (JsSIP, SIP.js, the phone page) and
Kamailio peers, all on loopback, all stopped when the test ends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.tools.kamailio import kamailio_executable
from tests.browser.kamailio_process import KamailioRunner
from tests.browser.rig import ARTIFACTS, CHROMIUM, BrowserRig, PageServer, missing_setup_outputs


@pytest.fixture(scope="session")
def browser_setup() -> None:
    """Chromium, and what ./scripts/setup builds (npm packages, JsSIP and SIP.js bundles)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium): run ./scripts/setup")
    missing = missing_setup_outputs()
    if missing:
        pytest.fail(f"run ./scripts/setup: missing {', '.join(map(str, missing))}")


@pytest.fixture(scope="session")
def pages(browser_setup: None) -> Iterator[PageServer]:
    """The rig's pages and the phone page over HTTP on a free loopback port:
    ``pages.url("/pages/jssip.html")``, ``pages.url("/phone/")``."""
    server = PageServer().start()
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Let fixtures know how their test went (``item.rep_call``)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def browser(
    request: pytest.FixtureRequest, tmp_path: Path, browser_setup: None
) -> Iterator[BrowserRig]:
    """One Chromium for this test: ``browser.open("alice", url)`` gives a :class:`Page`.
    Chromium is killed when the test ends, whatever happened; the driver's log stays in
    the test's ``tmp_path`` (``browser/driver.log``). When the test fails, a screenshot of
    each open page and the driver's log are kept in ``test-artifacts/browser/failed/TEST/``."""
    rig = BrowserRig(tmp_path / "browser")
    try:
        rig.start()
        yield rig
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            rig.keep_evidence(ARTIFACTS / "failed" / request.node.name)
    finally:
        rig.close()


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[KamailioRunner]:
    """Starts Kamailio for this test: ``kamailio("ws-proxy.cfg", ws=True)`` or
    ``kamailio("registrar.cfg")`` returns a ready :class:`KamailioProcess`. Each one is
    stopped when the test ends; its log stays in the test's ``tmp_path``."""
    executable = kamailio_executable()
    if executable is None:
        pytest.fail("kamailio is not installed (Debian packages kamailio and "
                    "kamailio-websocket-modules): run ./scripts/setup")
    runner = KamailioRunner(tmp_path / "kamailio", executable)
    yield runner
    runner.stop_all()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/browser/`` in the checkout (git-ignored): screenshots kept."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
