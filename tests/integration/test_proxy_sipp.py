"""The foundation's acceptance tests: SIPp caller → sipgw → SIPp backend, all real processes.

sipgw runs as ``python -m sipgw serve`` (``sipgw.tools.process``), the peers are the SIPp
scenarios proven against each other in ``test_sipp_harness.py``, or raw sockets where a
test needs to control every byte or every moment (a retransmission, a silent backend, a
malformed datagram). What each test checks is what the peers saw on the wire: RFC 3261
§16.6 (our Via on top, Max-Forwards less one, Record-Route), §16.7 (our Via removed from
responses, 100 never relayed), §16.4 and §16.12 (our Route consumed), §16.10 (CANCEL),
§17 (retransmissions, timer B).
"""

from __future__ import annotations

import random
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess, backend_uri, config_toml, run_cli
from tests.integration.sipgw_process import (
    SipgwRunner,
    TcpPeer,
    UdpPeer,
    build_request,
    build_response,
    collect_from_many,
)
from tests.integration.sipp import (
    LOOPBACK,
    SippMessage,
    SippProcess,
    SippRunner,
    all_of,
    assert_all_calls_succeeded,
    first,
    free_port,
    uri_of,
)

pytestmark = pytest.mark.integration

TRANSPORTS = ["udp", "tcp"]
TORTURE_INVALID = Path(__file__).resolve().parents[1] / "data" / "torture" / "invalid"
# RFC 4475 "invalid" messages whose flaw is in a header a proxy does not act on.
FORWARDABLE_TORTURE = {"baddate.dat", "regbadct.dat"}
SDP = (
    "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


# --- what the peers saw ----------------------------------------------------------------


def values(message: SippMessage, name: str) -> list[str]:
    """Every value of a comma-list header (Via, Route, Record-Route), split at top-level
    commas: ``A, B`` on one line and A and B on two lines read the same."""
    out = []
    for line in message.headers(name):
        depth, quoted, start = 0, False, 0
        for i, c in enumerate(line):
            if c == '"':
                quoted = not quoted
            elif not quoted and c == "<":
                depth += 1
            elif not quoted and c == ">":
                depth -= 1
            elif not quoted and depth == 0 and c == ",":
                out.append(line[start:i].strip())
                start = i + 1
        out.append(line[start:].strip())
    return out


# The head of one received record in SIPp's -trace_msg file (see sipp.py): its time, and
# the first word of the message.
_RECEIVED_RECORD = re.compile(
    rb"^-{47} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n"
    rb"[A-Z]+ message received \[\d+\] bytes ?:\n\n(\S+) ",
    re.MULTILINE,
)


def received_times(process: SippProcess, method: str) -> list[float]:
    """When SIPp received each ``method`` request, in seconds (its own clock)."""
    return [
        datetime.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        for stamp, word in _RECEIVED_RECORD.findall(process.message_file.read_bytes())
        if word == method.encode()
    ]


def call_id(data: bytes) -> str | None:
    return SippMessage("sent", data.decode("latin-1")).header("Call-ID")


def branch_of(via: str) -> str:
    match = re.search(r";\s*branch=([^;,\s]+)", via)
    assert match, f"no branch in Via {via!r}"
    return match[1]


def assert_our_via(via: str, address: str, transport: str) -> None:
    """RFC 3261 §16.6 step 8: sipgw's own host:port (``address``: toward a backend its own
    socket's, ``gw.backend_address``; toward a client its listener's), and a branch with
    the magic cookie."""
    sent_by = f"SIP/2.0/{transport.upper()} {address};"
    assert via.startswith(sent_by), f"top Via {via!r} is not sipgw's ({sent_by}...)"
    assert branch_of(via).startswith("z9hG4bK"), via


def names_sipgw(entry: str, gw: SipgwProcess) -> bool:
    """A Route or Record-Route entry whose URI is sipgw's host:port: its listener's (the
    clients' side) or its own socket's (the backends' side)."""
    uri = uri_of(entry)
    ours = "|".join(re.escape(a) for a in (gw.address, gw.backend_address))
    return re.match(rf"sips?:(?:[^@;>]*@)?(?:{ours})(?:[;>]|$)", uri) is not None


def assert_record_routed_by(message: SippMessage, gw: SipgwProcess) -> list[str]:
    """RFC 3261 §16.6 step 4: sipgw's Record-Route, loose routing (``;lr``, §19.1.1)."""
    entries = values(message, "Record-Route")
    assert entries, f"no Record-Route in\n{message.text}"
    for entry in entries:
        assert names_sipgw(entry, gw), f"Record-Route {entry!r} does not name sipgw"
        assert ";lr" in uri_of(entry), f"Record-Route {entry!r} is not loose (;lr)"
    return entries


def assert_route_consumed(message: SippMessage, gw: SipgwProcess) -> None:
    """RFC 3261 §16.4: sipgw removes the Route entries naming itself before relaying."""
    mine = [r for r in values(message, "Route") if names_sipgw(r, gw)]
    assert not mine, f"{message.start_line} still carries sipgw's Route {mine}"


def max_forwards(message: SippMessage) -> int:
    value = message.header("Max-Forwards")
    assert value is not None, f"no Max-Forwards in {message.start_line}"
    return int(value)


def start_call(
    sipp: SippRunner,
    sipgw: SipgwRunner,
    *,
    uas_scenario: str,
    uac_scenario: str,
    caller: str = "udp",
    backend: str = "udp",
    uas_options: dict | None = None,
    uac_options: dict | None = None,
) -> tuple[SippProcess, SipgwProcess, SippProcess]:
    """A SIPp backend, a sipgw relaying to it, and a SIPp caller sending to sipgw."""
    uas = sipp.uas(uas_scenario, transport=backend, timeout=10, **(uas_options or {}))
    gw = sipgw(backend=uas.address, transport=backend)
    uac = sipp.uac(
        uac_scenario, remote=gw.address, transport=caller, timeout=10, **(uac_options or {})
    )
    return uas, gw, uac


# --- REGISTER ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_reaches_the_backend_under_our_via_with_max_forwards_decremented(
    sipp: SippRunner, sipgw: SipgwRunner, transport: str
) -> None:
    uas, gw, uac = start_call(
        sipp, sipgw, uas_scenario="uas_register.xml", uac_scenario="uac_register.xml",
        caller=transport, uac_options={"service": "5001"},
    )  # fmt: skip

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [("sent", "REGISTER"), ("received", "200")]
    assert uas.flow() == [("received", "REGISTER"), ("sent", "200")]
    sent = first(uac.messages(), "sent", "REGISTER")
    register = first(uas.messages(), "received", "REGISTER")
    vias = values(register, "Via")
    assert_our_via(vias[0], gw.backend_address, "udp")
    assert vias[1:] == values(sent, "Via")  # the caller's Via, unchanged
    assert max_forwards(register) == max_forwards(sent) - 1
    assert register.header("Record-Route") is None  # REGISTER creates no dialog
    assert register.header("X-Sipgw-Test") == "keep-me"
    ok = first(uac.messages(), "received", "200")
    assert values(ok, "Via") == values(sent, "Via")  # ours removed (§16.7 step 3)
    assert ok.header("Contact") == sent.header("Contact")


