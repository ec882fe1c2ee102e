"""A SIP-over-WebSocket client through a real sipgw to a SIPp backend over UDP, and back.

The client is ``WsPeer`` (hand-made RFC 6455 frames); the backend is SIPp standing in for
Asterisk. What is checked is what each end sees on the wire.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.sip.address import parse_name_addr
from sipgw.tools.process import SipgwProcess
from tests.integration.sipgw_process import build_request, build_response
from tests.integration.sipp import LOOPBACK, SippRunner, free_port
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration
_calls = itertools.count(1)


class WsSipgw(SipgwProcess):
    """The test sipgw with a WebSocket listener on its own port as well."""

    def __init__(self, workdir: Path, *, ws_port: int, **options) -> None:
        super().__init__(workdir, **options)
        self.ws_port = ws_port

    @property
    def ws_address(self) -> str:
        return f"{LOOPBACK}:{self.ws_port}"

    def config_text(self, **kw) -> str:
        text = super().config_text(**kw)
        return text.replace("ws = []\n", f'ws = ["{self.ws_address}"]\n', 1)


@pytest.fixture
def ws_sipgw(tmp_path: Path) -> Iterator:
    started: list[WsSipgw] = []

    def start(backend: str) -> WsSipgw:
        gw = WsSipgw(tmp_path / f"sipgw-ws-{len(started) + 1}", ws_port=free_port("tcp"),
                     backend=backend)
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


def values(message, name: str) -> list[str]:
    out = []
    for line in message.headers(name):
        out += [v.strip() for v in line.split(",")]
    return out


def unsigned(record_routes: list[str]) -> list[str]:
    """Record-Route values without the MAC each carries (``;sg=`` and 16 hex digits)."""
    for rr in record_routes:
        assert re.search(r";sg=[0-9a-f]{16}>$", rr), f"{rr} is not signed"
    return [re.sub(r";sg=[0-9a-f]{16}>$", ">", rr) for rr in record_routes]


def test_a_websocket_client_calls_a_udp_backend_which_hangs_up_through_sipgw(
    sipp: SippRunner, ws_sipgw
) -> None:
    uas = sipp.uas("uas_bye_from_callee.xml", transport="udp", timeout=10, pause_ms=100)
    gw = ws_sipgw(uas.address)
    with WsPeer(gw.ws_address) as ws:
        assert ws.status == 101
        call_id = f"ws-call-{next(_calls)}@{LOOPBACK}"
        body = f"v=0\r\no=- 1 1 IN IP4 {LOOPBACK}\r\ns=-\r\nc=IN IP4 {LOOPBACK}\r\nt=0 0\r\n"
        ws.send(build_request("INVITE", f"sip:service@{uas.address}", peer=ws, call_id=call_id,
                              branch="z9hG4bKws-inv", body=body))
        ws.expect("100", timeout=5)
        ok = ws.expect("200", method="INVITE", timeout=5)
        # The route set the client learns: sipgw's WS side first, then its UDP side.
        rr = values(ok, "Record-Route")
        # (Its UDP side toward the backend: the address of its own socket.)
        assert unsigned(rr) == [f"<sip:{gw.backend_address};lr;r2=on>",
                                f"<sip:{gw.ws_address};transport=ws;lr;r2=on>"]
        contact = parse_name_addr(ok.header("Contact")).uri
        ws.send(build_request(
            "ACK", str(contact), peer=ws, call_id=call_id, branch="z9hG4bKws-ack",
            to=ok.header("To"), headers=[f"Route: {r}" for r in reversed(rr)],
        ))  # fmt: skip
        bye = ws.expect("BYE", timeout=5)
        # handle_ruri_alias: the alias that brought the BYE here is gone from its R-URI.
        assert bye.start_line == f"BYE sip:raw@{ws.address};transport=ws SIP/2.0"
        assert bye.header("Route") is None
        ws.send(build_response(bye, 200, "OK"))
        assert uas.wait() == 0, uas.describe()

    invite = next(m for m in uas.messages() if m.direction == "received" and m.kind == "INVITE")
    assert unsigned(values(invite, "Record-Route")) == [
        f"<sip:{gw.backend_address};lr;r2=on>", f"<sip:{gw.ws_address};transport=ws;lr;r2=on>"]
    alias = parse_name_addr(invite.header("Contact")).uri.param("alias")
    assert re.fullmatch(rf"{LOOPBACK}~{ws.port}~5~[0-9a-f]{{16}}", alias)  # signed
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("sent", "200"),
        ("received", "ACK"), ("sent", "BYE"), ("received", "200"),
    ]  # fmt: skip


def test_a_bad_handshake_over_a_real_socket_gets_426_and_sipgw_keeps_serving(
    sipp: SippRunner, ws_sipgw
) -> None:
    uas = sipp.uas("uas_options.xml", transport="udp", timeout=10)
    gw = ws_sipgw(uas.address)
    with WsPeer(gw.ws_address, version="8") as old:
        assert old.status == 426
        assert old.reader.header("Sec-WebSocket-Version") == "13"
    with WsPeer(gw.ws_address, protocol=None) as nosip:
        assert nosip.status == 400
    with WsPeer(gw.ws_address) as good:
        assert good.status == 101
        good.send(build_request("OPTIONS", f"sip:{gw.ws_address};transport=ws", peer=good,
                                call_id="ws-opt@x", branch="z9hG4bKws-opt"))
        assert good.expect("200", timeout=5).header("Call-ID") == "ws-opt@x"


def test_a_registered_websocket_client_is_reached_by_its_path_and_gets_430_once_gone(
    sipp: SippRunner, ws_sipgw
) -> None:
    uas = sipp.uas("uas_register_then_invite.xml", transport="udp", timeout=10)
    gw = ws_sipgw(uas.address)
    with WsPeer(gw.ws_address) as ws:
        assert ws.status == 101
        ws.send(build_request(
            "REGISTER", f"sip:{LOOPBACK}", peer=ws, call_id=f"ws-reg-{next(_calls)}@test",
            branch="z9hG4bKws-reg", to="<sip:raw@example.com>",
            headers=["Supported: path, outbound", "Expires: 600"],
        ).replace(b"transport=ws>", b'transport=ws>;reg-id=1;+sip.instance="<urn:uuid:1>"'))
        ws.expect("200", method="REGISTER", timeout=5)
        invite = ws.expect("INVITE", timeout=5)
        # By the Path: our Route consumed, the Request-URI as registered (alias removed).
        assert invite.header("Route") is None
        assert invite.start_line == f"INVITE sip:raw@{ws.address};transport=ws SIP/2.0"
        ws.send(build_response(invite, 486, "Busy Here", to_tag="busy"))
    # The connection is gone: the backend's next INVITE by the same Path gets 430 at once.
    assert uas.wait() == 0, uas.describe()
    flow = [(m.direction, m.kind) for m in uas.messages()]
    assert flow[-2:] == [("received", "430"), ("sent", "ACK")]
    register = next(m for m in uas.messages() if m.kind == "REGISTER")
    assert register.header("Path").endswith(";lr;ob>")
