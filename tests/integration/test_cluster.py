"""Node failure in a sipgw cluster, with real peers on loopback (issue 15): two nodes of two
workers behind nginx, on Redis with Sentinel, in front of a registrar that routes calls by
Path (``tests/helpers/cluster.py``).

- ``kill -9`` of node A with 1,000 WebSocket clients on it: they reconnect through nginx
  with JsSIP's back-off, land on node B and register again; a call to one of them then
  rings it through node B's Path.
- A rolling restart of both nodes (SIGTERM, exit awaited, started again) under WebSocket
  clients and calls: every registration comes back within one reconnect, and a call set up
  before the restarts is hung up at the end through both restarted nodes, its BYE answered.

The Redis master's death under REGISTER load is ``test_sentinel_sipgw.py``'s (one node: the
nodes are alike toward Redis, each following the Sentinels on its own).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.rpc.client import Client
from sipgw.tools.cluster import Node
from sipgw.tools.wsload import Backoff, Fleet, InThread
from tests.helpers.cluster import DOMAIN, SipCluster, sip_cluster
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import UdpPeer, build_request

pytestmark = pytest.mark.integration

PER_NODE = 1000
FIRST = 100000
PASSWORD = "fleet-s3cret"
# JsSIP comes back 2 s after the close; 1,000 digest REGISTERs then take a few seconds
# on this shared 2-core machine. A bound far above, for a busy CI runner.
STORM_WITHIN = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SipCluster]:
    with sip_cluster(tmp_path) as cluster:
        yield cluster


@pytest.fixture
def wsload() -> Iterator[InThread]:
    runner = InThread()
    yield runner
    runner.stop()


def users_on(node: Node) -> set[str]:
    """The users registered on the node's WebSocket connections (``ws.dump``)."""
    with Client(str(node.control_socket), timeout=20) as client:
        dump = client.call("ws.dump", [])
    return {user.split(":", 1)[1].split("@", 1)[0]
            for conn in dump["connections"] for user in conn["users"]}


def fleet_of(cluster: SipCluster, count: int, wsload: InThread) -> Fleet:
    cluster.add_users({str(FIRST + i): PASSWORD for i in range(count)})
    fleet = Fleet(cluster.ws_url, count=count, concurrency=50, first=FIRST, password=PASSWORD,
                  domain=DOMAIN, timeout=30, reconnect=Backoff())
    result = wsload.run(fleet.connect(), timeout=180)
    assert result.registered == count and not result.failures, result.report()
    print(f"\nthrough nginx to both nodes: {result.report()}")
    return fleet


def ring(cluster: SipCluster, user: str) -> tuple[str, str]:
    """A call from the backend's side to ``user``: an INVITE to the registrar, which sends
    it by the user's Path; the 180 that comes back (the phone rang) and the registrar's
    log line saying which Path it took. The phone's 486 is acknowledged."""
    registrar = cluster.registrar
    assert registrar is not None
    mark = len(registrar.log())
    with UdpPeer() as caller:
        call_id, branch = f"ring-{uuid.uuid4().hex}", f"z9hG4bK{uuid.uuid4().hex}"
        target = f"sip:{user}@{DOMAIN}"
        invite = build_request("INVITE", target, peer=caller, call_id=call_id, branch=branch)
        caller.send(invite, cluster.backend)
        ringing = caller.expect("180", timeout=10)
        caller.expect("486", timeout=10)
        caller.send(build_request("ACK", target, peer=caller, call_id=call_id, branch=branch,
                                  to=ringing.header("To")), cluster.backend)
    log = registrar.log()[mark:]
    line = next((ln for ln in log.splitlines() if f"to {user} at " in ln), "")
    return ringing.text, line


def test_kill_9_of_a_node_moves_its_1000_websocket_clients_through_nginx_to_the_other_node(
    cluster: SipCluster, wsload: InThread
) -> None:
    fleet = fleet_of(cluster, 2 * PER_NODE, wsload)
    try:
        on_a, on_b = users_on(cluster.a), users_on(cluster.b)
        assert len(on_a) == PER_NODE == len(on_b), (len(on_a), len(on_b))  # nginx's round robin
        phones_a = [p for p in fleet.phones if p.account.user in on_a]

        cluster.a.kill()
        killed = time.monotonic()

        def all_back() -> bool:
            return all(p.registered and p.lost_at >= killed for p in phones_a)

        wait_until(all_back, timeout=STORM_WITHIN, caller=cluster,
                   what=f"{sum(p.registered for p in phones_a)} of {PER_NODE} re-registered; "
                        f"failures {dict(fleet.failures)}")
        last = max(p.registered_at for p in phones_a) - killed
        first = min(p.registered_at for p in phones_a) - killed
        print(f"kill -9 of node A: its {PER_NODE} clients registered again on node B "
              f"{first:.2f} to {last:.2f} s after the kill (JsSIP's back-off: 2 s)")
        # Nobody on B was disturbed, and B holds everyone now.
        assert fleet.registered() == 2 * PER_NODE
        assert all(p.lost_at == 0 for p in fleet.phones if p.account.user in on_b)
        assert users_on(cluster.b) == on_a | on_b
        assert not fleet.failures, fleet.failures

        # A call to one who moved rings it through node B's Path.
        moved = phones_a[len(phones_a) // 2]
        ringing, routed = ring(cluster, moved.account.user)
        assert f"@{cluster.b.host}:" in routed and ";lr;ob>" in routed, routed
        assert f"sip:{cluster.b.host}:" in ringing and f"{cluster.a.host}" not in ringing, ringing
        assert moved.rung == 1
    finally:
        wsload.call(fleet.close)
