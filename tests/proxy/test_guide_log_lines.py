"""The log lines the Kamailio guide's troubleshooting greps for ("NAT detected", "Routing to
Asterisk"): written at debug, naming the client's and the backend's addresses, and not even
built when debug is off."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent

from sipgw.proxy import log as sipgw_log
from sipgw.sip.nat import NatTest
from tests.helpers.fakes import CLIENT_HOST, CLIENT_PORT, ProxyHarness, valid_invite


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
    harness.proxy.nat.tests = NatTest(19)
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
    harness.proxy.nat.tests = NatTest(19)
    lines = lines_of(harness, natted_invite())
    assert [text for _, text in lines if "NAT detected" in text or "Routing" in text] == []


def test_a_client_that_is_not_natted_gets_no_nat_line(level):
    level(3)
    harness = ProxyHarness()
    harness.proxy.nat.tests = NatTest(19)
    lines = lines_of(harness, valid_invite())
    assert [text for _, text in lines if "NAT detected" in text] == []
    assert len([text for _, text in lines if "Routing to Asterisk" in text]) == 1
