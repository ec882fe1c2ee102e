"""Two sipgw nodes behind Debian's nginx with the shipped ``etc/nginx/sipgw.conf``, its
upstream made the two nodes (on 127.0.0.2 and 127.0.0.3, as two hosts would be), and a
SIPp registrar behind both. What a user of the cluster sees:

- nginx serves the phone page from the nodes, spreads WebSocket clients over both, and
  each node records the client's own address (nginx's X-Real-IP / X-Forwarded-For,
  believed from nginx alone), not nginx's nor one the client made up;
- ``systemctl stop`` (SIGTERM) of a node: from that moment nginx sends new connections to
  the other node; a REGISTER in flight on the stopping node still gets its answer; then
  each of its WebSocket clients gets a close frame 1001 (going away), reconnects through
  nginx and registers on the other node, with that node's own address in Path; the node
  exits 0;
- a node whose host does not answer at all (SYNs unanswered) costs a browser the 2 s of
  ``proxy_connect_timeout``, then nginx tries the other node.

With one process per node and with two workers per node (the supervisor's copies of the
listening sockets must be closed too, or connections would queue for nobody).

::

    WsPeer (127.0.0.9) ──ws──> nginx ──ws──> sipgw A 127.0.0.2 ──UDP──> SIPp registrar
                                     └─ws──> sipgw B 127.0.0.3 ──UDP──┘
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from sipgw.tools.nginx import Nginx
from tests.helpers import wsframes as wf
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import build_request
from tests.integration.sipp import LOOPBACK, SippRunner, free_port
from tests.integration.test_ws_sipp import WsSipgw
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration

CLIENT = "127.0.0.9"  # the browsers' address, distinct from nginx's own (127.0.0.1)
CLAIMED = "198.51.100.7"  # what a client puts in X-Forwarded-For itself: never believed
# The registrar's pause before each 200: a request in flight while A drains, and the
# time in which the test sees A refuse connections and B take new ones.
ANSWER_DELAY_MS = 4000
_seq = itertools.count(1)


class OnHost:
    """For a ``WsSipgw``: every listener on ``host`` (a loopback address of its own, as a
    node on a host of its own) instead of 127.0.0.1 (``SipgwProcess.address`` follows
    ``host``)."""

    host: str
    port: int
    ws_port: int

    @property
    def ws_address(self) -> str:
        return f"{self.host}:{self.ws_port}"

    def config_text(self, **kw) -> str:
        return super().config_text(**kw).replace(  # type: ignore[misc]
            f'"{LOOPBACK}:', f'"{self.host}:')


class Node(OnHost, WsSipgw):
    """A sipgw node alone on a loopback address: SIP on UDP/TCP and the WebSocket listener
    nginx reaches."""

    def __init__(self, workdir: Path, *, host: str, **options) -> None:
        super().__init__(workdir, ws_port=free_port("tcp"), **options)
        self.host = host

    def users(self) -> dict[str, str]:
        """AOR → the client address this node recorded for the connection it came on."""
        return {user: conn["src"].rsplit(":", 1)[0]
                for conn in self.rpc("ws.dump")["connections"] for user in conn["users"]}

    def connections(self) -> int:
        return len(self.rpc("ws.dump")["connections"])

    def forwarded(self) -> int:
        return self.rpc("stats.fetch", "core:fwd_requests")["core.fwd_requests"]


def aor(user: str) -> str:
    return f"sip:{user}@{LOOPBACK}"


def connect(nginx: Nginx) -> WsPeer:
    ws = WsPeer(f"{LOOPBACK}:{nginx.port}", path="/ws", source=CLIENT,
                extra=(f"X-Forwarded-For: {CLAIMED}",))
    assert ws.status == 101, ws.reader.http
    return ws


def send_register(ws: WsPeer, user: str) -> None:
    n = next(_seq)
    ws.send(build_request("REGISTER", f"sip:{LOOPBACK}", peer=ws, call_id=f"reg-{n}@nodes",
                          branch=f"z9hG4bKnodes{n}", to=f"<{aor(user)}>",
                          headers=["Supported: path", "Expires: 600"]))


def registered(peers: dict[str, WsPeer]) -> None:
    for user, ws in peers.items():
        send_register(ws, user)
    for ws in peers.values():
        ws.expect("200", timeout=15)


@pytest.mark.parametrize("workers", [1, 2])
def test_nginx_spreads_browsers_over_two_nodes_and_a_stopped_node_sends_its_own_to_the_other(
    sipp: SippRunner, tmp_path: Path, workers: int
) -> None:
    uas = sipp.uas("uas_register_slow.xml", transport="udp", timeout=90, calls=1000,
                   pause_ms=ANSWER_DELAY_MS)
    extra = '[websocket]\ntrusted_proxies = ["127.0.0.1/32"]\n[proxy]\ndrain_timeout = 10\n'
    a, b = (Node(tmp_path / name, host=host, backend=uas.address, workers=workers,
                 extra_toml=f'[control]\nsocket = "{tmp_path}/{name}.ctl"\n' + extra)
            for name, host in (("a", "127.0.0.2"), ("b", "127.0.0.3")))
    nginx = Nginx(tmp_path / "nginx", [a.ws_address, b.ws_address])
    peers: dict[str, WsPeer] = {}
    try:
        a.start()
        b.start()
        nginx.start()
        # The phone page comes through nginx from either node.
        with urllib.request.urlopen(f"http://{LOOPBACK}:{nginx.port}/", timeout=5) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        # Six browsers: nginx gives each new WebSocket to the node holding fewer.
        peers = {f"70{i:02d}": connect(nginx) for i in range(6)}
        registered(peers)
        on_a, on_b = a.users(), b.users()
        assert (len(on_a), len(on_b)) == (3, 3), (on_a, on_b)
        # Each node saw the browser's own address, from nginx; not nginx's, not the claim.
        assert set(on_a.values()) | set(on_b.values()) == {CLIENT}

        # A browser on A refreshes its registration; the registrar takes its time.
        refreshing = next(u for u in peers if aor(u) in on_a)
        before = a.forwarded()
        send_register(peers[refreshing], refreshing)
        wait_until(lambda: a.forwarded() > before, timeout=5, what="REGISTER not relayed by A",
                   caller=a)
        assert a.pid is not None
        os.kill(a.pid, signal.SIGTERM)  # systemctl stop

        # A stops accepting at once: while it drains, new browsers land on B.
        wait_until(lambda: _refused(a.ws_address), timeout=2, what="A still accepts",
                   caller=a)
        newcomers = {f"71{i:02d}": connect(nginx) for i in range(2)}
        assert (b.connections(), a.returncode) == (3 + 2, None)  # A is still draining

        # The request in flight gets its answer, then A's browsers are told it goes away.
        peers[refreshing].expect("200", timeout=15)
        for user in peers:
            if aor(user) in on_a:
                ws = peers[user]
                wait_until(lambda ws=ws: ws.receive(0.1) is None and ws.closed is not None,
                           timeout=15, what=f"{user} got no close frame", caller=a)
                assert ws.closed is not None and ws.closed.close_code == 1001, ws.closed
                ws.send_raw(wf.close_frame(1001))  # as a browser answers it
        wait_until(lambda: a.returncode is not None, timeout=10, what="A did not exit",
                   caller=a)
        assert a.returncode == 0, a.describe()

        # They reconnect through nginx and register again: all on B now.
        moved = {user: connect(nginx) for user in peers if aor(user) in on_a}
        registered(moved | newcomers)
        assert set(b.users()) >= {aor(u) for u in peers} | {aor(u) for u in newcomers}
        assert set(b.users().values()) == {CLIENT}
        # A was never seen as failing by a browser: every handshake through nginx was a 101.
        assert not nginx.wait_access_lines(r'"GET /ws HTTP/1\.1" 50\d ', 0)
    finally:
        for ws in [*peers.values()]:
            ws.close()
        nginx.stop()
        a.kill()
        b.stop()
    uas.stop()
    # Each node wrote its own address in Path: the registrar reaches a browser through
    # the node holding its WebSocket.
    paths = [m.header("Path") for m in uas.messages()
             if m.direction == "received" and m.kind == "REGISTER"]
    assert any("@127.0.0.2:" in p for p in paths) and any("@127.0.0.3:" in p for p in paths)
    assert all(("@127.0.0.2:" in p) != ("@127.0.0.3:" in p) for p in paths), paths


def _refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False



class Blackhole:
    """An upstream address that never answers a SYN, as a host that died: a listening
    socket never accepted from, its queue filled, so the kernel drops further SYNs."""

    def __init__(self, host: str) -> None:
        self.listener = socket.socket()
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.address = f"{host}:{self.listener.getsockname()[1]}"
        self.fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(self.listener.getsockname())
            self.fillers.append(filler)

    def close(self) -> None:
        for s in (*self.fillers, self.listener):
            s.close()


def test_nginx_skips_a_node_that_does_not_answer_after_the_connect_timeout(
    sipp: SippRunner, tmp_path: Path
) -> None:
    uas = sipp.uas("uas_register.xml", transport="udp", timeout=60, calls=1000)
    dead = Blackhole("127.0.0.4")
    b = Node(tmp_path / "b", host="127.0.0.3", backend=uas.address,
             extra_toml=f'[control]\nsocket = "{tmp_path}/b.ctl"\n'
                        '[websocket]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    nginx = Nginx(tmp_path / "nginx", [dead.address, b.ws_address])
    peers: list[WsPeer] = []
    try:
        with pytest.raises(TimeoutError):  # the dead node's queue is full: SYNs unanswered
            socket.create_connection(dead.listener.getsockname(), timeout=0.5)
        b.start()
        nginx.start()
        # Every browser gets its WebSocket (on B): one after waiting out the dead node.
        for _ in range(4):
            ws = WsPeer(f"{LOOPBACK}:{nginx.port}", path="/ws", source=CLIENT, timeout=8)
            assert ws.status == 101, ws.reader.http
            peers.append(ws)
        assert b.connections() == 4
        error_log = (nginx.workdir / "error.log").read_text()
        assert "upstream timed out (110: Connection timed out) while connecting to upstream" \
            in error_log and dead.address in error_log, error_log
    finally:
        for ws in peers:
            ws.close()
        nginx.stop()
        b.stop()
        dead.close()
