"""Challenges and refusals decided without the store are stateless (Kamailio's sl)."""

from __future__ import annotations

from sipgw.tools.fuzzproxy import REALM, FuzzProxy
from sipgw.tools.harness import CLIENT_HOST, CLIENT_PORT, UDP_SOURCE


def request(method: str, branch: str, cseq: int = 1, to_tag: str = "") -> bytes:
    to = f"<sip:5002@{REALM}>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} sip:5002@{REALM} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CLIENT_HOST}:{CLIENT_PORT};branch={branch};rport\r\n"
            f"From: <sip:5001@{REALM}>;tag=c1\r\nTo: {to}\r\nCall-ID: sl-1\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:5001@{CLIENT_HOST}:{CLIENT_PORT}>\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_challenge_costs_no_transaction_and_a_retransmission_gets_a_fresh_one():
    with FuzzProxy() as h:
        stats = h.proxy.stats
        first = h.feed(request("REGISTER", "z9hG4bKsl1"), "udp")
        again = h.feed(request("REGISTER", "z9hG4bKsl1"), "udp")
        assert [s.status for s in first + again] == [401, 401]
        assert all(s.dest.host == UDP_SOURCE.host for s in first + again)
        assert stats.get("tm:UAS_transactions") == 0 and not h.proxy.relay.servers
        nonce = [s.parse().header("www-authenticate") for s in first + again]
        assert nonce[0] != nonce[1]  # each answer is made anew, as Kamailio's sl does


def test_an_invite_is_challenged_without_100_trying_and_its_ack_goes_nowhere():
    with FuzzProxy() as h:
        sent = h.feed(request("INVITE", "z9hG4bKsl2"), "udp")
        assert [s.status for s in sent] == [407]
        to_tag = sent[0].parse().to_tag
        assert h.feed(request("ACK", "z9hG4bKsl2", to_tag=to_tag), "udp") == []
        assert not h.proxy.relay.servers and h.proxy.stats.get("core:fwd_requests") == 0
