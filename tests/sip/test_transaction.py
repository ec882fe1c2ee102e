"""RFC 3261 §17 transactions with RFC 6026, driven by an explicit clock.

Every timer is checked from both sides: ``on_timer`` just before its deadline does nothing,
just after it fires. Messages are real ones from ``parse_message``; the last tests join a
client and a server transaction through a lossy link on a simulated clock.
"""

from __future__ import annotations

import heapq
import itertools
from pathlib import Path

import pytest

from sipgw.sip.effects import (
    Deliver,
    DeliverRequest,
    Send,
    Terminated,
    Timeout,
    TransportError,
)
from sipgw.sip.errors import ParseError
from sipgw.sip.message import Request, Response, make_response
from sipgw.sip.parser import parse_message
from sipgw.sip.timers import DEFAULT_TIMERS, TimerConfig
from sipgw.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    Input,
    State,
    Transaction,
    build_ack,
    client_key,
    invite_key_for_cancel,
    server_key,
)
from sipgw.sip.transaction_client import InviteClientTransaction, NonInviteClientTransaction
from sipgw.sip.transaction_server import InviteServerTransaction, NonInviteServerTransaction

EPS = 1e-6
T = DEFAULT_TIMERS
TORTURE = Path(__file__).resolve().parents[1] / "data" / "torture"


# -- building messages ------------------------------------------------------------------


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK74bf9",
    sent_by: str = "192.0.2.1:5060",
    cseq: int = 1,
    cseq_method: str | None = None,
    uri: str = "sip:bob@example.com",
    to_tag: str | None = None,
    routes: tuple[str, ...] = ("<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"),
) -> Request:
    via = f"SIP/2.0/UDP {sent_by}" + (f";branch={branch}" if branch is not None else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "Via: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKdownstream",
        "Max-Forwards: 69",
        *(f"Route: {r}" for r in routes),
        "From: Alice <sip:alice@example.com>;tag=9fxced76sl",
        "To: Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: 3848276298220188511@example.com",
        f"CSeq: {cseq} {cseq_method or method}",
        "Content-Length: 0",
        "",
        "",
    ]
    msg = parse_message("\r\n".join(lines).encode())
    assert isinstance(msg, Request)
    return msg


def reply(
    req: Request, status: int, reason: str = "Reason", *, to_tag: str | None = "b0b"
) -> Response:
    """A response to ``req`` as it comes back over the wire (serialized and parsed again)."""
    tag = None if status == 100 else to_tag
    msg = parse_message(make_response(req, status, reason, to_tag=tag).to_bytes())
    assert isinstance(msg, Response)
    return msg


def sends(effects: list) -> list:
    return [e.message for e in effects if isinstance(e, Send)]


def fire_exactly_at(tx: Transaction, deadline: float) -> list:
    """Check that nothing happens just before ``deadline``; return what happens just after."""
    assert tx.next_deadline() == pytest.approx(deadline)
    assert tx.on_timer(deadline - EPS) == []
    return tx.on_timer(deadline + EPS)


def invite_client(*, reliable: bool = False, now: float = 0.0):
    req = request("INVITE")
    tx = InviteClientTransaction(req, reliable=reliable, timers=T)
    assert tx.start(now) == [Send(message=req)]
    return tx, req


def non_invite_client(*, reliable: bool = False, method: str = "OPTIONS"):
    req = request(method)
    tx = NonInviteClientTransaction(req, reliable=reliable, timers=T)
    assert tx.start(0.0) == [Send(message=req)]
    return tx, req


# -- timer values ------------------------------------------------------------------------


def test_timer_config_derives_every_rfc_3261_and_rfc_6026_timer_from_t1_t2_t4():
    t = TimerConfig()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert (t.a, t.e, t.g) == (0.5, 0.5, 0.5)
    assert (t.b, t.f, t.h, t.j, t.l, t.m) == (32.0,) * 6
    assert (t.d, t.i, t.k) == (32.0, 5.0, 5.0)


def test_timer_config_makes_d_i_j_k_zero_on_reliable_transports():
    t = TimerConfig()
    assert [t.d_on(False), t.i_on(False), t.j_on(False), t.k_on(False)] == [32.0, 5.0, 32.0, 5.0]
    assert [t.d_on(True), t.i_on(True), t.j_on(True), t.k_on(True)] == [0.0] * 4


def test_timer_config_follows_t1_and_honours_b_and_f_overrides():
    t = TimerConfig(t1=0.25, timer_b=10.0, timer_f=12.0)
    assert (t.b, t.f, t.h, t.j, t.l, t.m) == (10.0, 12.0, 16.0, 16.0, 16.0, 16.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"t1": 0}, {"t1": -1}, {"t1": 2.0, "t2": 1.0}, {"t4": -1}, {"timer_b": 0}, {"timer_d": -1}],
)
def test_timer_config_refuses_values_that_cannot_work(kwargs):
    with pytest.raises(ValueError, match="TimerConfig"):
        TimerConfig(**kwargs)


