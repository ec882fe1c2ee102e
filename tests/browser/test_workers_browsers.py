"""Browsers through sipgw with two workers (issue 14): JsSIP pages in Chromium register over
WS with digest, and call each other through sipgw and the Kamailio registrar behind it
(``kamailio/registrar.cfg``, routing calls by Path), as ``test_sipgw_browsers.py`` does with
one process.

The kernel gives each WebSocket connection to one worker. The callee is a page whose
connection landed on the other worker than the caller's (pages are opened until one does),
so the call crosses workers: the caller's INVITE leaves from its worker, and the registrar
sends it to the callee by the Path, which names the callee's worker's own address. When the
callee's tab is gone, that worker answers the registrar's BYE itself with 430 or 480.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.tools.kamailio import KamailioProcess
from tests.browser.kamailio_process import KamailioRunner, invite_path
from tests.browser.rig import BrowserRig, Page, PageServer
from tests.browser.test_sipgw_browsers import (
    AT_ONCE,
    EdgeSipgw,
    call_with_media,
    hang_up_toward_a_gone_tab,
    registered,
    uri,
)
from tests.integration.sipp import LOOPBACK, free_port
from tests.integration.workers import WORKERS, control_directory

pytestmark = pytest.mark.integration

CALLER = "7001"
# Callees tried in turn until one's page is on the other worker: each lands on either with
# even odds, so eight leave a chance of 1 in 256 that none does.
CALLEES = [f"71{n:02d}" for n in range(8)]


class WorkersEdge(EdgeSipgw):
    """The browser tests' sipgw (WS, digest auth on SQLite), as two workers."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.workers = WORKERS

    def worker_ctl(self, worker: int, *args: str):
        """``sipgw ctl`` on one worker's own control socket."""
        from sipgw.rpc.client import Client

        with Client(f"{self.control_socket}.w{worker}", timeout=10) as client:
            return client.call(args[0], list(args[1:]))

    def worker_of(self, user: str) -> int | None:
        """The worker holding ``user``'s WebSocket connection (``ws.dump`` of each)."""
        for index in range(WORKERS):
            for conn in self.worker_ctl(index, "ws.dump")["connections"]:
                if uri(user) in conn["users"]:
                    return index
        return None

    def backend_port(self, worker: int) -> int:
        table = self.ctl("core.workers")
        return int(table[worker]["backend_address"].rsplit(":", 1)[1])


@pytest.fixture
def edge(tmp_path: Path, kamailio: KamailioRunner) -> Iterator[tuple[KamailioProcess, WorkersEdge]]:
    registrar = kamailio("registrar.cfg")
    with control_directory() as control_dir:
        gw = WorkersEdge(tmp_path / "sipgw", ws_port=free_port("tcp"),
                         backend=f"{LOOPBACK}:{registrar.udp_port}", control_dir=control_dir)
        gw.start()
        try:
            gw.add_users([], [CALLER, *CALLEES])
            yield registrar, gw
        finally:
            gw.stop()


def callee_on_the_other_worker(browser: BrowserRig, pages: PageServer, gw: WorkersEdge,
                               caller_worker: int) -> tuple[Page, str, int]:
    for user in CALLEES:
        page = registered(browser.open(user, pages.url("/pages/jssip.html")), gw.ws_url, user)
        worker = gw.worker_of(user)
        assert worker is not None, f"{user} registered but no worker holds its connection"
        if worker != caller_worker:
            return page, user, worker
        page.close()
    raise AssertionError(f"every callee's connection went to worker {caller_worker}")


def test_a_jssip_call_crosses_workers_to_the_callee_by_the_path_of_its_worker_and_a_gone_tab_gets_430_or_480(  # noqa: E501 - a test's name is its sentence
    browser: BrowserRig, pages: PageServer, edge: tuple[KamailioProcess, WorkersEdge]
) -> None:
    registrar, gw = edge
    caller = registered(browser.open("caller", pages.url("/pages/jssip.html")), gw.ws_url, CALLER)
    caller_worker = gw.worker_of(CALLER)
    assert caller_worker is not None
    callee, callee_user, callee_worker = callee_on_the_other_worker(browser, pages, gw,
                                                                    caller_worker)

    mark = len(registrar.log())
    call_with_media(caller, callee, callee_user)
    # The registrar sent the INVITE to the callee by its Path: the callee's worker's own
    # address, not the caller's, not the public port.
    log = registrar.log()[mark:]
    assert invite_path(log) == (LOOPBACK, gw.backend_port(callee_worker)), (
        log, gw.ctl("core.workers"))

    # The callee's tab goes mid-call; the caller hangs up. The registrar's BYE toward the
    # callee reaches the callee's worker (its Record-Route), which answers it at once.
    callee.close()
    deadline = time.monotonic() + AT_ONCE
    while gw.worker_of(callee_user) is not None:
        assert time.monotonic() < deadline, "the callee's connection is still listed"
    backend = f"{LOOPBACK}:{registrar.udp_port}"
    records, elapsed = hang_up_toward_a_gone_tab(gw, caller, backend)
    assert elapsed < AT_ONCE, elapsed
    byes = [r for r in records if r.get("dir") == "in" and r.get("method") == "BYE"
            and r.get("src") == backend]
    assert byes, records
    # At the callee's worker's own address, as its Record-Route toward the registrar says.
    assert {r["dst"] for r in byes} == {f"{LOOPBACK}:{gw.backend_port(callee_worker)}"}, byes
    assert caller.wait("ended").detail["originator"] == "local"