# --- a call --------------------------------------------------------------------------------

CALL_LEGS = [
    pytest.param("udp", "udp", id="udp-caller-udp-backend"),
    pytest.param("tcp", "udp", id="tcp-caller-udp-backend"),
    pytest.param("udp", "tcp", id="udp-caller-tcp-backend"),
    pytest.param("tcp", "tcp", id="tcp-caller-tcp-backend"),
]


@pytest.mark.parametrize(("caller", "backend"), CALL_LEGS)
def test_call_is_relayed_record_routed_and_its_ack_and_bye_come_back_through_sipgw(
    sipp: SippRunner, sipgw: SipgwRunner, caller: str, backend: str
) -> None:
    uas, gw, uac = start_call(
        sipp, sipgw, uas_scenario="uas_call.xml", uac_scenario="uac_call.xml",
        caller=caller, backend=backend,
    )  # fmt: skip

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("received", "200"),
        ("sent", "ACK"), ("sent", "BYE"), ("received", "200"),
    ]  # fmt: skip
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("sent", "200"),
        ("received", "ACK"), ("received", "BYE"), ("sent", "200"),
    ]  # fmt: skip
    at_uac, at_uas = uac.messages(), uas.messages()
    sent = first(at_uac, "sent", "INVITE")
    invite = first(at_uas, "received", "INVITE")

    # What the callee got: our Via on top, the caller's below, our Record-Route, the
    # rest end to end.
    vias = values(invite, "Via")
    assert_our_via(vias[0], gw.backend_address, backend)
    assert vias[1:] == values(sent, "Via")
    record_route = assert_record_routed_by(invite, gw)
    if caller != backend:
        # RFC 5658: one entry per side when the transport changes.
        assert len(record_route) == 2 and all(";r2=on" in rr for rr in record_route)
    assert max_forwards(invite) == max_forwards(sent) - 1
    assert invite.header("X-Sipgw-Test") == "keep-me"
    assert invite.body == sent.body and invite.body.startswith("v=0")
    assert invite.header("Content-Length") == sent.header("Content-Length")
    assert invite.start_line == sent.start_line

    for method in ("ACK", "BYE"):
        request = first(at_uas, "received", method)
        assert_route_consumed(request, gw)
        assert_our_via(values(request, "Via")[0], gw.backend_address, backend)
        assert values(request, "Via")[1:] == values(first(at_uac, "sent", method), "Via")
        assert max_forwards(request) == max_forwards(first(at_uac, "sent", method)) - 1

    # What the caller got: sipgw's own 100, then the callee's 180 and 200 with exactly the
    # caller's Via (ours removed, §16.7 step 3) and the Record-Route.
    trying = first(at_uac, "received", "100")
    assert trying.header("Server") == "sipgw"
    assert values(trying, "Via") == values(sent, "Via")
    for status in ("180", "200"):
        response = first(at_uac, "received", status)
        assert values(response, "Via") == values(sent, "Via"), status
        assert values(response, "Record-Route") == record_route, status
    assert first(at_uac, "received", "200").body == first(at_uas, "sent", "200").body


