"""REQINIT policy in the built service: scanner User-Agents, the R-URI cap, [acl] lists."""

from __future__ import annotations

import pytest
from twisted.logger import capturedLogs, formatEvent

from sipgw.proxy.transport import Source
from sipgw.sip.parser import parse_message
from tests.proxy.test_pike import BASE, PING, ClosableFlow
from tests.proxy.test_service import start


class Gateway:
    """The real service on a memory reactor; what it sends is kept, parsed."""

    def __init__(self, tmp_path, extra: str = "") -> None:
        self.path = tmp_path / "sipgw.toml"
        self.sent: list = []
        self.svc, self.reactor, _ = start(
            tmp_path, BASE + extra,
            send=lambda data, dest: self.sent.append((parse_message(data), dest)))
        self._n = 0

    def reload(self, extra: str) -> None:
        self.path.write_text(BASE + extra)
        self.svc.reload()

    def options(self, host: str = "192.0.2.1", *, user_agent: str | None = None,
                params: str = "", transport: str = "udp", flow_id: int | None = None):
        """One OPTIONS to sipgw itself; its answer, or None when there was none."""
        self._n += 1
        extra = f"User-Agent: {user_agent}\r\n" if user_agent is not None else ""
        data = PING.format(params=params, host=host, n=f"o{self._n}", extra=extra).encode()
        before = len(self.sent)
        self.svc.proxy.receive(data, Source(transport=transport, host=host, port=5070,
                                            local_host="127.0.0.1", local_port=25060,
                                            flow_id=flow_id))
        answers = [m for m, _ in self.sent[before:]]
        assert len(answers) <= 1
        return answers[0] if answers else None

    def stat(self, name: str) -> int:
        return self.svc.stats.get(name)


@pytest.fixture
def gateway(tmp_path):
    made: list[Gateway] = []

    def make(extra: str = "") -> Gateway:
        made.append(Gateway(tmp_path, extra))
        return made[-1]

    yield make
    for gw in made:
        gw.svc.stopService()


def lines_of(logs) -> list[str]:
    return [formatEvent(e) for e in logs if e.get("log_namespace") == "sipgw.acl"]


# -- User-Agent ---------------------------------------------------------------------------


@pytest.mark.parametrize("agent", [
    "friendly-scanner", "FRIENDLY-SCANNER", "sipvicious 0.3.3", "sipcli/v1.8",
    "VaxSIPUserAgent/3.1", "pplsip", "sundayddr", "iWar", "sip-scan", "SIVuS 1.09",
])
def test_the_well_known_scanners_get_no_answer_at_all(gateway, agent):
    gw = gateway()
    assert gw.options(user_agent=agent) is None
    assert gw.stat("acl:denied_user_agent") == 1
    assert gw.stat("core:drop_requests") == 1


@pytest.mark.parametrize("agent", ["JsSIP 3.13.0", "SIP.js/0.21.2", "Asterisk PBX 20.5.0",
                                   "sipsak 0.9.8", None])
def test_ordinary_user_agents_are_answered(gateway, agent):
    gw = gateway()
    assert gw.options(user_agent=agent).status == 200
    assert gw.stat("acl:denied_user_agent") == 0


def test_a_scan_is_logged_once_not_once_per_request(gateway):
    gw = gateway()
    with capturedLogs() as logs:
        for _ in range(100):
            assert gw.options(user_agent="friendly-scanner") is None
    lines = lines_of(logs)
    assert len(lines) == 1 and "friendly-scanner" in lines[0] and "192.0.2.1" in lines[0]
    # Past pike's density the scanner is blocked, and the rest is not even parsed.
    assert gw.stat("acl:denied_user_agent") == 30
    assert gw.stat("pike:dropped_msgs") == 70


def test_the_user_agent_deny_list_is_configurable_and_follows_a_reload(gateway):
    gw = gateway('[acl]\nuser_agent_deny = ["EvilDialer"]\n')
    assert gw.options(user_agent="friendly-scanner").status == 200
    assert gw.options(user_agent="the evildialer v2") is None
    gw.reload("[acl]\nuser_agent_deny = []\n")
    assert gw.options(user_agent="the evildialer v2").status == 200


# -- Request-URI length -------------------------------------------------------------------


