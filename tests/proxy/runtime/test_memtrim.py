"""Memory freed after a burst goes back to the system (malloc_trim), once a minute."""

from __future__ import annotations

import os

from twisted.internet.task import Clock

from sipgw.proxy.runtime import memtrim


def rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_freed_after_a_burst_is_returned_to_the_system():
    # 60,000 messages' worth of 2 kB buffers, as a flood leaves them: freed, but kept by
    # malloc (each below the size malloc would map on its own).
    burst = [bytes(2048) + i.to_bytes(4, "big") for i in range(60_000)]
    peak = rss_kb()
    keep = burst[-1:]  # the last one stays alive: the heap top is not free
    del burst
    before = rss_kb()
    assert memtrim.trim()
    after = rss_kb()
    assert before - after > 50_000, (peak, before, after)
    assert keep


def test_the_trim_runs_once_a_minute_until_stopped(monkeypatch):
    calls = []
    monkeypatch.setattr(memtrim, "trim", lambda: calls.append(1) or True)
    clock = Clock()
    loop = memtrim.start_trimming(clock)
    clock.advance(59)
    assert calls == []
    clock.advance(1)
    clock.advance(60)
    assert len(calls) == 2
    loop.stop()
    clock.advance(600)
    assert len(calls) == 2
