"""The service opens WebSocket listeners from the config and sends to WS flows only."""

from __future__ import annotations

from sipgw.proxy.outbound import Outbound
from sipgw.proxy.trace import Tap
from sipgw.proxy.transport import Destination, FlowTable
from tests.proxy.test_service import GOOD, Reactor, start

WS_CONFIG = GOOD.replace("ws = []", 'ws = ["127.0.0.1:28080"]')


def test_ws_listeners_come_from_the_config_and_are_named_in_record_route(tmp_path):
    svc, reactor, _ = start(tmp_path, WS_CONFIG)
    assert (28080, "127.0.0.1") in [(port, iface) for port, _, _, iface in reactor.tcpServers]
    assert svc.proxy.identity.is_us("127.0.0.1", 28080)
    assert svc.proxy.identity.record_route("ws") == "<sip:127.0.0.1:28080;transport=ws;lr>"
    assert svc.proxy.nat.flows is svc.flows
    assert svc.stats.get("websocket:ws_current_connections") == 0


def test_a_message_for_a_ws_client_without_a_flow_fails_that_branch_instead_of_connecting(
    tmp_path,
):
    reactor = Reactor()
    failed = []
    outbound = Outbound(reactor, FlowTable(), Tap())
    outbound.attach(udp=[], streams={}, on_failure=[lambda h, p, t: failed.append((t, h, p))])
    outbound.send(b"x", Destination(transport="ws", host="abc.invalid", port=5060))
    assert failed == [("ws", "abc.invalid", 5060)]
    assert reactor.tcpClients == []


def test_no_ws_listener_when_the_list_is_empty(tmp_path):
    svc, reactor, _ = start(tmp_path)
    assert svc.ws is None
