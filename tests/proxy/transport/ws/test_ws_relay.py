"""A browser over WebSocket through the proxy to a UDP backend, and back: Record-Route pairs,
NAT fixes on its messages, and requests routed to its flow by the contact alias."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipgw.proxy.core import Proxy
from sipgw.proxy.identity import Identity, Listener
from sipgw.proxy.transport import Destination, FlowTable, Source
from sipgw.sip.address import parse_name_addr
from sipgw.sip.parser import parse_message
from sipgw.tools.harness import SIGNER, core

WS = Source(transport="ws", host="192.0.2.1", port=40000, local_host="127.0.0.1",
            local_port=8080, flow_id=7)
BACKEND_SRC = Source(transport="udp", host="127.0.0.1", port=5080, local_host="127.0.0.1",
                     local_port=5060)
BACKEND = Destination(transport="udp", host="127.0.0.1", port=5080)
ALIAS = "alias=192.0.2.1~40000~5~" + SIGNER.alias("192.0.2.1~40000~5")
# The browser's INVITE below opens the dialog: its Call-ID and From tag are signed.
SG = "sg=" + SIGNER.dialog("1j9FpLxk3uxtm8tn@192.0.2.1", "hyh8")
UDP_RR = f"<sip:127.0.0.1:5060;lr;r2=on;{SG}>"
WS_RR = f"<sip:127.0.0.1:8080;transport=ws;lr;r2=on;{SG}>"


class FakeFlow:
    flow_id = 7
    transport_name = "ws"

    def send(self, data: bytes) -> None:  # pragma: no cover - the link records instead
        raise AssertionError("the proxy sends through its send function")

    def close(self) -> None:  # pragma: no cover
        pass


class Link:
    def __init__(self) -> None:
        self.sent: list = []

    def __call__(self, data: bytes, dest: Destination) -> None:
        self.sent.append((parse_message(data), dest))

    def take(self) -> list:
        out, self.sent = self.sent, []
        return out


@pytest.fixture
def link() -> Link:
    return Link()


@pytest.fixture
def flows() -> FlowTable:
    table = FlowTable()
    table.add(FakeFlow(), "ws", WS.host, WS.port)
    return table


@pytest.fixture
def proxy(link, flows) -> Proxy:
    identity = Identity(listeners=[Listener(transport="udp", host="127.0.0.1", port=5060),
                                   Listener(transport="ws", host="127.0.0.1", port=8080)])
    return core(clock=Clock(), identity=identity, send=link, flows=flows)


def browser_invite() -> bytes:
    return (
        b"INVITE sip:5002@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK56sdasks\r\n"
        b"Max-Forwards: 69\r\n"
        b"To: <sip:5002@example.com>\r\n"
        b'From: "5001" <sip:5001@example.com>;tag=hyh8\r\n'
        b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:k5qq2d1o@df7jal23ls0d.invalid;transport=ws;ob>"
        b';+sip.instance="<urn:uuid:1>"\r\n'
        b"Content-Type: application/sdp\r\n"
        b"\r\n"
        b"v=0\r\n"
    )


def reply(req, status: int, reason: str, extra: str = "") -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.headers("via")]
    lines += [f"Record-Route: {v}" for v in req.headers("record-route")]
    lines += [f"From: {req.header('from')}", f"To: {req.header('to')};tag=uas1",
              f"Call-ID: {req.call_id}", f"CSeq: {req.header('cseq')}"]
    return ("\r\n".join(lines) + "\r\n" + extra + "Content-Length: 0\r\n\r\n").encode()


def backend_bye(ruri: str, routes: list[str], branch: str = "z9hG4bKuas1") -> bytes:
    route = "".join(f"Route: {r}\r\n" for r in routes)
    return (
        f"BYE {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch={branch}\r\n"
        f"{route}"
        "From: <sip:5002@example.com>;tag=uas1\r\n"
        "To: \"5001\" <sip:5001@example.com>;tag=hyh8\r\n"
        "Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.1\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_an_invite_from_a_browser_reaches_the_backend_with_two_record_routes_and_its_alias(
    proxy, link
):
    proxy.receive(browser_invite(), WS)
    sent = link.take()
    assert [(m.status if hasattr(m, "status") else m.method, d.flow_id) for m, d in sent] == [
        (100, 7), ("INVITE", None)]
    invite, dest = sent[1]
    assert dest == BACKEND
    assert invite.values("record-route") == [UDP_RR, WS_RR]
    contact = invite.header("contact")
    assert contact.startswith(f"<sip:k5qq2d1o@df7jal23ls0d.invalid;{ALIAS};transport=ws;ob>")
    assert '+sip.instance="<urn:uuid:1>"' in contact
    client_via = invite.headers("via")[1]
    assert "received=192.0.2.1" in client_via and "rport=40000" in client_via


def test_the_backends_answer_goes_down_the_browsers_flow(proxy, link):
    proxy.receive(browser_invite(), WS)
    invite = link.take()[1][0]
    proxy.receive(reply(invite, 200, "OK"), BACKEND_SRC)
    (ok, dest), = link.take()
    assert ok.status == 200 and dest.flow_id == 7 and dest.transport == "ws"
    assert ok.values("record-route") == [UDP_RR, WS_RR]


def test_a_bye_from_the_backend_follows_the_route_set_and_the_alias_to_the_flow(proxy, link):
    bye = backend_bye(f"sip:k5qq2d1o@df7jal23ls0d.invalid;{ALIAS};transport=ws;ob",
                      [UDP_RR, WS_RR])
    proxy.receive(bye, BACKEND_SRC)
    (out, dest), = link.take()
    assert out.method == "BYE"
    assert (dest.transport, dest.host, dest.port, dest.flow_id) == ("ws", "192.0.2.1", 40000, 7)
    assert out.uri == "sip:k5qq2d1o@df7jal23ls0d.invalid;transport=ws;ob"  # alias removed
    assert not out.has("route")
    assert out.top_via.transport == "WS"


def test_a_bye_for_a_browser_whose_connection_is_gone_gets_480(proxy, link, flows):
    flows.remove(flows.get(7), "ws", WS.host, WS.port)
    proxy.receive(backend_bye(f"sip:k@x.invalid;{ALIAS};transport=ws", [UDP_RR, WS_RR]),
                  BACKEND_SRC)
    (resp, dest), = link.take()
    assert resp.status == 480 and dest == BACKEND


def test_a_malformed_alias_gets_400(proxy, link):
    proxy.receive(backend_bye("sip:k@x.invalid;alias=192.0.2.1~40000;transport=ws",
                              [UDP_RR, WS_RR]), BACKEND_SRC)
    (resp, _), = link.take()
    assert resp.status == 400 and "alias" in resp.reason


def test_a_udp_alias_is_followed_to_a_client_but_never_to_a_backend_or_to_us(proxy, link):
    proxy.receive(backend_bye("sip:k@10.0.0.9:5070;alias=203.0.113.1~5062~1",
                              [UDP_RR, WS_RR]), BACKEND_SRC)
    (out, dest), = link.take()
    assert (dest.transport, dest.host, dest.port) == ("udp", "203.0.113.1", 5062)
    assert out.uri == "sip:k@10.0.0.9:5070"
    for alias in ("127.0.0.1~5080~1", "127.0.0.1~5060~1"):  # the backend, ourselves
        proxy.receive(backend_bye(f"sip:k@198.51.100.9:5070;alias={alias}",
                                  [UDP_RR, WS_RR], branch=f"z9hG4bK{alias}"), BACKEND_SRC)
        (out, dest), = link.take()
        assert (dest.host, dest.port) == ("198.51.100.9", 5070)
        assert "alias" not in out.uri


UDP_NATED = Source(transport="udp", host="203.0.113.1", port=5062, local_host="127.0.0.1",
                   local_port=5060)


def phone_invite(via: str, contact: str) -> bytes:
    return (
        "INVITE sip:5002@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via};branch=z9hG4bKphone1;rport\r\n"
        "From: <sip:5003@example.com>;tag=ph1\r\nTo: <sip:5002@example.com>\r\n"
        "Call-ID: phone-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:5003@{contact}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_udp_phone_behind_nat_gets_received_rport_and_the_alias(proxy, link):
    proxy.receive(phone_invite("192.168.1.20:5060", "192.168.1.20:5060"), UDP_NATED)
    invite = next(m for m, d in link.take() if getattr(m, "method", None) == "INVITE")
    assert invite.headers("via")[1] == (
        "SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKphone1;rport=5062;received=203.0.113.1")
    signed = "203.0.113.1~5062~1~" + SIGNER.alias("203.0.113.1~5062~1")
    assert invite.header("contact") == f"<sip:5003@192.168.1.20:5060;alias={signed}>"
    sg = SIGNER.dialog("phone-1", invite.from_tag)
    assert invite.values("record-route") == [f"<sip:127.0.0.1:5060;lr;sg={sg}>"]  # one: udp


def test_a_udp_phone_that_is_not_natted_is_relayed_untouched(proxy, link):
    proxy.receive(phone_invite("203.0.113.1:5062", "203.0.113.1:5062"), UDP_NATED)
    invite = next(m for m, d in link.take() if getattr(m, "method", None) == "INVITE")
    assert invite.headers("via")[1] == "SIP/2.0/UDP 203.0.113.1:5062;branch=z9hG4bKphone1;rport"
    assert invite.header("contact") == "<sip:5003@203.0.113.1:5062>"


def test_nat_tests_set_to_zero_leave_udp_phones_alone_but_not_browsers(proxy, link):
    from sipgw.sip.nat import NatTest

    proxy.nat.configure(NatTest(0))  # as a reload to proxy.nat_uac_test = 0 does
    proxy.receive(phone_invite("192.168.1.20:5060", "192.168.1.20:5060"), UDP_NATED)
    invite = next(m for m, d in link.take() if getattr(m, "method", None) == "INVITE")
    assert "alias" not in invite.header("contact")
    proxy.receive(browser_invite(), WS)
    invite = next(m for m, d in link.take() if getattr(m, "method", None) == "INVITE")
    assert ALIAS in invite.header("contact")


def test_a_browsers_answer_to_the_backend_gets_the_alias_on_its_contact(proxy, link):
    invite = (
        "INVITE sip:k5qq2d1o@df7jal23ls0d.invalid;" + ALIAS + ";transport=ws SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKuasinv\r\n"
        "Record-Route: <sip:127.0.0.1:5080;lr>\r\n"
        "From: <sip:5002@example.com>;tag=b1\r\nTo: <sip:5001@example.com>\r\n"
        "Call-ID: in-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:5002@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    proxy.receive(invite, BACKEND_SRC)
    sent = link.take()
    out = next(m for m, d in sent if getattr(m, "method", None) == "INVITE")
    sg = "sg=" + SIGNER.dialog("in-1", "b1")  # the backend's INVITE opens this dialog
    assert out.values("record-route")[:2] == [WS_RR.replace(SG, sg), UDP_RR.replace(SG, sg)]
    ok = reply(out, 200, "OK", "Contact: <sip:k5qq2d1o@df7jal23ls0d.invalid;transport=ws>\r\n")
    proxy.receive(ok, WS)
    (up, dest), = [(m, d) for m, d in link.take() if getattr(m, "status", 0) == 200]
    assert dest == BACKEND
    uri = parse_name_addr(up.header("contact")).uri
    assert uri.param("alias") == ALIAS.removeprefix("alias=")


def test_a_bye_from_the_browser_goes_to_the_backend_by_its_route_set(proxy, link):
    bye = (
        "BYE sip:callee@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKbye1\r\n"
        f"Route: {WS_RR}\r\nRoute: {UDP_RR}\r\n"
        "From: \"5001\" <sip:5001@example.com>;tag=hyh8\r\n"
        "To: <sip:5002@example.com>;tag=uas1\r\n"
        "Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\n\r\n"
    ).encode()
    proxy.receive(bye, WS)
    (out, dest), = link.take()
    assert out.method == "BYE" and dest == BACKEND and not out.has("route")