def test_timer_config_is_a_frozen_keyword_only_value():
    with pytest.raises(TypeError):
        TimerConfig(0.5)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        TimerConfig().t1 = 1.0  # type: ignore[misc]


# -- the tables --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", [INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER]
)
def test_every_table_lets_terminated_be_left_by_nothing_and_every_state_end(table):
    assert table[State.TERMINATED] == {}
    for state, edges in table.items():
        if state is not State.TERMINATED:
            assert State.TERMINATED in edges.values(), state


def test_timer_b_acts_only_in_calling_while_timer_f_also_acts_in_proceeding():
    assert Input.TIMER_B in INVITE_CLIENT[State.CALLING]
    assert Input.TIMER_B not in INVITE_CLIENT[State.PROCEEDING]
    assert Input.TIMER_F in NON_INVITE_CLIENT[State.PROCEEDING]


def test_transactions_have_no_instance_dict():
    tx, _ = invite_client()
    assert not hasattr(tx, "__dict__")
    server = InviteServerTransaction(request(), reliable=False, timers=T)
    assert not hasattr(server, "__dict__")


# -- INVITE client, §17.1.1 --------------------------------------------------------------


def test_invite_over_udp_is_retransmitted_until_timer_b_then_timeout():
    tx, req = invite_client()
    assert tx.state is State.CALLING
    sent_at = [0.0]
    for deadline in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5):
        assert fire_exactly_at(tx, deadline) == [Send(message=req)]
        sent_at.append(deadline)
    # Timer A doubles without a cap: 0.5, 1, 2, 4, 8, 16.
    assert [b - a for a, b in itertools.pairwise(sent_at)] == [0.5, 1, 2, 4, 8, 16]
    # Timer B (64*T1 = 32 s) comes before the next A (63.5 s).
    assert fire_exactly_at(tx, 32.0) == [Timeout(), Terminated()]
    assert tx.state is State.TERMINATED
    assert tx.next_deadline() is None
    assert tx.on_timer(100.0) == []


def test_invite_retransmissions_reuse_one_send_effect():
    tx, _ = invite_client()
    first = tx.on_timer(0.5)[0]
    assert tx.on_timer(1.5)[0] is first


def test_invite_over_tcp_is_never_retransmitted_but_times_out_at_timer_b():
    tx, _ = invite_client(reliable=True)
    assert fire_exactly_at(tx, 32.0) == [Timeout(), Terminated()]


def test_a_late_timer_call_retransmits_once_and_keeps_the_schedule():
    tx, req = invite_client()
    # The adapter slept through 0.5, 1.5, 3.5 and 7.5: one send, next at 15.5.
    assert tx.on_timer(10.0) == [Send(message=req)]
    assert tx.next_deadline() == 15.5


def test_timer_b_wins_over_a_retransmission_due_at_the_same_call():
    tx, _ = invite_client()
    assert tx.on_timer(40.0) == [Timeout(), Terminated()]


def test_invite_provisional_stops_timer_a_and_is_delivered():
    tx, req = invite_client()
    assert tx.on_timer(0.5 + EPS) == [Send(message=req)]
    ringing = reply(req, 180, "Ringing")
    assert tx.on_response(ringing, 1.0) == [Deliver(response=ringing)]
    assert tx.state is State.PROCEEDING
    assert tx.on_timer(1.5 + EPS) == []  # A would have fired here


def test_ringing_invite_does_not_time_out_at_timer_b_which_only_applies_in_calling():
    # RFC 3261 §17.1.1.2: B only acts in Calling; a ringing branch is bounded by the
    # TU's timer C (§16.8), not by the transaction.
    tx, req = invite_client()
    tx.on_response(reply(req, 180, "Ringing"), 0.2)
    assert tx.next_deadline() is None
    assert tx.on_timer(32.0 + EPS) == []
    assert tx.state is State.PROCEEDING


def test_invite_client_delivers_every_provisional_including_100():
    tx, req = invite_client()
    for status in (100, 180, 180, 183):
        r = reply(req, status)
        assert tx.on_response(r, 1.0) == [Deliver(response=r)]
    assert tx.state is State.PROCEEDING


def test_non_2xx_final_is_acked_delivered_and_completed_with_timer_d():
    tx, req = invite_client()
    tx.on_response(reply(req, 180, "Ringing"), 0.1)
    busy = reply(req, 486, "Busy Here")
    effects = tx.on_response(busy, 2.0)
    assert len(effects) == 2
    ack_send, deliver = effects
    assert deliver == Deliver(response=busy)
    assert isinstance(ack_send, Send)
    assert tx.state is State.COMPLETED
    # Timer D: 32 s on UDP.
    assert fire_exactly_at(tx, 34.0) == [Terminated()]


