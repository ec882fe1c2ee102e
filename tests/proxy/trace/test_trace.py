"""The live trace: free while nobody listens, every message in and out when somebody does,
filtered per subscriber."""

from __future__ import annotations

import pytest

from sipgw.proxy.trace import Tap, Tracer, summarize
from sipgw.rpc.registry import RpcError
from sipgw.tools.harness import BACKEND_SOURCE, ProxyHarness, valid_invite


@pytest.fixture
def rig():
    harness = ProxyHarness()
    tracer = Tracer(harness.tap, clock=lambda: 1000.25,
                    local_of=lambda dest: ("127.0.0.1", 5060))
    return harness, harness.tap, tracer


def subscribe(tracer, **filters):
    got = []
    stream = tracer.rpc_subscribe(**filters)
    stream.start(lambda method, params: got.append((method, params)))
    return stream, got


def records(got):
    return [params for method, params in got if method == "trace.message"]


def test_nobody_listening_leaves_both_taps_empty_and_the_last_to_leave_empties_them(rig):
    harness, tap, tracer = rig
    assert tap.inbound is None and tap.outbound is None
    one, _ = subscribe(tracer)
    two, _ = subscribe(tracer)
    assert tap.inbound is not None and tap.outbound is not None
    one.stop()
    assert tap.inbound is not None
    two.stop()
    assert tap.inbound is None and tap.outbound is None


def test_an_invite_is_seen_coming_in_and_going_out_with_its_100(rig):
    harness, _, tracer = rig
    _, got = subscribe(tracer)
    harness.udp(valid_invite("t1"))
    recs = records(got)
    assert [(r["dir"], r["method"] or r["status"]) for r in recs] == [
        ("in", "INVITE"), ("out", 100), ("out", "INVITE")]
    first = recs[0]
    assert first["src"] == "192.0.2.99:5999" and first["dst"] == "127.0.0.1:5060"
    assert first["transport"] == "udp" and first["time"] == 1000.25
    assert recs[2]["dst"] == "127.0.0.1:5080"
    assert "raw" not in first  # only when asked for


def test_filters_by_method_include_replies_of_that_method(rig):
    harness, _, tracer = rig
    _, invites = subscribe(tracer, method="invite")
    _, byes = subscribe(tracer, method=["BYE", "CANCEL"])
    harness.udp(valid_invite("t2"))
    assert [r["status"] or r["method"] for r in records(invites)] == ["INVITE", 100, "INVITE"]
    assert records(byes) == []


def test_filters_by_status_class_address_user_and_call_id(rig):
    harness, _, tracer = rig
    _, trying = subscribe(tracer, status="1xx")
    _, backend = subscribe(tracer, address="127.0.0.1:5080")
    _, caller = subscribe(tracer, address="192.0.2.99")
    invite = valid_invite("t3")
    call_id = summarize(invite)["call_id"]
    user = summarize(invite)["to"].split(":")[1].split("@")[0]
    _, by_user = subscribe(tracer, user=user)
    _, by_call = subscribe(tracer, call_id=call_id)
    _, other_call = subscribe(tracer, call_id="nope")
    harness.udp(invite)
    assert [r["status"] for r in records(trying)] == [100]
    assert [r["method"] for r in records(backend)] == ["INVITE"]
    assert [r["dir"] for r in records(caller)] == ["in", "out"]
    assert len(records(by_user)) == len(records(by_call)) == 3
    assert records(other_call) == []


def test_a_bad_status_filter_is_refused_with_what_to_write():
    with pytest.raises(RpcError, match="use a class such as 4xx"):
        Tracer(Tap()).rpc_subscribe(status="client errors")


def test_raw_messages_go_only_to_who_asked_and_even_unparseable_ones_are_shown(rig):
    harness, _, tracer = rig
    _, raw = subscribe(tracer, raw=True)
    harness.udp(b"\x00\xffgarbage that is no SIP\r\n\r\n")
    (rec,) = records(raw)
    assert rec["method"] is None and rec["status"] is None
    assert "garbage" in rec["raw"]


def test_replies_from_the_backend_are_traced_as_they_come_in(rig):
    harness, _, tracer = rig
    harness.udp(valid_invite("t4"))
    invite_out = harness.to_backend()[-1].data
    _, got = subscribe(tracer, status="180")
    lines = invite_out.split(b"\r\n")
    head = [b"SIP/2.0 180 Ringing"] + [ln for ln in lines[1:] if ln.split(b":")[0].lower()
                                       in (b"via", b"from", b"to", b"call-id", b"cseq")]
    ringing = b"\r\n".join(head) + b"\r\nContent-Length: 0\r\n\r\n"
    harness.udp(ringing, BACKEND_SOURCE)
    assert [(r["dir"], r["status"]) for r in records(got)] == [("in", 180), ("out", 180)]


def test_a_summary_reads_compact_headers_and_never_raises():
    rec = summarize(b"SIP/2.0 486 Busy Here\r\ni: x1\r\nf: <sip:a@b>;tag=1\r\nt: sip:c@d\r\n"
                    b"CSeq: 2 INVITE\r\n\r\n")
    assert (rec["status"], rec["reason"], rec["call_id"], rec["from"], rec["to"]) == (
        486, "Busy Here", "x1", "sip:a@b", "sip:c@d")
    for junk in (b"", b"\r\n", b"SIP/2.0", b"\xff" * 100, b"A B\r\n:\r\n::"):
        summarize(junk)


def test_replies_are_counted_by_class_as_kamailio_counts_them(rig):
    harness, _, _ = rig
    harness.udp(valid_invite("cls"))
    invite_out = harness.to_backend()[-1].data
    lines = invite_out.split(b"\r\n")
    head = [ln for ln in lines[1:] if ln.split(b":")[0].lower()
            in (b"via", b"from", b"to", b"call-id", b"cseq")]
    for status in (b"180 Ringing", b"486 Busy Here"):
        harness.udp(b"\r\n".join([b"SIP/2.0 " + status] + head)
                    + b"\r\nContent-Length: 0\r\n\r\n", BACKEND_SOURCE)
    stats = harness.proxy.stats
    assert stats.get("core:rcv_replies_1xx") == 1
    assert stats.get("core:rcv_replies_4xx") == 1
    assert stats.get("core:rcv_replies") == 2
