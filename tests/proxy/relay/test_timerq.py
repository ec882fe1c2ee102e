"""The transactions' timer queue: many deadlines on one reactor timer."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipgw.proxy.relay.timerq import TimerQueue


def _queue():
    clock = Clock()
    fired: list[tuple[float, object]] = []
    q = TimerQueue(clock, lambda owner: fired.append((clock.seconds(), owner)))
    return clock, q, fired


def test_timers_fire_at_their_deadline_in_deadline_order_on_one_reactor_call():
    clock, q, fired = _queue()
    for name, at in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("b2", 2.0)):
        q.at(at, name)
    assert len(clock.getDelayedCalls()) == 1 and len(q) == 4
    clock.advance(0.999)
    assert fired == []
    clock.advance(0.001)
    assert fired == [(1.0, "a")]
    clock.advance(5)
    # Equal deadlines fire in the order they were armed.
    assert [o for _, o in fired] == ["a", "b", "b2", "c"]
    assert len(q) == 0 and clock.getDelayedCalls() == []


def test_an_earlier_timer_moves_the_reactor_call_and_a_cancelled_one_never_fires():
    clock, q, fired = _queue()
    late = q.at(10.0, "late")
    q.at(0.5, "early")
    clock.advance(0.5)
    assert fired == [(0.5, "early")]
    q.cancel(late)
    q.cancel(late)  # twice is harmless
    assert len(q) == 0 and clock.getDelayedCalls() == []
    clock.advance(20)
    assert fired == [(0.5, "early")]


def test_a_handler_that_rearms_at_once_waits_for_the_next_turn_and_one_that_fails_stops_nothing():
    clock = Clock()
    fired: list[object] = []

    def on_due(owner):
        fired.append(owner)
        if owner == "boom":
            raise RuntimeError("handler bug")
        if owner == "again" and fired.count("again") < 3:
            q.at(clock.seconds(), "again")  # already due: fires on the next turn, not now

    q = TimerQueue(clock, on_due)
    q.at(1.0, "again")
    q.at(1.0, "boom")
    q.at(1.0, "after")
    clock.advance(1.0)  # Clock runs the next turns within the same advance
    assert fired == ["again", "boom", "after", "again", "again"]
    assert len(q) == 0


def test_thousands_of_cancellations_are_swept_and_the_survivors_still_fire_on_time():
    clock, q, fired = _queue()
    entries = [q.at(32.0 + i / 1000, i) for i in range(5000)]
    for e in entries[:4000]:
        q.cancel(e)
    assert len(q) == 1000
    assert len(q._heap) < 5000  # the dead were swept out, not kept for 32 s
    clock.advance(31.999)
    assert fired == []
    clock.advance(10)
    assert [o for _, o in fired] == list(range(4000, 5000))