def test_ack_for_a_non_2xx_follows_section_17_1_1_3():
    req = request("INVITE", cseq=314159)
    busy = reply(req, 486, "Busy Here", to_tag="callee-tag")
    ack = build_ack(req, busy)
    assert ack.method == "ACK"
    assert ack.uri == req.uri
    assert ack.values("via") == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9"]
    assert ack.headers("route") == ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"]
    assert ack.header("max-forwards") == "70"
    assert ack.header("from") == req.header("from")
    assert ack.header("to") == "Bob <sip:bob@example.com>;tag=callee-tag"
    assert ack.call_id == req.call_id
    assert ack.header("cseq") == "314159 ACK"
    assert ack.header("content-length") == "0"
    assert ack.body == b""
    # It is a well-formed message, and it reaches the INVITE's server transaction.
    again = parse_message(ack.to_bytes())
    assert isinstance(again, Request) and again.cseq == (314159, "ACK")
    assert server_key(again) == server_key(req)


def test_ack_without_route_headers_has_none():
    req = request("INVITE", routes=())
    ack = build_ack(req, reply(req, 404, "Not Found"))
    assert not ack.has("route")


def test_retransmitted_non_2xx_final_gets_the_same_ack_again_and_is_not_delivered():
    tx, req = invite_client()
    busy = reply(req, 486, "Busy Here")
    first_ack = tx.on_response(busy, 1.0)[0]
    assert tx.on_response(reply(req, 486, "Busy Here"), 2.0) == [first_ack]
    assert tx.on_response(reply(req, 180, "Ringing"), 2.5) == []  # late provisional
    assert tx.state is State.COMPLETED


def test_non_2xx_final_over_tcp_terminates_at_once_as_timer_d_is_zero():
    tx, req = invite_client(reliable=True)
    busy = reply(req, 603, "Decline")
    effects = tx.on_response(busy, 1.0)
    assert [type(e) for e in effects] == [Send, Deliver, Terminated]
    assert tx.state is State.TERMINATED
    assert tx.next_deadline() is None


def test_2xx_moves_to_accepted_and_every_further_2xx_is_delivered_until_timer_m():
    tx, req = invite_client()
    ok = reply(req, 200, "OK")
    assert tx.on_response(ok, 1.0) == [Deliver(response=ok)]
    assert tx.state is State.ACCEPTED
    retransmitted = reply(req, 200, "OK")
    assert tx.on_response(retransmitted, 2.0) == [Deliver(response=retransmitted)]
    forked = reply(req, 200, "OK", to_tag="other-fork")
    assert tx.on_response(forked, 3.0) == [Deliver(response=forked)]
    assert tx.on_response(reply(req, 486, "Busy Here"), 3.5) == []
    assert tx.on_response(reply(req, 180, "Ringing"), 3.6) == []
    # Timer M (64*T1) from the first 2xx, the same on every transport; no retransmissions.
    assert fire_exactly_at(tx, 33.0) == [Terminated()]


def test_2xx_over_tcp_also_waits_in_accepted_for_timer_m():
    tx, req = invite_client(reliable=True)
    tx.on_response(reply(req, 200, "OK"), 0.5)
    assert fire_exactly_at(tx, 32.5) == [Terminated()]


def test_2xx_after_a_non_2xx_final_is_still_delivered_for_the_proxy_to_forward():
    tx, req = invite_client()
    tx.on_response(reply(req, 600, "Busy Everywhere"), 1.0)
    late_ok = reply(req, 200, "OK", to_tag="late")
    assert tx.on_response(late_ok, 2.0) == [Deliver(response=late_ok)]
    assert tx.state is State.COMPLETED


def test_invite_client_transport_error_informs_the_tu_and_terminates():
    tx, _ = invite_client()
    assert tx.on_transport_error(0.1) == [TransportError(), Terminated()]
    assert tx.next_deadline() is None
    assert tx.on_transport_error(0.2) == []


def test_responses_after_termination_are_ignored():
    tx, req = invite_client()
    tx.on_timer(40.0)
    assert tx.on_response(reply(req, 200, "OK"), 41.0) == []


def test_invite_client_refuses_to_start_twice_or_carry_another_method():
    tx, _ = invite_client()
    with pytest.raises(RuntimeError, match="start"):
        tx.start(1.0)
    with pytest.raises(ValueError, match="OPTIONS"):
        InviteClientTransaction(request("OPTIONS"), reliable=False, timers=T)


def test_client_key_is_branch_and_method_and_matches_its_responses():
    tx, req = invite_client()
    assert tx.key == ("z9hG4bK74bf9", "INVITE")
    assert client_key(reply(req, 180, "Ringing")) == tx.key
    cancel = request("CANCEL", cseq_method="CANCEL")
    assert client_key(reply(cancel, 200, "OK")) == ("z9hG4bK74bf9", "CANCEL") != tx.key


# -- non-INVITE client, §17.1.2 ----------------------------------------------------------