# --- CANCEL --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_before_answer_gets_200_and_487_and_reaches_the_callee_on_the_invites_branch(
    sipp: SippRunner, sipgw: SipgwRunner, transport: str
) -> None:
    uas, gw, uac = start_call(
        sipp, sipgw, uas_scenario="uas_cancel.xml", uac_scenario="uac_cancel.xml",
        caller=transport,
    )  # fmt: skip

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("sent", "CANCEL"),
        ("received", "200"), ("received", "487"), ("sent", "ACK"),
    ]  # fmt: skip
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("received", "CANCEL"),
        ("sent", "200"), ("sent", "487"), ("received", "ACK"),
    ]  # fmt: skip
    at_uac, at_uas = uac.messages(), uas.messages()
    assert first(at_uac, "received", "200").method == "CANCEL"
    terminated = first(at_uac, "received", "487")
    assert terminated.method == "INVITE"
    assert values(terminated, "Via") == values(first(at_uac, "sent", "INVITE"), "Via")

    # RFC 3261 §9.1, §16.10: sipgw's CANCEL has one Via, with the branch of its INVITE.
    invite = first(at_uas, "received", "INVITE")
    cancel = first(at_uas, "received", "CANCEL")
    assert values(cancel, "Via") == values(invite, "Via")[:1]
    assert branch_of(values(cancel, "Via")[0]) == branch_of(values(invite, "Via")[0])
    assert cancel.header("CSeq") == f"{invite.header('CSeq').split()[0]} CANCEL"
    assert cancel.start_line.split()[1] == invite.start_line.split()[1]
    # The 487 is acknowledged hop by hop: sipgw's ACK, on the INVITE's branch (§17.1.1.3).
    ack = first(at_uas, "received", "ACK")
    assert values(ack, "Via") == values(invite, "Via")[:1]


