"""The log lines the Kamailio guide's troubleshooting greps for ("NAT detected", "Routing to
Asterisk"): written at debug, naming the client's and the backend's addresses, and not even
built when debug is off."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

from sipgw.proxy.runtime import log as sipgw_log
from sipgw.sip.nat import NatTest
from sipgw.tools.harness import CLIENT_HOST, CLIENT_PORT, ProxyHarness, valid_invite
from tests.proxy.test_registrar import backend_invite, register, token
from tests.proxy.transport.ws.test_ws_relay import BACKEND_SRC, WS, flows, link, proxy  # noqa: F401


@pytest.fixture
def level():
    before = sipgw_log.current_level()
    yield sipgw_log.set_level
    sipgw_log.set_level(before)


def natted_invite() -> bytes:
    """An INVITE whose Via and Contact name a private address it was not sent from."""
    return valid_invite().replace(
        f"Via: SIP/2.0/UDP {CLIENT_HOST}:{CLIENT_PORT}".encode(),
        b"Via: SIP/2.0/UDP 10.0.0.5:5062", 1,
    ).replace(b"Contact: <sip:alice@192.0.2.99:5999>", b"Contact: <sip:alice@10.0.0.5:5062>")


def lines_of(harness: ProxyHarness, data: bytes) -> list[tuple[LogLevel, str]]:
    with capturedLogs() as events:
        sent = harness.udp(data)
    assert harness.to_backend(sent), "the INVITE was not relayed"
    return [(e["log_level"], formatEvent(e)) for e in events]


def test_at_debug_a_natted_client_and_the_backend_it_is_routed_to_are_logged_once(level):
    level(3)
    harness = ProxyHarness()
    harness.proxy.nat.configure(NatTest(19))
    lines = lines_of(harness, natted_invite())
    nat = [text for lvl, text in lines if "NAT detected" in text]
    route = [text for lvl, text in lines if "Routing to Asterisk" in text]
    assert nat == [f"NAT detected for udp:{CLIENT_HOST}:{CLIENT_PORT} "
                   "(CONTACT_PRIVATE|VIA_RECEIVED|VIA_PORT): Via 10.0.0.5:5062, "
                   "Contact sip:alice@10.0.0.5:5062"]
    assert route == [f"Routing to Asterisk udp:127.0.0.1:5080: INVITE sip:bob@example.com "
                     f"from udp:{CLIENT_HOST}:{CLIENT_PORT}"]
    assert {lvl for lvl, text in lines if "NAT detected" in text or "Routing" in text} == {
        LogLevel.debug}


def test_below_debug_the_lines_are_not_even_emitted(level):
    level(2)
    harness = ProxyHarness()
    harness.proxy.nat.configure(NatTest(19))
    lines = lines_of(harness, natted_invite())
    assert [text for _, text in lines if "NAT detected" in text or "Routing" in text] == []


def test_a_client_that_is_not_natted_gets_no_nat_line(level):
    level(3)
    harness = ProxyHarness()
    harness.proxy.nat.configure(NatTest(19))
    lines = lines_of(harness, valid_invite())
    assert [text for _, text in lines if "NAT detected" in text] == []
    assert len([text for _, text in lines if "Routing to Asterisk" in text]) == 1


def test_a_browser_is_named_natted_and_a_backends_request_to_it_is_not_routing_to_asterisk(
        level, proxy, link):
    level(3)
    with capturedLogs() as events:
        proxy.receive(register(), WS)
        proxy.receive(backend_invite(f"<sip:{token(proxy)}@127.0.0.1:5060;lr;ob>"), BACKEND_SRC)
    sent = [m.method for m, _ in link.take() if hasattr(m, "method")]
    assert sent == ["REGISTER", "INVITE"]  # the REGISTER up, the INVITE down the flow
    lines = [formatEvent(e) for e in events]
    assert [line for line in lines if "NAT detected" in line] == [
        f"NAT detected for ws:{WS.host}:{WS.port} (VIA_RECEIVED|VIA_PORT|WEBSOCKET): "
        "Via df7jal23ls0d.invalid, "
        "Contact sip:k5qq2d1o@df7jal23ls0d.invalid;transport=ws"]
    assert [line.split(":")[0] for line in lines if "Routing to Asterisk" in line] == [
        "Routing to Asterisk udp"]  # the REGISTER's; the INVITE went to a client
