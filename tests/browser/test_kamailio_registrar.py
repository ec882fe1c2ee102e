"""``kamailio/registrar.cfg``, the Asterisk stand-in that sits behind sipgw, proven over UDP
with sipgw's part played by a socket: it keeps a registration with its Path, routes a call
for the user by that Path, and routes the dialog's requests back along the route set.

These are the behaviours the sipgw browser tests rely on (RFC 3327; RFC 3261 §16.12).
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator

import pytest

from sipgw.tools.kamailio import KamailioProcess
from tests.browser.kamailio_process import KamailioRunner
from tests.integration.sipp import LOOPBACK

pytestmark = pytest.mark.integration

DOMAIN = "sipgw.test"
# JsSIP's unroutable contact, with the alias an edge proxy adds (Kamailio's format).
CONTACT = "sip:k2v9d1ab@q8x7rj3m.invalid;alias=127.0.0.1~40312~5;transport=ws"


@pytest.fixture
def registrar(kamailio: KamailioRunner) -> KamailioProcess:
    return kamailio("registrar.cfg")


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(5.0)
    return sock


@pytest.fixture
def edge() -> Iterator[socket.socket]:
    """sipgw's UDP side toward the backend."""
    with udp_socket() as sock:
        yield sock


@pytest.fixture
def caller() -> Iterator[socket.socket]:
    with udp_socket() as sock:
        yield sock


def hostport(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


def request(
    sock: socket.socket,
    method: str,
    ruri: str,
    headers: list[str],
    cseq: int,
    call_id: str,
    from_tag: str,
    to: str,
    to_tag: str | None = None,
) -> str:
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {hostport(sock)};branch=z9hG4bK{uuid.uuid4().hex};rport",
        "Max-Forwards: 70",
        f"From: <sip:{'alice' if method != 'REGISTER' else to}@{DOMAIN}>;tag={from_tag}",
        f"To: <sip:{to}@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *headers,
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def receive(sock: socket.socket, start: str) -> str:
    """The next message whose start line begins with ``start``, skipping 100 Trying."""
    while True:
        data, _ = sock.recvfrom(65535)
        text = data.decode()
        if text.startswith("SIP/2.0 100 "):
            continue
        assert text.startswith(start), f"wanted {start!r}, got:\n{text}"
        return text


def headers(message: str, name: str) -> list[str]:
    head = message.split("\r\n\r\n", 1)[0]
    values = []
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            values += [v.strip() for v in re.split(r",(?=\s*<)", value)]
    return values


def reply_to(message: str, status: str, extra: list[str], to_tag: str) -> str:
    """A UAS reply: Via, From, Call-ID, CSeq copied, a To tag added."""
    copied = [f"Via: {via}" for via in headers(message, "Via")]
    lines = [f"SIP/2.0 {status}", *copied]
    for name in ("From", "Call-ID", "CSeq"):
        lines.append(f"{name}: {headers(message, name)[0]}")
    to = headers(message, "To")[0]
    lines.append(f"To: {to}" if ";tag=" in to else f"To: {to};tag={to_tag}")
    lines += extra
    lines.append("Content-Length: 0")
    return "\r\n".join(lines) + "\r\n\r\n"


def register(edge: socket.socket, registrar: KamailioProcess, supported: str) -> str:
    edge.sendto(request(edge, "REGISTER", f"sip:{DOMAIN}", [
        f"Path: <sip:{hostport(edge)};lr>",
        f"Supported: {supported}",
        f'Contact: <{CONTACT}>;+sip.instance="<urn:uuid:{uuid.uuid4()}>";reg-id=1;expires=600',
    ], 1, uuid.uuid4().hex, uuid.uuid4().hex[:8], "bob").encode(), registrar.address)
    return receive(edge, "SIP/2.0 ")


def test_a_register_with_path_is_kept_with_its_path_and_the_path_is_echoed(
    registrar: KamailioProcess, edge: socket.socket
) -> None:
    reply = register(edge, registrar, "path, gruu, outbound")
    assert reply.startswith("SIP/2.0 200 ")
    assert headers(reply, "Path") == [f"<sip:{hostport(edge)};lr>"]
    (contact,) = headers(reply, "Contact")
    assert contact.startswith(f"<{CONTACT}>")
    # No GRUU: the browser keeps using its own contact.
    assert "pub-gruu" not in contact and "temp-gruu" not in contact


def test_a_register_with_path_but_no_supported_path_is_refused_with_420(
    registrar: KamailioProcess, edge: socket.socket
) -> None:
    reply = register(edge, registrar, "outbound")
    assert reply.startswith("SIP/2.0 420 ")
    assert headers(reply, "Unsupported") == ["path"]


def test_a_call_to_a_registered_user_goes_by_its_path_and_the_dialog_comes_back_the_same_way(
    registrar: KamailioProcess, edge: socket.socket, caller: socket.socket
) -> None:
    assert register(edge, registrar, "path").startswith("SIP/2.0 200 ")

    call_id, from_tag = uuid.uuid4().hex, uuid.uuid4().hex[:8]
    caller.sendto(
        request(
            caller,
            "INVITE",
            f"sip:bob@{DOMAIN}",
            [f"Contact: <sip:alice@{hostport(caller)}>"],
            1,
            call_id,
            from_tag,
            "bob",
        ).encode(),
        registrar.address,
    )

    # By the Path: to the edge, for the binding's contact, with the Path as its Route.
    invite = receive(edge, "INVITE ")
    assert invite.split(" ")[1] == CONTACT
    assert headers(invite, "Route") == [f"<sip:{hostport(edge)};lr>"]
    (backend_rr,) = headers(invite, "Record-Route")
    assert f"{LOOPBACK}:{registrar.udp_port}" in backend_rr

    # The edge record-routes too, and the browser answers.
    edge_rr = f"<sip:{hostport(edge)};lr>"
    edge.sendto(
        reply_to(
            invite,
            "200 OK",
            [f"Record-Route: {edge_rr}, {backend_rr}", f"Contact: <{CONTACT}>"],
            "b0b",
        ).encode(),
        registrar.address,
    )
    ok = receive(caller, "SIP/2.0 200 ")
    assert headers(ok, "Record-Route") == [edge_rr, backend_rr]

    # In the dialog, the caller's route set is the Record-Route reversed (RFC 3261 §12.1.2):
    # the backend takes itself off and sends on to the edge, whatever loose_route() says.
    route = [f"Route: {backend_rr}", f"Route: {edge_rr}"]
    for cseq, method in ((1, "ACK"), (2, "BYE")):
        caller.sendto(
            request(caller, method, CONTACT, route, cseq, call_id, from_tag, "bob", "b0b").encode(),
            registrar.address,
        )
        forwarded = receive(edge, f"{method} ")
        assert forwarded.split(" ")[1] == CONTACT
        assert headers(forwarded, "Route") == [edge_rr]
    edge.sendto(reply_to(forwarded, "200 OK", [], "b0b").encode(), registrar.address)
    assert headers(receive(caller, "SIP/2.0 200 "), "CSeq") == ["2 BYE"]


def test_a_call_to_a_user_nobody_registered_is_answered_404(
    registrar: KamailioProcess, caller: socket.socket
) -> None:
    caller.sendto(
        request(
            caller,
            "INVITE",
            f"sip:nobody@{DOMAIN}",
            [f"Contact: <sip:alice@{hostport(caller)}>"],
            1,
            uuid.uuid4().hex,
            "a1",
            "nobody",
        ).encode(),
        registrar.address,
    )
    assert receive(caller, "SIP/2.0 ").startswith("SIP/2.0 404 ")