# --- requests inside the dialog ------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reinvite_in_the_dialog_goes_through_sipgw_and_is_answered(
    sipp: SippRunner, sipgw: SipgwRunner, transport: str
) -> None:
    uas, gw, uac = start_call(
        sipp, sipgw, uas_scenario="uas_reinvite.xml", uac_scenario="uac_reinvite.xml",
        caller=transport, uac_options={"pause_ms": 100},
    )  # fmt: skip

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("received", "200"),
        ("sent", "ACK"), ("sent", "INVITE"), ("received", "100"), ("received", "200"),
        ("sent", "ACK"), ("sent", "BYE"), ("received", "200"),
    ]  # fmt: skip
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("sent", "200"),
        ("received", "ACK"), ("received", "INVITE"), ("sent", "200"), ("received", "ACK"),
        ("received", "BYE"), ("sent", "200"),
    ]  # fmt: skip
    at_uac, at_uas = uac.messages(), uas.messages()
    reinvite = all_of(at_uas, "received", "INVITE")[1]
    sent = all_of(at_uac, "sent", "INVITE")[1]
    assert reinvite.header("CSeq") == "2 INVITE"
    assert_route_consumed(reinvite, gw)
    assert_our_via(values(reinvite, "Via")[0], gw.backend_address, "udp")
    assert values(reinvite, "Via")[1:] == values(sent, "Via")
    assert max_forwards(reinvite) == max_forwards(sent) - 1
    assert reinvite.body == sent.body and "a=sendonly" in reinvite.body
    answer = [m for m in all_of(at_uac, "received", "200") if m.header("CSeq") == "2 INVITE"]
    assert answer and values(answer[0], "Via") == values(sent, "Via")
    assert "a=recvonly" in answer[0].body


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bye_from_the_callee_reaches_the_caller_with_sipgws_route_consumed(
    sipp: SippRunner, sipgw: SipgwRunner, transport: str
) -> None:
    uas, gw, uac = start_call(
        sipp, sipgw, uas_scenario="uas_bye_from_callee.xml",
        uac_scenario="uac_call_callee_hangs_up.xml", caller=transport,
        uas_options={"pause_ms": 100},
    )  # fmt: skip

    assert_all_calls_succeeded(uac, uas)
    assert uac.flow() == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("received", "200"),
        ("sent", "ACK"), ("received", "BYE"), ("sent", "200"),
    ]  # fmt: skip
    assert uas.flow() == [
        ("received", "INVITE"), ("sent", "100"), ("sent", "180"), ("sent", "200"),
        ("received", "ACK"), ("sent", "BYE"), ("received", "200"),
    ]  # fmt: skip
    at_uac, at_uas = uac.messages(), uas.messages()
    sent_bye = first(at_uas, "sent", "BYE")
    assert [r for r in values(sent_bye, "Route") if names_sipgw(r, gw)]  # it went via sipgw
    bye = first(at_uac, "received", "BYE")
    assert_route_consumed(bye, gw)
    assert_our_via(values(bye, "Via")[0], gw.address, transport)
    assert values(bye, "Via")[1:] == values(sent_bye, "Via")
    assert max_forwards(bye) == max_forwards(sent_bye) - 1
    contact = first(at_uac, "sent", "INVITE").header("Contact") or ""
    assert bye.start_line == f"BYE {uri_of(contact)} SIP/2.0"
    bye_ok = [m for m in all_of(at_uas, "received", "200") if m.method == "BYE"]
    assert bye_ok and values(bye_ok[0], "Via") == values(sent_bye, "Via")


