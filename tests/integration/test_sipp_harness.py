"""The SIPp harness and scenarios, proven SIPp against SIPp with nothing in between.

Later integration tests put sipgw between the same caller and callee scenarios; these
tests pin down what each scenario sends and expects when the path is a plain wire.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.integration.sipp import (
    LOOPBACK,
    SippMessage,
    SippProcess,
    SippRunner,
    assert_all_calls_succeeded,
    first,
    free_port,
    parse_message_trace,
    uri_of,
)

pytestmark = pytest.mark.integration

TRANSPORTS = ["udp", "tcp"]


# --- the scenarios, SIPp caller to SIPp callee -------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_reaches_the_callee_untouched_and_ends_with_the_callers_bye(
    sipp: SippRunner, transport: str
) -> None:
    uas = sipp.uas("uas_call.xml", transport=transport)
    uac = sipp.uac("uac_call.xml", remote=uas.address, transport=transport)

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("received", "200"),
        ("sent", "ACK"), ("sent", "BYE"), ("received", "200"),
    ]  # fmt: skip
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("sent", "200"),
        ("received", "ACK"), ("received", "BYE"), ("sent", "200"),
    ]  # fmt: skip
    sent_invite = first(uac.messages(), "sent", "INVITE")
    received_invite = first(uas.messages(), "received", "INVITE")
    assert received_invite.text == sent_invite.text
    assert received_invite.header("X-Sipgw-Test") == "keep-me"
    assert received_invite.header("Route") is None
    assert received_invite.start_line == f"INVITE sip:service@{uas.address} SIP/2.0"
    assert "m=audio " in received_invite.body
    # ACK and BYE follow the dialog: the callee's Contact from its 200 is their target.
    contact = uri_of(first(uac.messages(), "received", "200").header("Contact") or "")
    assert first(uac.messages(), "sent", "BYE").start_line == f"BYE {contact} SIP/2.0"
    assert first(uac.messages(), "sent", "ACK").start_line == f"ACK {contact} SIP/2.0"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_is_answered_200_with_the_contact_echoed(sipp: SippRunner, transport: str) -> None:
    uas = sipp.uas("uas_register.xml", transport=transport)
    uac = sipp.uac("uac_register.xml", remote=uas.address, transport=transport, service="5001")

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [("sent", "REGISTER"), ("received", "200")]
    assert uas.flow() == [("received", "REGISTER"), ("sent", "200")]
    register = first(uas.messages(), "received", "REGISTER")
    assert register.start_line == f"REGISTER sip:{uas.address} SIP/2.0"
    assert uri_of(register.header("To") or "") == f"sip:5001@{uas.address}"
    ok = first(uac.messages(), "received", "200")
    assert ok.header("Contact") == register.header("Contact")
    assert ok.header("Path") is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_options_is_answered_200(sipp: SippRunner, transport: str) -> None:
    uas = sipp.uas("uas_options.xml", transport=transport)
    uac = sipp.uac("uac_options.xml", remote=uas.address, transport=transport)

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [("sent", "OPTIONS"), ("received", "200")]
    assert uas.flow() == [("received", "OPTIONS"), ("sent", "200")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_while_ringing_gets_200_then_487_which_is_acknowledged(
    sipp: SippRunner, transport: str
) -> None:
    uas = sipp.uas("uas_cancel.xml", transport=transport)
    uac = sipp.uac("uac_cancel.xml", remote=uas.address, transport=transport)

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("sent", "CANCEL"),
        ("received", "200"), ("received", "487"), ("sent", "ACK"),
    ]  # fmt: skip
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("received", "CANCEL"),
        ("sent", "200"), ("sent", "487"), ("received", "ACK"),
    ]  # fmt: skip
    messages = uac.messages()
    invite_via = first(messages, "sent", "INVITE").header("Via")
    # RFC 3261 §9.1 and §17.1.1.3: CANCEL and the ACK of a non-2xx share the INVITE's branch.
    assert first(messages, "sent", "CANCEL").header("Via") == invite_via
    assert first(messages, "sent", "ACK").header("Via") == invite_via
    assert first(messages, "received", "200").method == "CANCEL"
    terminated = first(messages, "received", "487")
    assert terminated.method == "INVITE"
    assert terminated.headers("Via") == [invite_via]
    assert first(messages, "sent", "ACK").header("To") == terminated.header("To")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reinvite_in_the_dialog_is_answered_and_acknowledged(
    sipp: SippRunner, transport: str
) -> None:
    uas = sipp.uas("uas_reinvite.xml", transport=transport)
    uac = sipp.uac("uac_reinvite.xml", remote=uas.address, transport=transport, pause_ms=100)

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("received", "200"),
        ("sent", "ACK"), ("sent", "INVITE"), ("received", "200"), ("sent", "ACK"),
        ("sent", "BYE"), ("received", "200"),
    ]  # fmt: skip
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("sent", "200"),
        ("received", "ACK"), ("received", "INVITE"), ("sent", "200"), ("received", "ACK"),
        ("received", "BYE"), ("sent", "200"),
    ]  # fmt: skip
    invites = [m for m in uas.messages() if m.direction == "received" and m.kind == "INVITE"]
    ok = first(uac.messages(), "received", "200")
    assert invites[1].header("CSeq") == "2 INVITE"
    assert invites[1].header("To") == ok.header("To")
    assert invites[1].start_line == f"INVITE {uri_of(ok.header('Contact') or '')} SIP/2.0"
    assert "a=sendonly" in invites[1].body


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_callee_hangs_up_and_the_caller_answers_its_bye(sipp: SippRunner, transport: str) -> None:
    uas = sipp.uas("uas_bye_from_callee.xml", transport=transport, pause_ms=100)
    uac = sipp.uac("uac_call_callee_hangs_up.xml", remote=uas.address, transport=transport)

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("received", "200"),
        ("sent", "ACK"), ("received", "BYE"), ("sent", "200"),
    ]  # fmt: skip
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("sent", "200"),
        ("received", "ACK"), ("sent", "BYE"), ("received", "200"),
    ]  # fmt: skip
    invite = first(uac.messages(), "sent", "INVITE")
    bye = first(uac.messages(), "received", "BYE")
    # RFC 3261 §12.2.1.1: the callee's request has the dialog's identities swapped.
    assert bye.header("To") == invite.header("From")
    assert bye.header("From") == first(uac.messages(), "received", "200").header("To")
    assert bye.start_line == f"BYE {uri_of(invite.header('Contact') or '')} SIP/2.0"
    assert bye.header("Call-ID") == invite.header("Call-ID")


def test_several_calls_at_a_rate_all_succeed(sipp: SippRunner) -> None:
    uas = sipp.uas("uas_call.xml", calls=5)
    uac = sipp.uac("uac_call.xml", remote=uas.address, calls=5, rate=50, pause_ms=50)

    assert_all_calls_succeeded(uac, uas, calls=5)
    call_ids = {m.header("Call-ID") for m in uas.messages() if m.kind == "INVITE"}
    assert len(call_ids) == 5


def test_first_invite_lost_is_answered_when_the_caller_retransmits(sipp: SippRunner) -> None:
    uas = sipp.uas("uas_drop_first_invite.xml", retransmissions=False)
    uac = sipp.uac("uac_call.xml", remote=uas.address)

    assert_all_calls_succeeded(uac, uas)
    assert uas.flow(retransmissions=True)[:3] == [
        ("received", "INVITE"),
        ("received", "INVITE"),
        ("sent", "100"),
    ]
    invites = [m for m in uas.messages() if m.kind == "INVITE"]
    assert invites[0] == invites[1]
    assert uac.stats().retransmissions >= 1


# --- the callee as a proxy sees it, driven from a raw UDP socket -----------------------


class RawUdpPeer:
    """A UDP socket on loopback that sends hand-written SIP and waits for replies."""

    def __init__(self, remote: str) -> None:
        host, port = remote.rsplit(":", 1)
        self.remote = (host, int(port))
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((LOOPBACK, free_port("udp")))
        self.port = self.socket.getsockname()[1]
        self.address = f"{LOOPBACK}:{self.port}"

    def send(self, text: str) -> None:
        self.socket.sendto(text.encode(), self.remote)

    def expect(self, kind: str, *, method: str = "INVITE", timeout: float = 3.0) -> SippMessage:
        """The next message that is ``kind`` (a method, or a status for ``method``)."""
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(65535)
            except TimeoutError:
                break
            message = SippMessage("received", data.decode())
            if message.kind == kind and message.method == method:
                return message
            seen.append(message.start_line)
        raise AssertionError(f"no {kind} for {method} within {timeout:g}s; saw {seen}")

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> RawUdpPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def request(
    method: str, uri: str, *, vias: list[str], to: str, cseq: int, peer: RawUdpPeer, body: str = ""
) -> str:
    lines = [f"{method} {uri} SIP/2.0"]
    lines += [f"Via: SIP/2.0/UDP {via}" for via in vias]
    lines += [
        f"From: <sip:proxy@{peer.address}>;tag=raw-from-tag",
        f"To: {to}",
        "Call-ID: raw-call@127.0.0.1",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:proxy@{peer.address}>",
        "Max-Forwards: 69",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


SDP = (
    "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 0\r\n"
)


@pytest.mark.parametrize("retransmissions", [True, False], ids=["sipp-retransmits", "sipp-nr"])
def test_callee_answers_an_invite_arriving_again_after_its_200_and_the_call_goes_on(
    sipp: SippRunner, retransmissions: bool
) -> None:
    # A proxy retransmitting the INVITE, or relaying the caller's copy: SIPp 3.6.1 on its
    # own aborts the call ("expecting ACK, received INVITE"); the scenario answers the copy
    # with the 200 again, whether SIPp's retransmissions are on or off (-nr).
    uas = sipp.uas("uas_call.xml", retransmissions=retransmissions)
    with RawUdpPeer(uas.address) as peer:
        uri = f"sip:service@{uas.address}"
        via = f"{peer.address};branch=z9hG4bK-raw-invite"
        invite = request("INVITE", uri, vias=[via], to=f"<{uri}>", cseq=1, peer=peer, body=SDP)
        peer.send(invite)
        ok = peer.expect("200")
        peer.send(invite)
        again = peer.expect("200")
        assert again.header("To") == ok.header("To")
        to = ok.header("To") or ""
        peer.send(
            request(
                "ACK",
                uri,
                vias=[f"{peer.address};branch=z9hG4bK-raw-ack"],
                to=to,
                cseq=1,
                peer=peer,
            )
        )
        peer.send(
            request(
                "BYE",
                uri,
                vias=[f"{peer.address};branch=z9hG4bK-raw-bye"],
                to=to,
                cseq=2,
                peer=peer,
            )
        )
        peer.expect("200", method="BYE")

    assert uas.wait() == 0, uas.describe()


def test_callee_resends_its_200_until_the_ack_comes(sipp: SippRunner) -> None:
    uas = sipp.uas("uas_call.xml")
    with RawUdpPeer(uas.address) as peer:
        uri = f"sip:service@{uas.address}"
        via = f"{peer.address};branch=z9hG4bK-raw-invite"
        peer.send(request("INVITE", uri, vias=[via], to=f"<{uri}>", cseq=1, peer=peer, body=SDP))
        ok = peer.expect("200")
        again = peer.expect("200")  # nothing sent meanwhile: the ACK is "lost"
        assert again.text == ok.text
        to = ok.header("To") or ""
        peer.send(
            request(
                "ACK",
                uri,
                vias=[f"{peer.address};branch=z9hG4bK-raw-ack"],
                to=to,
                cseq=1,
                peer=peer,
            )
        )
        peer.send(
            request(
                "BYE",
                uri,
                vias=[f"{peer.address};branch=z9hG4bK-raw-bye"],
                to=to,
                cseq=2,
                peer=peer,
            )
        )
        peer.expect("200", method="BYE")

    assert uas.wait() == 0, uas.describe()
    assert uas.stats().successful == 1


def test_callee_487_carries_every_via_of_the_invite_when_the_cancel_has_one(
    sipp: SippRunner,
) -> None:
    # A proxy's CANCEL has only the proxy's Via (RFC 3261 §9.1); the INVITE it forwarded
    # had the proxy's and the caller's, and the 487 must too.
    uas = sipp.uas("uas_cancel.xml")
    caller_port = free_port("udp")
    with RawUdpPeer(uas.address) as peer:
        uri = f"sip:service@{uas.address}"
        vias = [
            f"{peer.address};branch=z9hG4bK-raw-proxy;rport",
            f"{LOOPBACK}:{caller_port};branch=z9hG4bK-raw-caller",
        ]
        peer.send(request("INVITE", uri, vias=vias, to=f"<{uri}>", cseq=7, peer=peer, body=SDP))
        ringing = peer.expect("180")
        peer.send(request("CANCEL", uri, vias=vias[:1], to=f"<{uri}>", cseq=7, peer=peer))
        cancelled = peer.expect("200", method="CANCEL")
        terminated = peer.expect("487")
        peer.send(
            request("ACK", uri, vias=vias[:1], to=terminated.header("To") or "", cseq=7, peer=peer)
        )

    assert uas.wait() == 0, uas.describe()
    assert cancelled.headers("Via") == [f"SIP/2.0/UDP {vias[0]}"]
    assert terminated.headers("Via") == [f"SIP/2.0/UDP {via}" for via in vias]
    assert terminated.header("CSeq") == "7 INVITE"
    assert terminated.header("To") == ringing.header("To")


# --- the harness itself -------------------------------------------------------------------


def test_free_port_is_free_for_udp_and_tcp_and_never_handed_out_twice() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    for port in ports:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind((LOOPBACK, port))


def test_sipp_command_carries_every_option(tmp_path: Path) -> None:
    inf = tmp_path / "users.csv"
    process = SippProcess(
        "uac_register", workdir=tmp_path, remote="127.0.0.1:5060", transport="tcp", calls=3,
        rate=2.5, pause_ms=200, service="5001", keys={"user": "5001"}, inf=inf,
        retransmissions=False, timeout=7,
    )  # fmt: skip
    command = process.command()
    pairs = set(zip(command, command[1:], strict=False))
    for pair in [
        ("-t", "t1"), ("-m", "3"), ("-r", "2.5"), ("-d", "200"), ("-s", "5001"),
        ("-inf", str(inf)), ("-i", LOOPBACK), ("-p", str(process.port)), ("-ci", LOOPBACK),
        ("-cp", str(process.control_port)), ("-timeout", "7s"),
        ("-message_file", str(process.message_file)), ("-stf", str(process.stats_file)),
    ]:  # fmt: skip
        assert pair in pairs
    assert {
        "-bind_local",
        "-nostdin",
        "-nr",
        "-trace_msg",
        "-trace_stat",
        "-trace_err",
        "-timeout_error",
    } <= set(command)
    assert command[command.index("-key") : command.index("-key") + 3] == ["-key", "user", "5001"]
    assert command[-1] == "127.0.0.1:5060"


def test_a_load_generator_sipp_writes_no_message_trace_and_frequent_statistics(
        tmp_path: Path) -> None:
    command = SippProcess("uac_call", workdir=tmp_path, remote="127.0.0.1:5060",
                          trace_messages=False, stats_period=1).command()
    assert "-trace_msg" not in command and "-message_file" not in command
    assert command[command.index("-fd") + 1] == "1"


def test_message_trace_is_parsed_by_byte_count_even_when_a_body_looks_like_a_record() -> None:
    ok = "SIP/2.0 200 OK\r\n\r\nab"
    separator = "-" * 47
    tricky = f"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 48\r\n\r\n{separator}\n"
    data = (
        "----------------------------------------------- 2026-11-26 14:26:33.493348\n"
        f"UDP message sent ({len(tricky)} bytes):\n\n{tricky}\n"
        "----------------------------------------------- 2026-11-26 14:26:33.493607\n"
        "Ignoring provisional UDP message for transaction invite:\n\nSIP/2.0 180 Ringing\r\n\r\n\n"
        "----------------------------------------------- 2026-11-26 14:26:33.493607\n"
        f"TCP message received [{len(ok)}] bytes :\n\n{ok}\n"
    ).encode()
    assert parse_message_trace(data) == [
        SippMessage("sent", tricky),
        SippMessage("received", ok),
    ]
