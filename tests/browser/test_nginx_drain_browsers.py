"""``systemctl stop`` of a node moves its browsers: two sipgw nodes (127.0.0.2, 127.0.0.3)
behind nginx with the shipped ``etc/nginx/sipgw.conf`` (its upstream made the two nodes),
Kamailio's registrar behind both (routing by Path, as Asterisk does), and two JsSIP pages
in Chromium that nginx puts one on each node. SIGTERM to one node: its page gets the
WebSocket close 1001, JsSIP reconnects by itself through nginx, lands on the other node and
registers again; then a call to it rings it through that node's Path, with audio both ways.

::

    Chromium (JsSIP) ──ws──> nginx ──ws──> sipgw A 127.0.0.2 ──UDP──> Kamailio registrar.cfg
                                   └─ws──> sipgw B 127.0.0.3 ──UDP──┘
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipgw.tools.kamailio import KamailioProcess
from sipgw.tools.nginx import Nginx
from tests.browser.rig import BrowserRig, PageServer
from tests.browser.test_sipgw_browsers import (  # noqa: F401 (backend: a fixture)
    EdgeSipgw,
    assert_call_with_media_and_bye,
    backend,
    control_directory,
    registered,
    uri,
)
from tests.integration.sipp import LOOPBACK, free_port
from tests.integration.test_nginx_nodes import OnHost

pytestmark = pytest.mark.integration

USERS = ["5091", "5092"]


class EdgeNode(OnHost, EdgeSipgw):
    """The browser tests' sipgw (WS, digest on SQLite, a control socket), alone on ``host``.
    Each node keeps the same users in a store of its own: what is shared is not the point."""

    def __init__(self, workdir: Path, *, host: str, **options) -> None:
        super().__init__(workdir, ws_port=free_port("tcp"), **options)
        self.host = host

    def users(self) -> set[str]:
        return {user for conn in self.ctl("ws.dump")["connections"] for user in conn["users"]}


def test_a_stopped_nodes_browser_reconnects_through_nginx_to_the_other_node_and_is_called_there(
    browser: BrowserRig, pages: PageServer, backend: KamailioProcess, tmp_path: Path,  # noqa: F811
) -> None:
    with control_directory() as dir_a, control_directory() as dir_b:
        nodes = [EdgeNode(tmp_path / name, host=host, control_dir=control,
                          backend=f"{LOOPBACK}:{backend.udp_port}")
                 for name, host, control in (("a", "127.0.0.2", dir_a), ("b", "127.0.0.3", dir_b))]
        nginx = Nginx(tmp_path / "nginx", [node.ws_address for node in nodes])
        try:
            for node in nodes:
                node.start()
                node.add_users(USERS)
            nginx.start()
            ws_url = f"ws://{LOOPBACK}:{nginx.port}/ws"
            phones = {user: registered(browser.open(user, pages.url("/pages/jssip.html")),
                                       ws_url, user) for user in USERS}
            # nginx gave each page's WebSocket to another node.
            holding = {user: node for user in USERS for node in nodes
                       if uri(user) in node.users()}
            assert set(holding) == set(USERS) and len(set(holding.values())) == 2, holding
            moving, staying = USERS
            gone, other = holding[moving], holding[staying]
            phones[moving].wait("connected")  # the first connection's

            gone.stop()  # systemctl stop: SIGTERM, and it exits 0
            dropped = phones[moving].wait("disconnected")
            assert dropped.detail["code"] == 1001, dropped.detail
            # JsSIP reconnects by itself (to the same URL: nginx) and registers again.
            phones[moving].wait("connected", timeout=20)
            assert phones[moving].wait("registered", timeout=20).detail["status"] == 200
            assert other.users() == {uri(moving), uri(staying)}

            # The registrar reaches it through the node now holding its WebSocket.
            assert_call_with_media_and_bye(phones[staying], phones[moving], moving)
        finally:
            nginx.stop()
            for node in nodes:
                node.kill()