# --- OPTIONS to sipgw itself ---------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_options_to_sipgw_itself_is_answered_200_with_allow_and_never_relayed(
    sipgw: SipgwRunner, transport: str
) -> None:
    with UdpPeer() as backend:
        gw = sipgw(backend=backend.address)
        with UdpPeer(gw.address) if transport == "udp" else TcpPeer(gw.address) as peer:
            peer.send(
                build_request(
                    "OPTIONS", f"sip:{gw.address}", peer=peer, call_id="options-self@test",
                    branch="z9hG4bK-options-self",
                )
            )  # fmt: skip
            ok = peer.expect("200", method="OPTIONS")
        relayed = backend.collect(0.3)

    allow = {m.strip() for m in (ok.header("Allow") or "").split(",")}
    assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"} <= allow
    assert values(ok, "Via") == [
        f"SIP/2.0/{transport.upper()} {peer.address};branch=z9hG4bK-options-self"
    ]
    assert ok.header("Call-ID") == "options-self@test"
    assert relayed == []


# --- UDP loss and retransmissions ------------------------------------------------------


def test_invite_lost_on_the_way_to_the_backend_is_retransmitted_by_sipgw_after_t1(
    sipp: SippRunner, sipgw: SipgwRunner
) -> None:
    uas, gw, uac = start_call(
        sipp, sipgw, uas_scenario="uas_drop_first_invite.xml", uac_scenario="uac_call.xml",
        uas_options={"retransmissions": False},
    )  # fmt: skip

    assert_all_calls_succeeded(uac, uas)
    assert uas.flow(retransmissions=True)[:3] == [
        ("received", "INVITE"), ("received", "INVITE"), ("sent", "100"),
    ]  # fmt: skip
    invites = all_of(uas.messages(), "received", "INVITE")
    # sipgw's retransmission (§17.1.1.2): byte for byte its first copy, its own branch.
    assert invites[0].text == invites[1].text
    assert_our_via(values(invites[0], "Via")[0], gw.backend_address, "udp")
    first_at, again_at = received_times(uas, "INVITE")[:2]
    assert again_at - first_at >= 0.4, "retransmitted before T1 (0.5 s)"
    # The caller saw one call: 100 from sipgw, then the answer.
    assert uac.flow()[:4] == [
        ("sent", "INVITE"), ("received", "100"), ("received", "180"), ("received", "200"),
    ]  # fmt: skip


def test_invite_sent_twice_gets_two_100_trying_and_reaches_the_backend_once(
    sipgw: SipgwRunner,
) -> None:
    # The backend is a hand-driven socket so that the test decides when it answers; T1 of
    # 2 s keeps sipgw's own retransmission (at T1) clear of the exchange.
    with UdpPeer() as backend:
        gw = sipgw(backend=backend.address, extra_toml="[timers]\nt1 = 2.0\n")
        with UdpPeer(gw.address) as caller:
            uri = f"sip:service@{gw.address}"
            invite = build_request(
                "INVITE", uri, peer=caller, call_id="twice@test", branch="z9hG4bK-twice",
                body=SDP,
            )  # fmt: skip
            caller.send(invite)
            trying = caller.expect("100")
            relayed = backend.expect("INVITE")
            caller.send(invite)  # the caller's retransmission (§17.1.1.2)
            trying_again = caller.expect("100")

            backend.send(build_response(relayed, 486, "Busy Here", to_tag="busy"), gw.address)
            busy = caller.expect("486")
            caller.send(
                build_request(
                    "ACK", uri, peer=caller, call_id="twice@test", branch="z9hG4bK-twice",
                    to=busy.header("To"), max_forwards=70,
                )
            )  # fmt: skip
            at_backend = [relayed, *backend.collect(0.5)]

    assert trying.text == trying_again.text  # answered again from the transaction
    assert trying.header("Server") == "sipgw"
    assert [m.kind for m in at_backend] == ["INVITE", "ACK"], [m.start_line for m in at_backend]
    ack = at_backend[1]
    # The ACK of a non-2xx is sipgw's own, on its INVITE's branch (§17.1.1.3); the
    # caller's ACK ended at sipgw.
    assert values(ack, "Via") == values(relayed, "Via")[:1]
    assert values(busy, "Via") == [f"SIP/2.0/UDP {caller.address};branch=z9hG4bK-twice"]


