"""Whole flows through the route script leave no reference cycles behind.

``sipgw serve`` keeps the cyclic collector away from what is long-lived (``_tune_gc``):
what a call leaves to it is found only by the rare full collection, and each collection
walks every live transaction. So what a call, a registration, a CANCEL or a failed branch
allocates must be freed by reference counting alone, the moment its transactions end.
"""

from __future__ import annotations

import gc
import re

import pytest

from sipgw.tools.fuzzproxy import TRUSTED, FuzzProxy
from sipgw.tools.harness import BACKEND_SOURCE
from sipgw.tools.loadflows import (
    SDP,
    HeapClock,
    caller_request,
    feed_timed,
    one_auth_call,
    one_call,
    one_register,
    uas_answer,
)

_INVITE_URI = "sip:service@127.0.0.1:5060"


def _cancelled_call(h: FuzzProxy, n: int, spent: list[float]) -> None:
    """INVITE, 180, CANCEL from the caller; the backend's 200 to the CANCEL and 487."""
    invite = feed_timed(h, caller_request("INVITE", _INVITE_URI, n, 1, body=SDP), TRUSTED,
                        spent)[-1].data
    feed_timed(h, uas_answer(invite, "180 Ringing", n), BACKEND_SOURCE, spent)
    cancel = feed_timed(h, caller_request("CANCEL", _INVITE_URI, n, 1, branch_of="INVITE"),
                        TRUSTED, spent)
    assert any(s.data.startswith(b"SIP/2.0 200") for s in cancel)
    to_backend = [s.data for s in cancel if s.data.startswith(b"CANCEL ")]
    assert to_backend, "the CANCEL was not forwarded"
    feed_timed(h, uas_answer(to_backend[-1], "200 OK", n), BACKEND_SOURCE, spent)
    up = feed_timed(h, uas_answer(invite, "487 Request Terminated", n), BACKEND_SOURCE, spent)
    assert any(s.data.startswith(b"SIP/2.0 487") for s in up)
    tag = re.search(rb"^To:.*;tag=([^;\r]+)", up[-1].data, re.M).group(1).decode()
    feed_timed(h, caller_request("ACK", _INVITE_URI, n, 1, to_tag=tag), TRUSTED, spent)


def _refused_call(h: FuzzProxy, n: int, spent: list[float]) -> None:
    """The backend answers 503: the failover hook runs, the caller gets a final answer."""
    invite = feed_timed(h, caller_request("INVITE", _INVITE_URI, n, 1, body=SDP), TRUSTED,
                        spent)[-1].data
    up = feed_timed(h, uas_answer(invite, "503 Service Unavailable", n), BACKEND_SOURCE, spent)
    assert any(s.data.startswith(b"SIP/2.0 5") for s in up)


def _unanswered_call(h: FuzzProxy, n: int, spent: list[float]) -> None:
    """The backend never answers: timers A and B run out, the caller gets a final answer."""
    feed_timed(h, caller_request("INVITE", _INVITE_URI, n, 1, body=SDP), TRUSTED, spent)


def _run_out_timers(h: FuzzProxy) -> None:
    """Five minutes in one-second steps: timers armed by a timer (G after B) run out too."""
    for _ in range(300):
        h.clock.advance(1.0)


@pytest.mark.parametrize("flow", [one_call, one_auth_call, one_register, _cancelled_call,
                                  _refused_call, _unanswered_call])
def test_a_flow_leaves_nothing_for_the_cyclic_collector(flow):
    h = FuzzProxy(clock=HeapClock())
    spent = [0.0]
    for n in range(20):  # warm-up: caches and first allocations are not garbage
        flow(h, n, spent)
    _run_out_timers(h)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for n in range(100, 300):
            flow(h, n, spent)
        _run_out_timers(h)
        h.sent.clear()
        assert h.proxy.relay.servers == {} and h.proxy.relay.clients == {}
        found = gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    assert found == 0, f"{found} objects in reference cycles after 200 runs of {flow.__name__}"