def test_non_invite_over_udp_retransmits_with_timer_e_doubling_capped_at_t2_until_timer_f():
    tx, req = non_invite_client()
    assert tx.state is State.TRYING
    sent_at = [0.0]
    for deadline in (0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5):
        assert fire_exactly_at(tx, deadline) == [Send(message=req)]
        sent_at.append(deadline)
    assert [b - a for a, b in itertools.pairwise(sent_at)] == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert fire_exactly_at(tx, 32.0) == [Timeout(), Terminated()]
    assert tx.state is State.TERMINATED


def test_non_invite_provisional_makes_timer_e_fire_every_t2_and_timer_f_still_runs():
    tx, req = non_invite_client(method="REGISTER")
    trying = reply(req, 100, "Trying")
    assert tx.on_response(trying, 0.2) == [Deliver(response=trying)]
    assert tx.state is State.PROCEEDING
    # The E already armed fires at 0.5; from then on it is reset to T2.
    for deadline in (0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5):
        assert fire_exactly_at(tx, deadline) == [Send(message=req)]
    assert fire_exactly_at(tx, 32.0) == [Timeout(), Terminated()]


def test_non_invite_final_is_delivered_once_and_timer_k_absorbs_retransmissions():
    tx, req = non_invite_client()
    ok = reply(req, 200, "OK")
    assert tx.on_response(ok, 1.0) == [Deliver(response=ok)]
    assert tx.state is State.COMPLETED
    assert tx.on_response(reply(req, 200, "OK"), 2.0) == []
    assert tx.on_response(reply(req, 100, "Trying"), 2.0) == []
    # No more retransmissions: only K (T4 = 5 s) is armed.
    assert fire_exactly_at(tx, 6.0) == [Terminated()]


def test_non_invite_over_tcp_is_not_retransmitted_and_ends_with_the_final():
    tx, req = non_invite_client(reliable=True)
    assert tx.next_deadline() == 32.0  # F only
    ok = reply(req, 404, "Not Found")
    assert tx.on_response(ok, 1.0) == [Deliver(response=ok), Terminated()]
    assert tx.next_deadline() is None


def test_non_invite_over_tcp_times_out_at_timer_f():
    tx, _ = non_invite_client(reliable=True)
    assert fire_exactly_at(tx, 32.0) == [Timeout(), Terminated()]


def test_non_invite_client_honours_a_configured_timer_f():
    req = request("OPTIONS")
    tx = NonInviteClientTransaction(req, reliable=True, timers=TimerConfig(timer_f=5.0))
    tx.start(10.0)
    assert fire_exactly_at(tx, 15.0) == [Timeout(), Terminated()]


def test_non_invite_client_transport_error_terminates():
    tx, _ = non_invite_client()
    assert tx.on_transport_error(0.1) == [TransportError(), Terminated()]


def test_non_invite_client_refuses_invite_and_ack():
    for method in ("INVITE", "ACK"):
        with pytest.raises(ValueError, match=method):
            NonInviteClientTransaction(request(method), reliable=False, timers=T)


# -- INVITE server, §17.2.1 --------------------------------------------------------------


def invite_server(*, reliable: bool = False):
    req = request("INVITE")
    return InviteServerTransaction(req, reliable=reliable, timers=T), req


def test_invite_server_starts_in_proceeding_and_absorbs_retransmissions_before_any_response():
    tx, req = invite_server()
    assert tx.state is State.PROCEEDING
    assert tx.last_response is None
    assert tx.on_request(req, 0.5) == []
    assert tx.next_deadline() is None


def test_invite_server_answers_a_retransmission_with_the_last_provisional():
    tx, req = invite_server()
    trying = make_response(req, 100, "Trying")
    ringing = make_response(req, 180, "Ringing", to_tag="s1")
    assert tx.respond(trying, 0.0) == [Send(message=trying)]
    assert tx.respond(ringing, 0.1) == [Send(message=ringing)]
    assert tx.last_response is ringing
    assert tx.on_request(req, 0.5) == [Send(message=ringing)]
    assert tx.state is State.PROCEEDING


def test_invite_server_non_2xx_is_retransmitted_by_timer_g_capped_at_t2_until_timer_h():
    tx, req = invite_server()
    busy = make_response(req, 486, "Busy Here", to_tag="s1")
    assert tx.respond(busy, 0.0) == [Send(message=busy)]
    assert tx.state is State.COMPLETED
    sent_at = [0.0]
    for deadline in (0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5):
        assert fire_exactly_at(tx, deadline) == [Send(message=busy)]
        sent_at.append(deadline)
    assert [b - a for a, b in itertools.pairwise(sent_at)] == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    # Timer H: the ACK never came.
    assert fire_exactly_at(tx, 32.0) == [Timeout(), Terminated()]
    assert tx.state is State.TERMINATED