def test_a_request_uri_over_the_cap_gets_414_and_one_at_the_cap_is_served(gateway):
    gw = gateway()
    base = len("sip:127.0.0.1:25060;x=")
    assert gw.options(params=";x=" + "a" * (1024 - base)).status == 200
    refused = gw.options(params=";x=" + "a" * (1025 - base))
    assert (refused.status, refused.reason) == (414, "Request-URI Too Long")
    gw.reload("[limits]\nmax_ruri_length = 64\n")
    assert gw.options(params=";x=" + "a" * (65 - base)).status == 414


# -- addresses ----------------------------------------------------------------------------


def test_a_denied_address_gets_nothing_on_that_transport_only(gateway):
    gw = gateway('[acl]\nudp_deny = ["192.0.2.0/24"]\n')
    assert gw.options("192.0.2.1") is None
    assert gw.options("192.0.2.200") is None
    assert gw.stat("acl:denied_msgs") == 2
    assert gw.stat("core:rcv_requests") == 0  # dropped before parsing
    assert gw.options("198.51.100.1").status == 200
    assert gw.options("192.0.2.1", transport="tcp").status == 200


def test_a_non_empty_allow_list_admits_only_its_addresses_and_deny_wins(gateway):
    gw = gateway('[acl]\nallow = ["198.51.100.0/24"]\ndeny = ["198.51.100.66/32"]\n')
    assert gw.options("198.51.100.1").status == 200
    assert gw.options("203.0.113.5") is None
    assert gw.options("198.51.100.66") is None


def test_a_transport_allow_list_applies_on_top_of_the_global_one(gateway):
    gw = gateway('[acl]\nallow = ["10.0.0.0/8"]\ntcp_allow = ["10.1.0.0/16"]\n')
    assert gw.options("10.2.0.1").status == 200  # UDP: only the global list
    assert gw.options("10.2.0.1", transport="tcp") is None
    assert gw.options("10.1.0.1", transport="tcp").status == 200


def test_the_backends_are_always_admitted(gateway):
    gw = gateway('[acl]\nallow = ["10.0.0.0/8"]\ndeny = ["127.0.0.0/8"]\n')
    assert gw.options("127.0.0.1").status == 200  # the dispatcher destination's address
    assert gw.options("127.0.0.2") is None


def test_websocket_clients_are_judged_by_their_client_address(gateway):
    # Behind nginx, Source.host of a ws flow is the X-Real-IP / X-Forwarded-For address.
    gw = gateway('[acl]\nws_deny = ["203.0.113.0/24"]\n')
    assert gw.options("203.0.113.9", transport="ws") is None
    assert gw.options("198.51.100.9", transport="ws").status == 200
    assert gw.options("203.0.113.9", transport="wss").status == 200


def test_the_connection_of_a_denied_address_is_closed_and_the_refusal_logged_once(gateway):
    gw = gateway('[acl]\ntcp_deny = ["192.0.2.0/24"]\n')
    flow = ClosableFlow(gw.svc.flows.new_id())
    gw.svc.flows.add(flow, "tcp", "192.0.2.7", 5070)
    with capturedLogs() as logs:
        for _ in range(20):
            assert gw.options("192.0.2.7", transport="tcp", flow_id=flow.flow_id) is None
    assert flow.closed
    lines = lines_of(logs)
    assert len(lines) == 1 and "192.0.2.7" in lines[0]


def test_without_address_lists_the_check_costs_nothing_and_a_reload_turns_it_on_and_off(
        gateway):
    gw = gateway()
    assert gw.svc.proxy.admits is None
    gw.reload('[acl]\nudp_deny = ["192.0.2.0/24"]\n')
    assert gw.options("192.0.2.1") is None
    gw.reload("")
    assert gw.svc.proxy.admits is None
    assert gw.options("192.0.2.1").status == 200


def test_a_tcp_connection_from_a_denied_address_is_closed_when_accepted(gateway):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    gw = gateway('[acl]\ntcp_deny = ["192.0.2.0/24"]\n')
    [factory] = [f for port, f, _, _ in gw.reactor.tcpServers if port == 25060]

    def accepted(host: str) -> bool:
        wire = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 25060),
                               peerAddress=IPv4Address("TCP", host, 40000))
        factory.buildProtocol(None).makeConnection(wire)
        return not wire.disconnecting

    assert not accepted("192.0.2.7")
    assert accepted("198.51.100.7")
    assert accepted("127.0.0.1")  # the backend's address
