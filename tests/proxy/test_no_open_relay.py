"""Nobody relays through sipgw without authenticating: not even an ACK."""

from __future__ import annotations

from tests.helpers.fakes import BACKEND
from tests.helpers.fuzzproxy import FuzzProxy


def ack(route: str = "", r_uri: str = "sip:victim@203.0.113.5:5060") -> bytes:
    return (f"ACK {r_uri} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.99:5999;branch=z9hG4bKstray1\r\n" + route +
            "From: <sip:eve@evil.example>;tag=e1\r\nTo: <sip:victim@203.0.113.5>;tag=t1\r\n"
            "Call-ID: stray-ack\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
            "Content-Length: 5\r\n\r\nhello").encode()


def test_a_stray_ack_from_a_client_is_not_relayed_anywhere():
    with FuzzProxy() as h:
        assert h.feed(ack(), "udp") == []
        assert h.feed(ack(), "ws") == []
        assert h.proxy.stats.get("core:drop_requests") == 2
        assert h.proxy.stats.get("core:fwd_requests") == 0


def test_an_ack_naming_our_record_route_still_goes_on():
    with FuzzProxy() as h:
        ours = "Route: <sip:127.0.0.1:5060;lr>\r\n"
        sent = h.feed(ack(ours, f"sip:uas@{BACKEND.host}:{BACKEND.port}"), "udp")
        assert [s.dest for s in sent] == [BACKEND]
        assert h.proxy.stats.get("core:fwd_requests") == 1