def test_invite_server_answers_a_retransmission_in_completed_with_the_final():
    tx, req = invite_server()
    busy = make_response(req, 486, "Busy Here", to_tag="s1")
    tx.respond(busy, 0.0)
    assert tx.on_request(req, 0.2) == [Send(message=busy)]


def test_ack_confirms_the_invite_server_stops_g_and_h_and_timer_i_absorbs_repeats():
    tx, req = invite_server()
    busy = make_response(req, 486, "Busy Here", to_tag="s1")
    tx.respond(busy, 0.0)
    ack = build_ack(req, busy)
    assert tx.on_request(ack, 1.0) == []  # absorbed, never delivered
    assert tx.state is State.CONFIRMED
    assert tx.on_request(ack, 2.0) == []
    assert tx.on_request(req, 2.0) == []
    # Timer I: T4 on UDP; G (next at 1.5) and H (32) are stopped.
    assert fire_exactly_at(tx, 6.0) == [Terminated()]


def test_invite_server_over_tcp_sends_the_final_once_and_ends_at_the_ack():
    tx, req = invite_server(reliable=True)
    busy = make_response(req, 486, "Busy Here", to_tag="s1")
    tx.respond(busy, 0.0)
    assert tx.next_deadline() == 32.0  # H only, no G
    assert tx.on_request(build_ack(req, busy), 1.0) == [Terminated()]  # I is zero


def test_invite_server_over_tcp_still_gives_up_at_timer_h():
    tx, req = invite_server(reliable=True)
    tx.respond(make_response(req, 500, "Server Error", to_tag="s1"), 0.0)
    assert fire_exactly_at(tx, 32.0) == [Timeout(), Terminated()]


def test_invite_server_2xx_moves_to_accepted_and_timer_l_absorbs_invite_retransmissions():
    tx, req = invite_server()
    ok = make_response(req, 200, "OK", to_tag="s1")
    assert tx.respond(ok, 0.0) == [Send(message=ok)]
    assert tx.state is State.ACCEPTED
    # RFC 6026: the transaction never retransmits the 2xx itself, and absorbs the INVITE.
    assert tx.on_request(req, 0.5) == []
    assert tx.next_deadline() == 32.0
    again = make_response(req, 200, "OK", to_tag="s1")
    assert tx.respond(again, 1.0) == [Send(message=again)]
    assert tx.respond(make_response(req, 180, "Ringing"), 1.0) == []
    assert tx.respond(make_response(req, 486, "Busy"), 1.0) == []
    assert fire_exactly_at(tx, 32.0) == [Terminated()]


def test_ack_matching_an_invite_server_in_accepted_is_passed_to_the_tu():
    tx, req = invite_server()
    ok = make_response(req, 200, "OK", to_tag="s1")
    tx.respond(ok, 0.0)
    ack = build_ack(req, ok)
    assert tx.on_request(ack, 0.1) == [DeliverRequest(request=ack)]
    assert tx.state is State.ACCEPTED


def test_invite_server_2xx_after_non_2xx_is_sent_but_the_non_2xx_stays_the_retransmission():
    tx, req = invite_server()
    decline = make_response(req, 603, "Decline", to_tag="s1")
    tx.respond(decline, 0.0)
    late_ok = make_response(req, 200, "OK", to_tag="s2")
    assert tx.respond(late_ok, 0.2) == [Send(message=late_ok)]
    assert tx.state is State.COMPLETED
    assert tx.last_response is decline
    assert tx.on_timer(0.5) == [Send(message=decline)]


def test_invite_server_drops_a_provisional_or_second_non_2xx_after_the_final():
    tx, req = invite_server()
    tx.respond(make_response(req, 486, "Busy Here", to_tag="s1"), 0.0)
    assert tx.respond(make_response(req, 180, "Ringing", to_tag="s1"), 0.1) == []
    assert tx.respond(make_response(req, 404, "Not Found", to_tag="s1"), 0.1) == []


def test_invite_server_transport_error_terminates_except_in_accepted():
    tx, req = invite_server()
    tx.respond(make_response(req, 486, "Busy Here", to_tag="s1"), 0.0)
    assert tx.on_transport_error(0.1) == [TransportError(), Terminated()]
    assert tx.respond(make_response(req, 200, "OK"), 0.2) == []

    tx, req = invite_server()
    tx.respond(make_response(req, 200, "OK", to_tag="s1"), 0.0)
    assert tx.on_transport_error(0.1) == [TransportError()]
    assert tx.state is State.ACCEPTED
    assert tx.next_deadline() == 32.0


def test_invite_server_refuses_other_methods():
    with pytest.raises(ValueError, match="BYE"):
        InviteServerTransaction(request("BYE"), reliable=False, timers=T)


# -- non-INVITE server, §17.2.2 ----------------------------------------------------------


def non_invite_server(*, reliable: bool = False, method: str = "OPTIONS"):
    req = request(method)
    return NonInviteServerTransaction(req, reliable=reliable, timers=T), req


