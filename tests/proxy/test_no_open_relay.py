"""Nobody relays through sipgw without authenticating: not with a forged Route, not with a
Route of another dialog, not with a genuine dialog aimed elsewhere, not even an ACK.

The proxy is the whole route script as ``sipgw serve`` assembles it (``FuzzProxy``: AUTH,
the dispatcher, NAT, a TCP and a WebSocket flow held from 192.0.2.99); the clients send no
credentials, which an in-dialog request never needs.
"""

from __future__ import annotations

import pytest

from sipgw.tools.fuzzproxy import FuzzProxy
from sipgw.tools.harness import BACKEND, CLIENT_HOST, SIGNER, our_route

VICTIM = "127.0.0.6:5099"
CALL_ID, FROM_TAG, TO_TAG = "forged-1", "e1", "t1"
CLIENTS = ("udp", "tcp", "ws")
METHODS = ("BYE", "ACK", "INVITE", "MESSAGE")
FORGED_ROUTE = "Route: <sip:127.0.0.1:5060;lr>\r\n"


def request(method: str, r_uri: str = f"sip:victim@{VICTIM}", route: str = "", *,
            call_id: str = CALL_ID, branch: str = "z9hG4bKforged1") -> bytes:
    cseq = 1 if method in ("INVITE", "ACK") else 2
    return (f"{method} {r_uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.99:5999;branch={branch};rport\r\n" + route +
            f"From: <sip:nobody@evil.invalid>;tag={FROM_TAG}\r\n"
            f"To: <sip:victim@127.0.0.6>;tag={TO_TAG}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
            "Contact: <sip:nobody@192.0.2.99:5999>\r\nContent-Type: text/plain\r\n"
            "Content-Length: 5\r\n\r\nhello").encode()


def assert_refused(h: FuzzProxy, sent, method: str, status: int = 403) -> None:
    """Nothing left sipgw except, for a request other than ACK, its refusal to the client."""
    assert [s for s in sent if s.dest.host != CLIENT_HOST] == []
    if method == "ACK":
        assert sent == []
    else:
        assert [s.status for s in sent] == [status]


@pytest.mark.parametrize("how", CLIENTS)
@pytest.mark.parametrize("method", METHODS)
def test_a_forged_route_naming_sipgw_relays_nothing(how: str, method: str) -> None:
    with FuzzProxy() as h:
        assert_refused(h, h.feed(request(method, route=FORGED_ROUTE), how), method)
        assert h.proxy.stats.get("core:forbidden_relays") == 1
        assert h.proxy.stats.get("core:fwd_requests") == 0


@pytest.mark.parametrize("how", CLIENTS)
@pytest.mark.parametrize("method", METHODS)
def test_the_strict_router_form_naming_sipgw_in_the_request_uri_relays_nothing(
        how: str, method: str) -> None:
    with FuzzProxy() as h:
        data = request(method, "sip:127.0.0.1:5060;lr", f"Route: <sip:victim@{VICTIM}>\r\n")
        assert_refused(h, h.feed(data, how), method)
        assert h.proxy.stats.get("core:fwd_requests") == 0


@pytest.mark.parametrize("method", METHODS)
def test_an_in_dialog_request_without_any_route_of_ours_relays_nothing(method: str) -> None:
    with FuzzProxy() as h:
        assert_refused(h, h.feed(request(method), "udp"), method, status=404)


@pytest.mark.parametrize("method", METHODS)
def test_a_route_sipgw_wrote_for_another_dialog_is_refused(method: str) -> None:
    with FuzzProxy() as h:
        other = our_route(h.proxy, "another-call", FROM_TAG)
        data = request(method, f"sip:uas@{BACKEND.host}:{BACKEND.port}", other)
        assert_refused(h, h.feed(data, "udp"), method)
        assert h.to_backend() == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [
    "sip:127.0.0.1:6379;transport=tcp",  # a local Redis
    f"sip:victim@{VICTIM}",
    "sip:victim@victim.example.com",  # a name: never even resolved
])
def test_a_genuine_dialog_cannot_be_aimed_at_anything_but_a_backend_or_a_client(
        method: str, target: str) -> None:
    with FuzzProxy() as h:
        data = request(method, target, our_route(h.proxy, CALL_ID, FROM_TAG))
        assert_refused(h, h.feed(data, "ws"), method)


@pytest.mark.parametrize("method", METHODS)
def test_a_forged_alias_in_a_genuine_dialog_is_refused(method: str) -> None:
    with FuzzProxy() as h:
        for alias in ("127.0.0.6~5099~1", "192.0.2.99~6001~5",  # unsigned
                      "127.0.0.6~5099~1~0123456789abcdef"):  # a made-up MAC
            data = request(method, f"sip:victim@x.invalid;alias={alias}",
                           our_route(h.proxy, CALL_ID, FROM_TAG))
            assert_refused(h, h.feed(data, "udp"), method)


@pytest.mark.parametrize("method", METHODS)
def test_a_genuine_dialog_goes_to_the_backend_from_either_side(method: str) -> None:
    with FuzzProxy() as h:
        to_backend = f"sip:uas@{BACKEND.host}:{BACKEND.port}"
        # From the caller (the From tag opened the dialog) and from the callee (the To tag).
        for tag in (FROM_TAG, TO_TAG):
            data = request(method, to_backend, our_route(h.proxy, CALL_ID, tag),
                           branch=f"z9hG4bK{tag}")
            sent = h.feed(data, "ws")
            assert [s.dest for s in sent if s.status is None] == [BACKEND]
        assert h.proxy.stats.get("core:forbidden_relays") == 0


def test_a_genuine_dialog_reaches_a_client_by_its_signed_alias_or_its_held_flow() -> None:
    with FuzzProxy() as h:
        route = our_route(h.proxy, CALL_ID, FROM_TAG)
        signed = "192.0.2.99~6001~5~" + SIGNER.alias("192.0.2.99~6001~5")
        sent = h.feed(request("MESSAGE", f"sip:b@x.invalid;alias={signed}", route), "udp")
        (out,) = [s for s in sent if s.status is None]
        assert (out.dest.transport, out.dest.flow_id) == ("ws", 2)
        # A TCP client's own address, over the connection sipgw holds from it.
        sent = h.feed(request("MESSAGE", "sip:b@192.0.2.99:5999;transport=tcp", route,
                              branch="z9hG4bKflow"), "udp")
        (out,) = [s for s in sent if s.status is None]
        assert (out.dest.transport, out.dest.flow_id) == ("tcp", 1)


@pytest.mark.parametrize("how", ["backend", "trusted"])
def test_backends_and_trusted_addresses_route_in_dialog_requests_as_before(how: str) -> None:
    with FuzzProxy() as h:
        sent = h.feed(request("BYE", "sip:b@192.0.2.77:5070", FORGED_ROUTE), how)
        assert [(s.dest.host, s.dest.port) for s in sent if s.status is None] == [
            ("192.0.2.77", 5070)]


def test_an_ack_goes_through_reqinit_like_every_request() -> None:
    with FuzzProxy() as h:
        data = request("ACK", f"sip:uas@{BACKEND.host}:{BACKEND.port}",
                       our_route(h.proxy, CALL_ID, FROM_TAG))
        too_long = data.replace(b"sip:uas@", b"sip:" + b"u" * 1100 + b"@", 1)
        assert h.feed(too_long, "udp") == []  # 414 for anything else; an ACK is dropped
        assert h.feed(data, "udp")[0].dest == BACKEND
