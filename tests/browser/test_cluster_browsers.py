"""Browsers on two sipgw nodes (issue 15): JsSIP pages in Chromium reach the cluster
through nginx (``tests/helpers/cluster.py``: two nodes on Redis Sentinel, Kamailio's
``registrar.cfg`` behind them, which routes calls by Path as Asterisk does). A page on node
B calls a page on node A, then the other way round: each INVITE leaves from the caller's
node and the registrar sends it by the callee's Path, which names the callee's node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.kamailio_process import invite_path
from tests.browser.rig import BrowserRig, Page, PageServer
from tests.browser.test_sipgw_browsers import assert_call_with_media_and_bye, password, registered
from tests.helpers.cluster import SipCluster, sip_cluster
from tests.integration.test_cluster import users_on

pytestmark = pytest.mark.integration

# Pages are opened until one is on each node: nginx alternates, so two suffice, but a
# retry costs nothing if another connection came between.
USERS = [f"72{n:02d}" for n in range(6)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SipCluster]:
    with sip_cluster(tmp_path) as cluster:
        cluster.add_users({user: password(user) for user in USERS})
        yield cluster


def one_on_each_node(browser: BrowserRig, pages: PageServer,
                     cluster: SipCluster) -> dict[str, tuple[Page, str]]:
    """Node host → a registered page on it, and its user."""
    placed: dict[str, tuple[Page, str]] = {}
    for user in USERS:
        page = registered(browser.open(user, pages.url("/pages/jssip.html")), cluster.ws_url,
                          user)
        node = next((n for n in cluster.nodes if user in users_on(n)), None)
        assert node is not None, f"{user} registered but no node holds its connection"
        if node.host in placed:
            page.close()
            continue
        placed[node.host] = (page, user)
        if len(placed) == len(cluster.nodes):
            return placed
    raise AssertionError(f"every page went to {list(placed)}")


def test_a_browser_on_node_b_calls_a_browser_on_node_a_and_back_each_invite_by_the_callees_path(
    browser: BrowserRig, pages: PageServer, cluster: SipCluster
) -> None:
    placed = one_on_each_node(browser, pages, cluster)
    registrar = cluster.registrar
    assert registrar is not None
    for caller_node, callee_node in ((cluster.b, cluster.a), (cluster.a, cluster.b)):
        (caller, _), (callee, callee_user) = placed[caller_node.host], placed[callee_node.host]
        mark = len(registrar.log())
        assert_call_with_media_and_bye(caller, callee, callee_user)
        log = registrar.log()[mark:]
        assert invite_path(log)[0] == callee_node.host, (log, callee_node.host)
    for page, _ in placed.values():
        assert not page.events("failed") and not page.events("pageerror")