def test_non_invite_server_discards_retransmissions_in_trying():
    tx, req = non_invite_server()
    assert tx.state is State.TRYING
    assert tx.on_request(req, 0.5) == []


def test_non_invite_server_answers_retransmissions_from_the_last_response():
    tx, req = non_invite_server(method="REGISTER")
    trying = make_response(req, 100, "Trying")
    assert tx.respond(trying, 0.0) == [Send(message=trying)]
    assert tx.state is State.PROCEEDING
    assert tx.on_request(req, 0.5) == [Send(message=trying)]
    ok = make_response(req, 200, "OK", to_tag="s1")
    assert tx.respond(ok, 1.0) == [Send(message=ok)]
    assert tx.state is State.COMPLETED
    assert tx.last_response is ok
    assert tx.on_request(req, 1.5) == [Send(message=ok)]
    assert tx.respond(make_response(req, 500, "Oops", to_tag="s1"), 1.6) == []
    # Timer J: 64*T1 on UDP, from the final.
    assert fire_exactly_at(tx, 33.0) == [Terminated()]


def test_non_invite_server_over_tcp_ends_with_its_final_as_timer_j_is_zero():
    tx, req = non_invite_server(reliable=True)
    ok = make_response(req, 200, "OK", to_tag="s1")
    assert tx.respond(ok, 0.0) == [Send(message=ok), Terminated()]
    assert tx.next_deadline() is None
    assert tx.on_request(req, 0.1) == []


def test_non_invite_server_never_retransmits_on_its_own():
    tx, req = non_invite_server()
    tx.respond(make_response(req, 200, "OK", to_tag="s1"), 0.0)
    assert tx.next_deadline() == 32.0  # J only


def test_non_invite_server_transport_error_terminates():
    tx, req = non_invite_server()
    tx.respond(make_response(req, 200, "OK", to_tag="s1"), 0.0)
    assert tx.on_transport_error(0.1) == [TransportError(), Terminated()]


# -- keys, §17.1.3, §17.2.3, §9.2 ----------------------------------------------------------


def test_rfc_3261_server_key_is_branch_sent_by_and_method_with_ack_as_invite():
    inv = request("INVITE", sent_by="PC33.Atlanta.COM:5060")
    assert server_key(inv) == ("z9hG4bK74bf9", "pc33.atlanta.com:5060", "INVITE")
    ack = request("ACK", sent_by="pc33.atlanta.com:5060", to_tag="s1")
    assert server_key(ack) == server_key(inv)
    assert server_key(request("INVITE", branch="z9hG4bKother")) != server_key(inv)
    assert server_key(request("INVITE", sent_by="192.0.2.9")) != server_key(inv)


def test_server_transaction_key_is_its_server_key():
    tx, req = invite_server()
    assert tx.key == server_key(req)


def test_cancel_has_its_own_server_transaction_and_finds_its_invite():
    inv = request("INVITE", cseq=7)
    cancel = request("CANCEL", cseq=7)
    assert server_key(cancel) == ("z9hG4bK74bf9", "192.0.2.1:5060", "CANCEL")
    assert server_key(cancel) != server_key(inv)
    assert invite_key_for_cancel(cancel) == server_key(inv)
    other = request("CANCEL", branch="z9hG4bKelse", cseq=7)
    assert invite_key_for_cancel(other) != server_key(inv)


def test_rfc_2543_request_without_branch_gets_the_fallback_key():
    inv = request("INVITE", branch=None, cseq=56)
    key = server_key(inv)
    assert key == (
        "sip:bob@example.com",
        "9fxced76sl",
        "3848276298220188511@example.com",
        56,
        "SIP/2.0/UDP 192.0.2.1:5060",
        "INVITE",
        None,
    )
    # Its non-2xx ACK carries our To tag, the CANCEL the INVITE's To; both find it.
    ack = build_ack(inv, reply(inv, 486, "Busy Here", to_tag="s1"))
    assert server_key(ack) == key
    cancel = request("CANCEL", branch=None, cseq=56)
    assert invite_key_for_cancel(cancel) == key
    assert server_key(cancel) != key
    # A retransmission matches; another CSeq, Call-ID position or Request-URI does not.
    assert server_key(request("INVITE", branch=None, cseq=56)) == key
    assert server_key(request("INVITE", branch=None, cseq=57)) != key
    assert server_key(request("INVITE", branch=None, cseq=56, uri="sip:carol@example.com")) != key


def test_rfc_2543_non_invite_key_includes_the_to_tag():
    bye1 = request("BYE", branch=None, to_tag="a")
    bye2 = request("BYE", branch=None, to_tag="b")
    assert server_key(bye1) != server_key(bye2)
    assert server_key(bye1)[-2:] == ("BYE", "a")


def test_bare_magic_cookie_branch_is_not_an_rfc_3261_branch():
    key = server_key(request("OPTIONS", branch="z9hG4bK"))
    assert len(key) == 7 and key[4] == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK"