def test_invite_to_a_silent_backend_is_retransmitted_then_answered_408_after_timer_b(
    sipgw: SipgwRunner,
) -> None:
    with UdpPeer() as silent:
        gw = sipgw(backend=silent.address, extra_toml="[timers]\ntimer_b = 1.0\n")
        with UdpPeer(gw.address) as caller:
            uri = f"sip:service@{gw.address}"
            invite = build_request(
                "INVITE", uri, peer=caller, call_id="silent@test", branch="z9hG4bK-silent",
                body=SDP,
            )  # fmt: skip
            sent_at = time.monotonic()
            caller.send(invite)
            trying = caller.expect("100")
            timeout = caller.expect("408", method="INVITE", timeout=10.0)
            elapsed = time.monotonic() - sent_at
            caller.send(
                build_request(
                    "ACK", uri, peer=caller, call_id="silent@test", branch="z9hG4bK-silent",
                    to=timeout.header("To"),
                )
            )  # fmt: skip
        received = silent.collect(0.3)

    assert trying.header("Server") == "sipgw"
    # After timer B, not before; and by it, not by the default 32 s (the bound above
    # leaves a busy machine room).
    assert 0.9 <= elapsed <= 10.0, f"408 after {elapsed:.2f}s; timer B is 1.0s"
    assert values(timeout, "Via") == [f"SIP/2.0/UDP {caller.address};branch=z9hG4bK-silent"]
    invites = [m for m in received if m.kind == "INVITE"]
    assert len(invites) >= 2, [m.start_line for m in received]
    assert len({m.text for m in invites}) == 1  # retransmissions of one INVITE
    assert_our_via(values(invites[0], "Via")[0], gw.backend_address, "udp")


# --- malformed input -----------------------------------------------------------------------


def test_malformed_datagrams_get_an_error_or_no_reply_and_sipgw_goes_on_relaying_calls(
    sipp: SippRunner, sipgw: SipgwRunner
) -> None:
    rng = random.Random(4475)
    backend_port = free_port()
    torture = [(p.name, p.read_bytes()) for p in sorted(TORTURE_INVALID.glob("*.dat"))]
    assert len(torture) >= 19, f"torture messages missing in {TORTURE_INVALID}"
    # A short timer B: whatever sipgw relays to the (silent) backend here stops being
    # retransmitted within a second, before the SIPp backend takes the port.
    with UdpPeer(port=backend_port) as sink:
        # NAT fixes off: the torture messages' Vias name hosts other than their source;
        # with force_rport their replies (100, then 408 at timer B) reach the peers, the
        # collection below waits for them, and by then the silent backend's timeout has
        # marked it inactive (dispatcher.probing_threshold 1). NAT has its own tests.
        gw = sipgw(backend=f"{LOOPBACK}:{backend_port}",
                   extra_toml="[timers]\ntimer_b = 1.0\n[proxy]\nnat_uac_test = 0\n")
        peers = [UdpPeer(gw.address) for _ in range(len(torture) + 10 + 200)]
        try:
            inputs: list[tuple[str, bytes]] = list(torture)
            # A valid INVITE from each of the next 10 peers (its Via names the peer, so a
            # reply comes back to it), cut short at one of 10 points.
            valid = [
                build_request(
                    "INVITE", f"sip:service@{gw.address}", peer=peer, call_id=f"cut{i}@test",
                    branch=f"z9hG4bK-cut{i}", body=SDP,
                )
                for i, peer in enumerate(peers[len(torture) : len(torture) + 10])
            ]  # fmt: skip
            cuts = rng.sample(range(1, min(len(v) for v in valid)), 10)
            inputs += [
                (f"INVITE cut at byte {cut}", v[:cut]) for cut, v in zip(cuts, valid, strict=False)
            ]
            inputs += [
                (f"random #{i}", rng.randbytes(rng.randint(1, 600))) for i in range(200)
            ]
            for peer, (_, data) in zip(peers, inputs, strict=True):
                peer.send(data)
            collect_from_many(peers, quiet=0.5, limit=5.0)
            replies = {
                name: list(peer.inbox) for peer, (name, _) in zip(peers, inputs, strict=True)
            }
        finally:
            for peer in peers:
                peer.close()
        collect_from_many([sink], quiet=0.7, limit=5.0)  # until sipgw stops retransmitting
        leaked = sink.collect(0.0)

    uas = sipp.uas("uas_call.xml", port=backend_port, timeout=10)
    uac = sipp.uac("uac_call.xml", remote=gw.address, timeout=10)
    assert_all_calls_succeeded(uac, uas)
    assert gw.alive()
    assert "Traceback" not in gw.log_text(), gw.describe()

    # RFC 3261 §7 and §18.3: a malformed or truncated request is answered 400 (or another
    # error naming a reason) or dropped; it is never relayed, so never gets a 100 Trying.
    wrong = {
        name: [m.start_line for m in got]
        for name, got in replies.items()
        if any(not re.fullmatch(r"SIP/2\.0 [45]\d\d \S.*", m.start_line) for m in got)
    }
    # RFC 4475 §3.1.2.12 and §3.1.2.13: a non-GMT Date, and a Contact URI with headers but
    # no <>, are flaws a proxy may leave to the endpoint (tests/proxy/test_torture_proxy.py
    # forwards them too); anything else at the backend was relayed when it must not be.
    may_pass = {call_id(data) for name, data in torture if name in FORWARDABLE_TORTURE}
    relayed = dict.fromkeys(
        m.text.split("\r\n\r\n")[0] for m in leaked if m.header("Call-ID") not in may_pass
    )
    assert not wrong and not relayed, (
        f"answered other than 4xx/5xx: {wrong}\nrelayed to the backend:\n"
        + "\n--\n".join(relayed)
    )


