"""A real sipgw, attacked as in the report that found the open relay: clients that are
neither trusted nor a backend, with no credentials, try to make sipgw send requests to a
victim (a UDP SIP server on 127.0.0.6, a TCP service standing in for a local Redis).

Nothing may reach a victim; requests other than ACK get 403 (404 with no Route of ours).
A genuine dialog, opened by the backend towards a client, still works, but cannot be aimed
elsewhere by rewriting its Request-URI.
"""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from tests.integration.sipgw_process import TcpPeer, UdpPeer, build_request, build_response
from tests.integration.sipp import free_port
from tests.integration.test_ws_sipp import WsSipgw
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration

METHODS = ("BYE", "ACK", "INVITE", "MESSAGE")
_ids = itertools.count(1)


class Victims:
    """A UDP SIP server on 127.0.0.6 and a TCP listener on 127.0.0.1 (a 'Redis')."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.6", 0))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", free_port("tcp")))
        self.tcp.listen(8)
        self.udp_address = f"127.0.0.6:{self.udp.getsockname()[1]}"
        self.tcp_uri = f"sip:127.0.0.1:{self.tcp.getsockname()[1]};transport=tcp"

    def reached(self) -> list[str]:
        """What reached either victim by now (waiting for nothing: the caller waited)."""
        got = []
        self.udp.setblocking(False)
        self.tcp.setblocking(False)
        try:
            while True:
                got.append(self.udp.recv(65535).decode("latin-1").split("\r\n")[0])
        except BlockingIOError:
            pass
        try:
            conn, _ = self.tcp.accept()
            conn.close()
            got.append("a TCP connection")
        except BlockingIOError:
            pass
        return got

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def rig(tmp_path: Path):
    backend = UdpPeer()
    victims = Victims()
    gw = WsSipgw(tmp_path / "sipgw", ws_port=free_port("tcp"), backend=backend.address,
                 auth=True, extra_toml=(
                     f'[subscribers]\nurl = "sqlite://{tmp_path}/state/subscribers.db"\n'
                     f'[state]\ndirectory = "{tmp_path}/state"\n'))
    gw.start()
    yield gw, backend, victims
    gw.stop()
    backend.close()
    victims.close()


def client(gw: WsSipgw, how: str):
    if how == "udp":
        return UdpPeer(gw.address)
    if how == "tcp":
        return TcpPeer(gw.address)
    return WsPeer(gw.ws_address)


def attack(peer, method: str, uri: str, route: str, *, to_tag: str = "2") -> bytes:
    n = next(_ids)
    return build_request(method, uri, peer=peer, call_id=f"attack-{n}", branch=f"z9hG4bKatt{n}",
                         from_tag="1", to=f"<{uri}>;tag={to_tag}",
                         cseq_method=method, headers=[f"Route: {route}"] if route else [],
                         body="hello", content_type="text/plain")


def answers(peer, expected: int) -> list[str]:
    """The statuses ``peer`` got, once ``expected`` of them came (or 3 s passed)."""
    got = [peer.receive(3.0) for _ in range(expected)]
    return [m.kind for m in got if m is not None]


@pytest.mark.parametrize("how", ["udp", "tcp", "ws"])
def test_forged_routes_from_clients_reach_no_victim(rig, how: str) -> None:
    gw, backend, victims = rig
    with client(gw, how) as peer:
        expected = []
        for method in METHODS:
            for uri, route in (
                (f"sip:victim@{victims.udp_address}", f"<sip:{gw.address};lr>"),  # loose
                (f"sip:{gw.address};lr", f"<sip:victim@{victims.udp_address}>"),  # strict
                (victims.tcp_uri, f"<sip:{gw.address};transport=tcp;lr>"),  # the 'Redis'
                (f"sip:victim@{victims.udp_address}", ""),  # no Route at all
            ):
                peer.send(attack(peer, method, uri, route))
                if method != "ACK":
                    expected.append("404" if not route else "403")
        assert answers(peer, len(expected)) == expected
        # Anything sipgw had relayed would have arrived by the time it answered the last.
        assert victims.reached() == []
        assert backend.collect(0.2) == []
    log = gw.log_text()
    assert "not relayed: its Route is not one sipgw wrote for this dialog" in log


def test_a_genuine_dialog_works_and_cannot_be_aimed_elsewhere(rig) -> None:
    gw, backend, victims = rig
    with UdpPeer(gw.address) as phone:
        # The backend (Asterisk) calls the phone through sipgw, which record-routes.
        invite = build_request("INVITE", f"sip:raw@{phone.address}", peer=backend,
                               call_id="genuine-1", branch="z9hG4bKgen1", from_tag="asterisk")
        backend.send(invite, to=gw.address)
        got = phone.expect("INVITE", timeout=5)
        routes = [v for v in got.headers("Record-Route")]
        assert routes and all(";sg=" in r for r in routes)
        phone.send(build_response(got, 200, "OK", to_tag="phone"))
        assert backend.expect("200", timeout=5)
        route_set = [f"Route: {r}" for r in routes]
        backend_contact = f"sip:asterisk@{backend.address}"

        def in_dialog(method: str, uri: str, n: int) -> bytes:
            return build_request(method, uri, peer=phone, call_id="genuine-1",
                                 branch=f"z9hG4bKgen-{method}-{n}", from_tag="phone",
                                 to=f"<sip:asterisk@{backend.address}>;tag=asterisk",
                                 cseq=n, headers=route_set)

        # Along its route set to the backend's Contact: relayed.
        phone.send(in_dialog("MESSAGE", backend_contact, 2))
        assert backend.expect("MESSAGE", timeout=5).header("Route") is None
        # The same route set aimed at the 'Redis' or the victim: refused.
        phone.send(in_dialog("MESSAGE", victims.tcp_uri, 3))
        phone.send(in_dialog("BYE", f"sip:v@{victims.udp_address}", 4))
        forged_alias = f"sip:v@x.invalid;alias={victims.udp_address.replace(':', '~')}~1"
        phone.send(in_dialog("INFO", forged_alias, 5))
        assert answers(phone, 3) == ["403", "403", "403"]
        assert victims.reached() == []
        # And the genuine BYE still ends the call.
        phone.send(in_dialog("BYE", backend_contact, 6))
        assert backend.expect("BYE", timeout=5)
