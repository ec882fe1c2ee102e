"""The stateful relay, driven through ``Proxy.receive`` with a fake link and ``task.Clock``.

A caller at 192.0.2.10:5070 and the backend at 127.0.0.1:5080; sipgw at 127.0.0.1:5060.
Every test checks what each side would have received.
"""

from __future__ import annotations

import dataclasses

import pytest
from twisted.internet.task import Clock

from sipgw.proxy.core import Proxy
from sipgw.proxy.identity import Identity, Listener
from sipgw.proxy.transport import Destination, Source
from sipgw.sip.message import Response
from sipgw.sip.parser import parse_message
from sipgw.tools.harness import config_with, core

CALLER = Source(transport="udp", host="192.0.2.10", port=5070, local_host="127.0.0.1",
                local_port=5060)
BACKEND_SRC = Source(transport="udp", host="127.0.0.1", port=5080, local_host="127.0.0.1",
                     local_port=5060)
BACKEND = Destination(transport="udp", host="127.0.0.1", port=5080)


class Link:
    """Records what the proxy sends, parsed, per destination."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, Destination]] = []

    def __call__(self, data: bytes, dest: Destination) -> None:
        self.sent.append((parse_message(data), dest))

    def to(self, host: str, port: int) -> list:
        return [m for m, d in self.sent if (d.host, d.port) == (host, port)]

    def to_backend(self) -> list:
        return self.to("127.0.0.1", 5080)

    def to_caller(self) -> list:
        return self.to("192.0.2.10", 5070)

    def clear(self) -> None:
        self.sent.clear()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def link() -> Link:
    return Link()


@pytest.fixture
def proxy(clock: Clock, link: Link) -> Proxy:
    identity = Identity(listeners=[Listener(transport="udp", host="127.0.0.1", port=5060),
                                   Listener(transport="tcp", host="127.0.0.1", port=5060)])
    return core(clock=clock, send=link, identity=identity)


def request(method: str = "INVITE", *, branch: str = "z9hG4bKcaller1", cseq: int = 1,
            extra: str = "", to_tag: str = "", ruri: str = "sip:5002@127.0.0.1:5060",
            body: bytes = b"v=0\r\n", via_host: str = "192.0.2.10:5070") -> bytes:
    to = f"<sip:5002@example.com>{';tag=' + to_tag if to_tag else ''}"
    cseq_method = "INVITE" if method == "ACK" and not to_tag else method
    head = (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via_host};branch={branch};rport\r\n"
        f"From: \"Alice\" <sip:5001@example.com>;tag=a1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: call-1@192.0.2.10\r\n"
        f"CSeq: {cseq} {cseq_method}\r\n"
        f"Max-Forwards: 70\r\n"
        f"X-Unknown:   kept  as is\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def reply_from_backend(req, status: int, reason: str, *, to_tag: str = "b1",
                       extra: str = "") -> bytes:
    vias = "".join(f"Via: {v}\r\n" for v in req.values("via"))
    rr = "".join(f"Record-Route: {v}\r\n" for v in req.values("record-route"))
    to = req.header("to")
    if status > 100 and ";tag=" not in to:
        to = f"{to};tag={to_tag}"
    return (
        f"SIP/2.0 {status} {reason}\r\n{vias}{rr}"
        f"From: {req.header('from')}\r\nTo: {to}\r\nCall-ID: {req.call_id}\r\n"
        f"CSeq: {req.header('cseq')}\r\nContact: <sip:5002@127.0.0.1:5080>\r\n{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def test_invite_is_forwarded_with_our_via_record_route_and_max_forwards_decremented(
    proxy, link
):
    proxy.receive(request(), CALLER)
    [trying] = link.to_caller()
    assert trying.status == 100
    [fwd] = link.to_backend()
    via = fwd.top_via
    assert (via.host, via.port) == ("127.0.0.1", 5060)
    assert via.branch.startswith("z9hG4bK")
    assert fwd.values("via")[1].startswith("SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcaller1")
    sg = proxy.signer.dialog("call-1@192.0.2.10", "a1")  # signed for this dialog
    assert fwd.values("record-route") == [f"<sip:127.0.0.1:5060;lr;sg={sg}>"]
    assert fwd.header("max-forwards") == "69"
    assert b"X-Unknown:   kept  as is\r\n" in fwd.to_bytes()
    assert fwd.body == b"v=0\r\n"
    assert fwd.uri == "sip:5002@127.0.0.1:5060"


def test_responses_come_back_without_our_via_and_100_is_not_forwarded(proxy, link):
    proxy.receive(request(), CALLER)
    [fwd] = link.to_backend()
    link.clear()
    proxy.receive(reply_from_backend(fwd, 100, "Trying"), BACKEND_SRC)
    assert link.to_caller() == []
    proxy.receive(reply_from_backend(fwd, 180, "Ringing"), BACKEND_SRC)
    proxy.receive(reply_from_backend(fwd, 200, "OK"), BACKEND_SRC)
    statuses = [r.status for r in link.to_caller()]
    assert statuses == [180, 200]
    for r in link.to_caller():
        assert r.values("via") == [
            "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcaller1;rport"
        ]
    # rport: replies go to the source port, not a Via port
    assert all(d.port == 5070 for _, d in link.sent)


def test_a_retransmitted_invite_is_answered_from_the_transaction_not_forwarded_twice(
    proxy, link
):
    proxy.receive(request(), CALLER)
    proxy.receive(request(), CALLER)
    assert len(link.to_backend()) == 1
    assert [r.status for r in link.to_caller()] == [100, 100]


def test_invite_to_a_silent_backend_is_retransmitted_then_the_caller_gets_408(
    proxy, link, clock
):
    proxy.receive(request(), CALLER)
    # Timer A: 0.5, 1, 2, 4, 8, 16 s after the first send (T1 doubling) until timer B at 32.
    times = []
    for _ in range(512):
        clock.advance(0.125)  # exact in binary: no drift in the comparison
        if len(link.to_backend()) > len(times) + 1:
            times.append(round(clock.seconds(), 2))
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    statuses = [r.status for r in link.to_caller()]
    assert statuses[:2] == [100, 408]
    assert set(statuses[2:]) <= {408}  # timer G retransmits it until the caller ACKs
    assert proxy.stats.get("tm:timeouts") == 1


def test_408_comes_only_after_timer_b(proxy, link, clock):
    proxy.receive(request(), CALLER)
    clock.advance(31.99)
    assert [r.status for r in link.to_caller()] == [100]
    clock.advance(0.02)
    assert [r.status for r in link.to_caller()] == [100, 408]


def test_a_provisional_stops_retransmissions_and_timer_c_cancels_the_branch(
    proxy, link, clock
):
    proxy.receive(request(), CALLER)
    [fwd] = link.to_backend()
    proxy.receive(reply_from_backend(fwd, 180, "Ringing"), BACKEND_SRC)
    clock.advance(179.9)
    assert len(link.to_backend()) == 1  # no retransmission, no CANCEL yet
    clock.advance(0.2)
    cancel = link.to_backend()[-1]
    assert cancel.method == "CANCEL"
    assert cancel.top_via.branch == fwd.top_via.branch
    assert cancel.cseq == (1, "CANCEL")
    # The backend answers the CANCEL and the INVITE; the caller sees the 487.
    proxy.receive(reply_from_backend(cancel, 200, "OK"), BACKEND_SRC)
    proxy.receive(reply_from_backend(fwd, 487, "Request Terminated"), BACKEND_SRC)
    assert [r.status for r in link.to_caller()] == [100, 180, 487]
    # Hop-by-hop ACK for the 487 goes to the backend from sipgw.
    ack = link.to_backend()[-1]
    assert ack.method == "ACK" and ack.top_via.branch == fwd.top_via.branch


def test_cancel_before_answer_gets_200_and_the_caller_gets_487(proxy, link):
    proxy.receive(request(), CALLER)
    [fwd] = link.to_backend()
    proxy.receive(reply_from_backend(fwd, 180, "Ringing"), BACKEND_SRC)
    cancel = request("CANCEL").replace(b"CSeq: 1 CANCEL", b"CSeq: 1 CANCEL")
    proxy.receive(cancel, CALLER)
    to_caller = link.to_caller()
    ok = [r for r in to_caller if r.cseq[1] == "CANCEL"]
    assert [r.status for r in ok] == [200]
    [bcancel] = [m for m in link.to_backend() if m.method == "CANCEL"]
    assert bcancel.top_via.branch == fwd.top_via.branch
    proxy.receive(reply_from_backend(fwd, 487, "Request Terminated"), BACKEND_SRC)
    assert link.to_caller()[-1].status == 487
    # The caller's ACK for the 487 is absorbed by the server transaction.
    n = len(link.to_backend())
    proxy.receive(request("ACK", to_tag="b1"), CALLER)
    assert len(link.to_backend()) == n


def test_cancel_before_any_provisional_waits_for_one(proxy, link):
    proxy.receive(request(), CALLER)
    [fwd] = link.to_backend()
    proxy.receive(request("CANCEL"), CALLER)
    assert [m.method for m in link.to_backend()] == ["INVITE"]
    proxy.receive(reply_from_backend(fwd, 100, "Trying"), BACKEND_SRC)
    assert [m.method for m in link.to_backend()] == ["INVITE", "CANCEL"]


def test_cancel_for_an_unknown_transaction_gets_481(proxy, link):
    proxy.receive(request("CANCEL"), CALLER)
    assert [r.status for r in link.to_caller()] == [481]
    assert link.to_backend() == []


def test_non_2xx_final_is_acked_hop_by_hop_and_forwarded_once(proxy, link):
    proxy.receive(request(), CALLER)
    [fwd] = link.to_backend()
    busy = reply_from_backend(fwd, 486, "Busy Here")
    proxy.receive(busy, BACKEND_SRC)
    proxy.receive(busy, BACKEND_SRC)  # retransmitted by the backend
    assert [r.status for r in link.to_caller()] == [100, 486]
    acks = [m for m in link.to_backend() if m.method == "ACK"]
    assert len(acks) == 2  # one per 486 received (§17.1.1.2)
    assert acks[0].header("to").endswith("tag=b1")


def test_2xx_ack_and_bye_follow_the_record_route_end_to_end(proxy, link):
    proxy.receive(request(), CALLER)
    [fwd] = link.to_backend()
    proxy.receive(reply_from_backend(fwd, 200, "OK"), BACKEND_SRC)
    link.clear()
    route = "".join(f"Route: {rr}\r\n" for rr in fwd.values("record-route"))  # the 200's
    ack = request("ACK", branch="z9hG4bKack1", to_tag="b1", ruri="sip:5002@127.0.0.1:5080",
                  extra=route, body=b"")
    proxy.receive(ack, CALLER)
    proxy.receive(ack, CALLER)  # a retransmitted ACK is forwarded again, same branch
    acks = link.to_backend()
    assert [a.method for a in acks] == ["ACK", "ACK"]
    assert acks[0].top_via.branch == acks[1].top_via.branch
    assert not acks[0].has("route")  # our Route was consumed
    bye = request("BYE", branch="z9hG4bKbye1", cseq=2, to_tag="b1",
                  ruri="sip:5002@127.0.0.1:5080", extra=route, body=b"")
    proxy.receive(bye, CALLER)
    [fbye] = [m for m in link.to_backend() if m.method == "BYE"]
    assert not fbye.has("record-route")
    proxy.receive(reply_from_backend(fbye, 200, "OK"), BACKEND_SRC)
    assert [r.status for r in link.to_caller()] == [200]


def test_bye_from_the_callee_goes_to_the_callers_contact(proxy, link):
    bye = (
        b"BYE sip:5001@192.0.2.10:5070 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKcallee1\r\n"
        b"Route: <sip:127.0.0.1:5060;lr>\r\n"
        b"From: <sip:5002@example.com>;tag=b1\r\nTo: <sip:5001@example.com>;tag=a1\r\n"
        b"Call-ID: call-1@192.0.2.10\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    proxy.receive(bye, BACKEND_SRC)
    [fwd] = link.to_caller()
    assert fwd.method == "BYE" and not fwd.has("route")
    assert fwd.header("max-forwards") == "69"


def test_in_dialog_request_without_our_route_is_refused_404(proxy, link):
    bye = request("BYE", to_tag="b1", ruri="sip:5002@198.51.100.7:5060", body=b"")
    proxy.receive(bye, CALLER)
    assert [r.status for r in link.to_caller()] == [404]
    assert link.sent[-1][1].host == "192.0.2.10"


def test_strict_router_before_us_puts_our_uri_in_the_request_uri(proxy, link):
    # §16.4: the Request-URI is our Record-Route; the real target is the last Route.
    sg = proxy.signer.dialog("call-1@192.0.2.10", "a1")
    bye = request("BYE", to_tag="b1", ruri=f"sip:127.0.0.1:5060;lr;sg={sg}",
                  extra="Route: <sip:5002@127.0.0.1:5080>\r\n", body=b"")
    proxy.receive(bye, CALLER)
    [fwd] = link.to_backend()
    assert fwd.uri == "sip:5002@127.0.0.1:5080"
    assert not fwd.has("route")


def test_max_forwards_zero_gets_483(proxy, link):
    proxy.receive(request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), CALLER)
    [r] = link.to_caller()
    assert (r.status, r.reason) == (483, "Too Many Hops")


def test_options_to_sipgw_itself_gets_200_and_is_not_forwarded(proxy, link):
    proxy.receive(request("OPTIONS", ruri="sip:127.0.0.1:5060", body=b""), CALLER)
    [r] = link.to_caller()
    assert r.status == 200 and "OPTIONS" in r.header("allow")
    assert link.to_backend() == []


def test_a_request_that_comes_back_to_us_is_a_loop_482(proxy, link):
    proxy.receive(request("MESSAGE"), CALLER)
    [fwd] = link.to_backend()
    link.clear()
    proxy.receive(fwd.to_bytes(), BACKEND_SRC)  # the backend sends it straight back
    [(r, dest)] = link.sent
    # Not forwarded again: answered 482, by the top Via (ours, no rport: its port).
    assert r.status == 482 and (dest.host, dest.port) == ("127.0.0.1", 5060)


def test_unsupported_scheme_and_proxy_require(proxy, link):
    proxy.receive(request("OPTIONS", ruri="tel:+15551234"), CALLER)
    proxy.receive(request("OPTIONS", branch="z9hG4bK2", extra="Proxy-Require: foo\r\n"), CALLER)
    r416, r420 = link.to_caller()
    assert r416.status == 416
    assert r420.status == 420 and r420.header("unsupported") == "foo"


def test_a_response_that_is_not_ours_is_dropped(proxy, link):
    stray = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKother\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKx\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    proxy.receive(stray, BACKEND_SRC)
    assert link.sent == []
    assert proxy.stats.get("core:drop_replies") == 1


def test_a_late_2xx_retransmission_is_forwarded_statelessly_by_via(proxy, link, clock):
    proxy.receive(request(), CALLER)
    [fwd] = link.to_backend()
    ok = reply_from_backend(fwd, 200, "OK")
    proxy.receive(ok, BACKEND_SRC)
    clock.advance(64)  # every transaction is gone (timer L/M)
    assert proxy.relay.clients == {} and proxy.relay.servers == {}
    link.clear()
    proxy.receive(ok, BACKEND_SRC)
    [r] = link.to_caller()
    assert r.status == 200


def test_malformed_request_gets_400_naming_the_header_and_the_next_call_works(proxy, link):
    bad = request("INVITE").replace(b"CSeq: 1 INVITE", b"CSeq: 1 INVITE\r\nCSeq: 2 INVITE")
    proxy.receive(bad, CALLER)
    [r] = link.to_caller()
    assert (r.status, r.reason) == (400, "Duplicate CSeq header")
    link.clear()
    proxy.receive(request(branch="z9hG4bKnext"), CALLER)
    assert len(link.to_backend()) == 1


def test_garbage_is_dropped_and_counted(proxy, link):
    proxy.receive(b"\x16\x03\x01\x02\x00garbage", CALLER)
    proxy.receive(b"\r\n\r\n", CALLER)  # keepalive: not counted
    assert link.sent == []
    assert proxy.stats.get("core:bad_msg") == 1


def test_request_from_tcp_forwarded_over_udp_gets_a_double_record_route(proxy, link):
    tcp = Source(transport="tcp", host="192.0.2.10", port=40000, local_host="127.0.0.1",
                 local_port=5060, flow_id=7)
    proxy.receive(request(), tcp)
    [fwd] = link.to_backend()
    sg = proxy.signer.dialog("call-1@192.0.2.10", "a1")
    assert fwd.values("record-route") == [
        f"<sip:127.0.0.1:5060;lr;r2=on;sg={sg}>",
        f"<sip:127.0.0.1:5060;transport=tcp;lr;r2=on;sg={sg}>",
    ]
    # The reply goes back down the same connection.
    proxy.receive(reply_from_backend(fwd, 200, "OK"), BACKEND_SRC)
    assert [d.flow_id for m, d in link.sent if isinstance(m, Response)] == [7, 7]


def test_transaction_table_full_gets_503_with_retry_after(proxy, link):
    proxy_config = config_with()
    proxy.relay.configure(proxy_config.timers, proxy_config.proxy,
                          dataclasses.replace(proxy_config.limits, max_transactions=2))
    proxy.receive(request("MESSAGE", branch="z9hG4bK1"), CALLER)  # server + client
    proxy.receive(request("MESSAGE", branch="z9hG4bK2"), CALLER)
    [r] = link.to_caller()
    assert r.status == 503 and r.header("retry-after") == "5"
