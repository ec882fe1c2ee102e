"""Transactions in their last wait keep answering repeats, without their messages.

After a call, RFC 3261 and RFC 6026 keep its transactions 32 s (timers J, L, M, D) to absorb
retransmissions. The relay then holds them as ``sipgw.proxy.relay.retired`` entries: the tests
below repeat every message of the bench call at that point and check the answers, and
check what a finished call still costs the process.
"""

from __future__ import annotations

import gc
import re

from sipgw.tools.fuzzproxy import TRUSTED, FuzzProxy
from sipgw.tools.harness import BACKEND_SOURCE
from sipgw.tools.loadflows import SDP, HeapClock, caller_request, one_call, uas_answer

_URI = "sip:service@127.0.0.1:5060"
_RR = re.compile(rb"^Record-Route: (.*)$", re.M)


def _feed(h: FuzzProxy, data: bytes, source) -> list:
    before = len(h.sent)
    h.proxy.receive(data, source)
    return h.sent[before:]


def _call(h: FuzzProxy, n: int) -> dict[str, bytes]:
    """The bench call, keeping each message as it went in or out."""
    m: dict[str, bytes] = {"invite": caller_request("INVITE", _URI, n, 1, body=SDP)}
    m["invite_out"] = _feed(h, m["invite"], TRUSTED)[-1].data
    m["ok"] = uas_answer(m["invite_out"], "200 OK", n, SDP)
    m["ok_up"] = _feed(h, m["ok"], BACKEND_SOURCE)[-1].data
    route = "".join(f"Route: {r.decode().strip()}\r\n" for r in _RR.findall(m["ok_up"]))
    m["ack"] = caller_request("ACK", "sip:uas@127.0.0.1:5080", n, 1, route, to_tag=f"uas{n}")
    _feed(h, m["ack"], TRUSTED)
    m["bye"] = caller_request("BYE", "sip:uas@127.0.0.1:5080", n, 2, route, to_tag=f"uas{n}")
    m["bye_out"] = _feed(h, m["bye"], TRUSTED)[-1].data
    m["bye_ok"] = uas_answer(m["bye_out"], "200 OK", n)
    m["bye_ok_up"] = _feed(h, m["bye_ok"], BACKEND_SOURCE)[-1].data
    return m


def test_after_a_call_its_transactions_wait_retired_and_end_with_their_timers():
    h = FuzzProxy(clock=HeapClock())
    _call(h, 1)
    relay, stats = h.proxy.relay, h.proxy.stats
    assert relay.servers == {} and relay.clients == {}  # nothing left holding messages
    assert len(relay.retired_servers) == 2 and len(relay.retired_clients) == 2
    assert stats.get("tm:inuse_transactions") == 4  # still transactions, in their wait
    h.clock.advance(5.0)  # timer K (T4) ends the BYE's client transaction
    assert len(relay.retired_clients) == 1 and stats.get("tm:inuse_transactions") == 3
    h.clock.advance(27.0)  # J, L and M (64*T1) end the rest
    assert stats.get("tm:inuse_transactions") == 0
    assert len(relay.retired_servers) == 0 and len(relay.retired_clients) == 0


def test_repeats_during_the_wait_get_what_the_transactions_would_have_sent():
    h = FuzzProxy(clock=HeapClock())
    m = _call(h, 2)
    h.clock.advance(1.0)
    # The caller repeats its BYE: the same 200 again, from the transaction, not relayed.
    again = _feed(h, m["bye"], TRUSTED)
    assert [s.data for s in again] == [m["bye_ok_up"]]
    assert again[0].dest.host == TRUSTED.host and again[0].dest.port == TRUSTED.port
    # The caller repeats its INVITE after the 2xx: absorbed (RFC 6026 Accepted).
    assert _feed(h, m["invite"], TRUSTED) == []
    # The backend repeats its 2xx (the ACK was lost): it goes up to the caller again.
    up = _feed(h, m["ok"], BACKEND_SOURCE)
    assert [s.data for s in up] == [m["ok_up"]]
    assert up[0].dest.host == TRUSTED.host
    # The backend repeats its 200 to the BYE: absorbed (timer K).
    assert _feed(h, m["bye_ok"], BACKEND_SOURCE) == []
    # A CANCEL for the answered INVITE: 200 for the CANCEL, nothing to cancel downstream.
    cancel = caller_request("CANCEL", _URI, 2, 1, branch_of="INVITE")
    sent = _feed(h, cancel, TRUSTED)
    assert [s.status for s in sent] == [200] and sent[0].data.startswith(b"SIP/2.0 200")


def test_a_repeated_failure_gets_the_ack_again_from_the_retired_branch():
    h = FuzzProxy(clock=HeapClock())
    invite = caller_request("INVITE", _URI, 3, 1, body=SDP)
    out = _feed(h, invite, TRUSTED)[-1].data
    busy = uas_answer(out, "486 Busy Here", 3)
    first = _feed(h, busy, BACKEND_SOURCE)
    ack = [s for s in first if s.data.startswith(b"ACK ")]
    assert len(ack) == 1 and [s.status for s in first if s.status] == [486]
    assert len(h.proxy.relay.retired_clients) == 1  # the branch waits in Completed (D)
    again = _feed(h, busy, BACKEND_SOURCE)
    assert [s.data for s in again] == [ack[0].data]  # the same ACK, nothing upstream


def test_a_finished_call_costs_the_collector_a_handful_of_objects():
    h = FuzzProxy()  # twisted's Clock: a cancelled call leaves nothing behind
    spent = [0.0]
    for n in range(50):  # warm-up: caches and first allocations
        one_call(h, n, spent)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(1000, 2000):
        one_call(h, n, spent)
    h.sent.clear()
    gc.collect()
    per_call = (len(gc.get_objects()) - before) / 1000
    # A call's four transactions, waiting out their 32 s: 120 objects each before they
    # were retired, every one walked by the garbage collector.
    assert len(h.proxy.relay.retired_servers) >= 2000
    assert per_call < 14, per_call  # measured: 10.6