# --- configuration: SIGHUP and --check -----------------------------------------------------


def test_sighup_keeps_the_running_config_when_the_file_is_broken_and_applies_a_good_one(
    sipp: SippRunner, sipgw: SipgwRunner
) -> None:
    first_uas = sipp.uas("uas_call.xml", timeout=10)
    gw = sipgw(backend=first_uas.address)

    broken = gw.config_text() + "\n[timers]\ntimer_b = = 1.0\n"
    bad_line = broken.splitlines().index("timer_b = = 1.0") + 1
    gw.write_config(broken)
    mark = len(gw.log_text())
    gw.reload()
    refused = gw.wait_for_log("reload refused", after=mark)
    assert f"{gw.config_path}:{bad_line}:" in refused
    uac = sipp.uac("uac_call.xml", remote=gw.address, timeout=10)
    assert_all_calls_succeeded(uac, first_uas)

    second_uas = sipp.uas("uas_call.xml", timeout=10)
    gw.write_config(gw.config_text(backend=backend_uri(second_uas.address)))
    mark = len(gw.log_text())
    gw.reload()
    gw.wait_for_log(f"reloaded {re.escape(str(gw.config_path))}", after=mark)
    uac = sipp.uac("uac_call.xml", remote=gw.address, timeout=10)
    assert_all_calls_succeeded(uac, second_uas)
    assert first(second_uas.messages(), "received", "INVITE").header("Call-ID") == first(
        uac.messages(), "sent", "INVITE"
    ).header("Call-ID")


def test_check_refuses_a_bad_file_with_one_line_naming_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        config_toml(port=free_port(), backend="sip:127.0.0.1:5080")
        + '\n[timers]\ntimer_b = "soon"\n'
    )
    bad_line = path.read_text().splitlines().index('timer_b = "soon"') + 1

    result = run_cli("serve", "--check", "-c", str(path))

    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"{path}:{bad_line}: timers.timer_b:" in lines[0]
    assert result.stdout == ""


def test_check_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(config_toml(port=free_port(), backend="sip:127.0.0.1:5080;transport=tcp"))

    result = run_cli("serve", "--check", "-c", str(path))

    assert result.returncode == 0, result
    assert f"{path}: OK" in result.stderr