def torture(name: str) -> Request:
    msg = parse_message((TORTURE / "semantic" / name).read_bytes())
    assert isinstance(msg, Request)
    return msg


def test_rfc_4475_badbranch_gets_a_working_fallback_key():
    msg = torture("badbranch.dat")
    key = server_key(msg)
    assert key == server_key(torture("badbranch.dat"))
    assert key[0] == "sip:user@example.com" and key[5] == "OPTIONS"
    tx = NonInviteServerTransaction(msg, reliable=False, timers=T)
    assert tx.key == key


def test_rfc_4475_inv2543_gets_a_working_fallback_key_its_ack_and_cancel_match():
    inv = torture("inv2543.dat")
    key = server_key(inv)
    assert key == (
        "sip:UserB@example.com",
        None,
        "inv2543.1717@ift.client.example.com",
        56,
        "SIP/2.0/UDP iftgw.example.com",
        "INVITE",
        None,
    )
    tx = InviteServerTransaction(inv, reliable=False, timers=T)
    busy = make_response(inv, 486, "Busy Here", to_tag="s1")
    tx.respond(busy, 0.0)
    ack = parse_message(build_ack(inv, busy).to_bytes())
    assert isinstance(ack, Request)
    assert server_key(ack) == tx.key
    assert tx.on_request(ack, 0.1) == [] and tx.state is State.CONFIRMED


def test_every_parseable_rfc_4475_request_gets_a_server_key():
    count = 0
    for path in sorted(TORTURE.glob("*/*.dat")):
        try:
            msg = parse_message(path.read_bytes())
        except ParseError:
            continue
        if isinstance(msg, Request):
            assert isinstance(server_key(msg), tuple), path.name
            if msg.method == "CANCEL":
                assert isinstance(invite_key_for_cancel(msg), tuple)
            count += 1
    assert count >= 20


# -- a client and a server transaction through a lossy link ------------------------------


class LossyLink:
    """Two ends on a simulated clock; each direction loses its first N datagrams.

    The client end runs one client transaction; the server end plays the adapter: it keys
    requests with ``server_key``, creates a server transaction for a new one, and lets
    ``answer`` (the TU) respond. Messages cross as bytes and are parsed on arrival.
    """

    def __init__(self, *, drop_to_server: int, drop_to_client: int, delay: float = 0.03):
        self.now = 0.0
        self.delay = delay
        self.drop = {"server": drop_to_server, "client": drop_to_client}
        self.wire: list[tuple[float, int, str, bytes]] = []
        self.seq = itertools.count()
        self.delivered: list[Response] = []
        self.client_events: list = []
        self.server_events: list = []
        self.servers: dict[tuple, Transaction] = {}
        self.created = 0
        self.requests_seen = 0

    def send(self, to: str, message) -> None:
        if self.drop[to]:
            self.drop[to] -= 1
            return
        heapq.heappush(self.wire, (self.now + self.delay, next(self.seq), to, message.to_bytes()))

    def carry_client(self, effects: list) -> None:
        for e in effects:
            self.client_events.append(e)
            if isinstance(e, Send):
                self.send("server", e.message)
            elif isinstance(e, Deliver):
                self.delivered.append(e.response)

    def carry_server(self, tx: Transaction, effects: list) -> None:
        for e in effects:
            self.server_events.append(e)
            if isinstance(e, Send):
                self.send("client", e.message)
            elif isinstance(e, Terminated):
                del self.servers[tx.key]

    def run(self, client, answer, *, until: float = 200.0) -> None:
        self.carry_client(client.start(self.now))
        for _ in range(10_000):
            times = [w[0] for w in self.wire[:1]]
            txs = [client, *self.servers.values()]
            times += [d for d in (t.next_deadline() for t in txs) if d is not None]
            if not times:
                return
            self.now = min(times)
            assert self.now <= until
            if self.wire and self.wire[0][0] == self.now:
                _, _, to, data = heapq.heappop(self.wire)
                msg = parse_message(data)
                if to == "client":
                    assert isinstance(msg, Response) and client_key(msg) == client.key
                    self.carry_client(client.on_response(msg, self.now))
                else:
                    assert isinstance(msg, Request)
                    self.requests_seen += 1
                    key = server_key(msg)
                    tx = self.servers.get(key)
                    if tx is not None:
                        self.carry_server(tx, tx.on_request(msg, self.now))
                    else:
                        invite = msg.method == "INVITE"
                        cls = InviteServerTransaction if invite else NonInviteServerTransaction
                        tx = cls(msg, reliable=False, timers=T)
                        self.servers[key] = tx
                        self.created += 1
                        self.carry_server(tx, answer(tx, msg, self.now))
                continue
            if client.next_deadline() == self.now:
                self.carry_client(client.on_timer(self.now))
            for tx in list(self.servers.values()):
                if tx.next_deadline() == self.now:
                    self.carry_server(tx, tx.on_timer(self.now))
        raise AssertionError("simulation did not settle")


