"""REGISTER through to the backend with a Path back to the client's flow (RFC 3327), the
user → flow map, and 430/480 when the flow is gone (RFC 5626 §5.3)."""

from __future__ import annotations

import pytest

from sipgw.proxy.transport import Source
from tests.proxy.test_overload import late, new_register
from tests.proxy.transport.ws.test_ws_relay import (  # noqa: F401 - fixtures
    ALIAS,
    BACKEND,
    BACKEND_SRC,
    UDP_RR,
    WS,
    WS_RR,
    FakeFlow,
    Link,
    flows,
    link,
    proxy,
)

OUTBOUND = ';reg-id=1;+sip.instance="<urn:uuid:0d2f>"'


def register(*, supported: str = "path, gruu, outbound", contact_params: str = OUTBOUND,
             expires: int = 600, contact: str | None = None, cseq: int = 1) -> bytes:
    contact = contact or f"<sip:k5qq2d1o@df7jal23ls0d.invalid;transport=ws>{contact_params}"
    return (
        "REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKreg{cseq}\r\n"
        "Max-Forwards: 69\r\n"
        "To: <sip:5001@example.com>\r\n"
        "From: <sip:5001@example.com>;tag=r1\r\n"
        "Call-ID: reg-1\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: {contact}\r\n"
        f"Expires: {expires}\r\n"
        + (f"Supported: {supported}\r\n" if supported else "")
        + "Content-Length: 0\r\n\r\n"
    ).encode()


def token(proxy) -> str:
    return proxy.registrar.token(WS.flow_id)


def backend_invite(route: str) -> bytes:
    return (
        "INVITE sip:k5qq2d1o@df7jal23ls0d.invalid;transport=ws SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKpbx1\r\n"
        f"Route: {route}\r\n"
        "From: <sip:5002@example.com>;tag=p1\r\nTo: <sip:5001@example.com>\r\n"
        "Call-ID: pbx-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:5002@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_register_from_a_client_supporting_path_reaches_the_backend_with_our_path(proxy, link):
    proxy.receive(register(), WS)
    (out, dest), = link.take()
    assert dest == BACKEND and out.method == "REGISTER"
    assert out.values("path") == [f"<sip:{token(proxy)}@127.0.0.1:5060;lr;ob>"]
    assert f";{ALIAS};" in out.header("contact")
    assert not out.has("record-route")


def test_no_path_without_supported_path(proxy, link):
    proxy.receive(register(supported="outbound"), WS)
    (out, _), = link.take()
    assert not out.has("path")


def test_the_backends_request_with_our_path_as_route_goes_down_the_registered_flow(proxy, link):
    proxy.receive(register(), WS)
    link.take()
    proxy.receive(backend_invite(f"<sip:{token(proxy)}@127.0.0.1:5060;lr;ob>"), BACKEND_SRC)
    invite = [(m, d) for m, d in link.take() if getattr(m, "method", None) == "INVITE"]
    (out, dest), = invite
    assert dest.flow_id == WS.flow_id and dest.transport == "ws"
    assert not out.has("route")


@pytest.mark.parametrize("params,status", [(OUTBOUND, 430), (";expires=600", 480)])
def test_a_request_for_a_flow_that_is_gone_gets_430_with_outbound_else_480(
    proxy, link, flows, params, status
):
    proxy.receive(register(contact_params=params), WS)
    link.take()
    flows.remove(flows.get(WS.flow_id), "ws", WS.host, WS.port)
    proxy.registrar.flow_closed(WS.flow_id, WS)
    proxy.receive(backend_invite(f"<sip:{token(proxy)}@127.0.0.1:5060;lr;ob>"), BACKEND_SRC)
    (resp, dest), = link.take()
    assert resp.status == status and dest == BACKEND
    # The same for an in-dialog request that finds the flow by the contact alias.
    bye = (
        f"BYE sip:k@x.invalid;{ALIAS};transport=ws SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKpbx2\r\n"
        f"Route: {UDP_RR}\r\nRoute: {WS_RR}\r\n"
        "From: <sip:5002@example.com>;tag=p1\r\nTo: <sip:5001@example.com>;tag=c1\r\n"
        "Call-ID: pbx-2\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    proxy.receive(bye, BACKEND_SRC)
    (resp, _), = link.take()
    assert resp.status == status


def test_a_token_from_another_run_or_an_unknown_flow_gets_480(proxy, link):
    proxy.receive(backend_invite(f"<sip:{proxy.registrar.boot}-999@127.0.0.1:5060;lr;ob>"),
                  BACKEND_SRC)
    (resp, _), = link.take()
    assert resp.status == 480


def test_the_user_map_knows_who_is_on_which_flow_until_they_unregister(proxy, link):
    reg = proxy.registrar
    proxy.receive(register(), WS)
    assert reg.users_on(WS.flow_id) == ["sip:5001@example.com"]
    assert reg.flows_of("5001") == [WS.flow_id] == reg.flows_of("sip:5001@example.com")
    proxy.receive(register(expires=0, cseq=2), WS)
    assert reg.users_on(WS.flow_id) == []
    assert reg.flows_of("5001") == []


def test_a_registration_expires_from_the_map(proxy, link):
    proxy.receive(register(expires=60), WS)
    proxy.clock.advance(61)
    assert proxy.registrar.users_on(WS.flow_id) == []


def test_a_udp_client_gets_no_flow_token(proxy, link):
    udp = Source(transport="udp", host="192.0.2.50", port=5062, local_host="127.0.0.1",
                 local_port=5060)
    proxy.receive(register().replace(b"SIP/2.0/WS df7jal23ls0d.invalid",
                                     b"SIP/2.0/UDP 192.0.2.50:5062"), udp)
    (out, _), = link.take()
    assert not out.has("path")


def test_while_sipgw_sheds_everything_new_a_backends_call_by_path_still_reaches_the_browser(
    proxy, link
):
    proxy.receive(register(), WS)
    link.take()
    shedder = proxy.overload
    shedder.cpu_seconds = proxy.clock.seconds  # busy all the time
    late(proxy.clock, shedder, *[1.0] * 60)
    assert shedder.admit < 0.02 and shedder.dropping
    link.take()  # the REGISTER's retransmissions toward the backend meanwhile
    # A client's new request now is dropped unread...
    proxy.receive(new_register(1), Source(transport="udp", host="192.0.2.99", port=5999,
                                          local_host="127.0.0.1", local_port=5060))
    assert link.take() == [] and proxy.stats.get("core:shed_dropped") == 1
    # ...while the contact center's call to a browser goes down its flow.
    proxy.receive(backend_invite(f"<sip:{token(proxy)}@127.0.0.1:5060;lr;ob>"), BACKEND_SRC)
    (out, dest), = [(m, d) for m, d in link.take() if getattr(m, "method", None) == "INVITE"]
    assert dest.flow_id == WS.flow_id
    assert proxy.stats.get("core:shed_dropped") == 1 and proxy.stats.get("core:shed_503") == 0