def test_lossy_udp_link_gets_an_options_through_by_retransmission_and_answers_once():
    link = LossyLink(drop_to_server=3, drop_to_client=1)
    req = request("OPTIONS")
    client = NonInviteClientTransaction(req, reliable=False, timers=T)
    link.run(client, lambda tx, msg, now: tx.respond(make_response(msg, 200, "OK"), now))
    assert [r.status for r in link.delivered] == [200]
    assert link.created == 1
    assert link.requests_seen >= 2  # the lost 200 was answered again from the last response
    assert client.state is State.TERMINATED and not link.servers
    assert not any(isinstance(e, Timeout) for e in link.client_events + link.server_events)


def test_lossy_udp_link_gets_an_invite_through_and_its_busy_acked_exactly_once():
    link = LossyLink(drop_to_server=2, drop_to_client=2)
    req = request("INVITE")
    inv = InviteClientTransaction(req, reliable=False, timers=T)

    def answer(tx, msg, now):
        return tx.respond(make_response(msg, 100, "Trying"), now) + tx.respond(
            make_response(msg, 486, "Busy Here", to_tag="s1"), now
        )

    link.run(inv, answer)
    # Two INVITEs, the 100 and the 486 were lost; retransmission (G, and the INVITE
    # answered from the last response) brought the 486 back, delivered once and ACKed.
    assert [r.status for r in link.delivered] == [486]
    assert link.created == 1
    assert any(isinstance(e, Send) and e.message.method == "ACK" for e in link.client_events)
    assert not any(isinstance(e, Timeout) for e in link.server_events)
    assert inv.state is State.TERMINATED and not link.servers


def test_lossy_udp_link_delivers_an_invite_2xx_once_while_retransmissions_are_absorbed():
    link = LossyLink(drop_to_server=1, drop_to_client=0, delay=0.6)
    req = request("INVITE")
    inv = InviteClientTransaction(req, reliable=False, timers=T)
    link.run(inv, lambda tx, msg, now: tx.respond(make_response(msg, 200, "OK", to_tag="s1"), now))
    # A fired again before the 200 came back (0.6 s each way): that INVITE copy reached
    # the server transaction in Accepted and was absorbed, not answered or passed up.
    assert [r.status for r in link.delivered] == [200]
    assert link.created == 1
    assert link.requests_seen == 2
    assert inv.state is State.TERMINATED and not link.servers


# -- absorbing: what a TU may keep of a transaction in its last wait ------------------


def test_each_machine_is_absorbing_exactly_in_its_wait_and_repeats_what_it_would_resend():
    # INVITE client: not while calling; Completed after a non-2xx repeats its ACK.
    tx, req = invite_client()
    assert not tx.absorbing() and tx.repeat() is None
    ack = tx.on_response(reply(req, 486, "Busy Here"), 1.0)[0]
    assert tx.absorbing() and tx.repeat() == ack
    assert tx.on_response(reply(req, 486, "Busy Here"), 2.0) == [tx.repeat()]
    # INVITE client: Accepted after a 2xx absorbs, the 2xx being the TU's.
    tx, req = invite_client()
    tx.on_response(reply(req, 200, "OK"), 1.0)
    assert tx.state is State.ACCEPTED and tx.absorbing() and tx.repeat() is None
    # Non-INVITE client: Completed (timer K) repeats nothing.
    tx, req = non_invite_client()
    tx.on_response(reply(req, 200, "OK"), 1.0)
    assert tx.absorbing() and tx.repeat() is None
    # Non-INVITE server: Completed (timer J) repeats its final response.
    bye = request("BYE")
    srv = NonInviteServerTransaction(bye, reliable=False, timers=T)
    assert not srv.absorbing()
    final = srv.respond(make_response(bye, 200, "OK"), 0.0)[0]
    assert srv.absorbing() and srv.repeat() == final == srv.on_request(bye, 1.0)[0]
    # INVITE server: Completed after a non-2xx still retransmits (G): not absorbing until
    # the ACK (Confirmed, timer I); Accepted after a 2xx absorbs at once.
    inv = request("INVITE")
    srv = InviteServerTransaction(inv, reliable=False, timers=T)
    srv.respond(make_response(inv, 486, "Busy Here", to_tag="x"), 0.0)
    assert srv.state is State.COMPLETED and not srv.absorbing()
    srv.on_request(request("ACK"), 0.1)
    assert srv.state is State.CONFIRMED and srv.absorbing() and srv.repeat() is None
    srv = InviteServerTransaction(inv, reliable=False, timers=T)
    srv.respond(make_response(inv, 200, "OK", to_tag="x"), 0.0)
    assert srv.state is State.ACCEPTED and srv.absorbing() and srv.repeat() is None
