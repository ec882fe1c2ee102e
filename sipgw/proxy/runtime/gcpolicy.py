"""How sipgw runs CPython's cyclic garbage collector: young objects only, and a full pass
when memory grows.

At 1,000 calls/s the proxy holds some 30,000 calls' transactions at once (timers J, L and M
keep them 32 s), a few million objects. CPython's generational collector walks them again
and again as they age: measured on bench/calls.py, one generation-1 collection took
0.73 s, longer than T1, so every caller retransmitted at once and the proxy collapsed under
its own retransmissions; the collector was a tenth of the CPU besides.

Objects die by reference counting the moment nothing refers to them; the collector is
needed only for garbage in reference cycles, and the route script makes none
(tests/proxy/relay/test_no_cycles.py). So:

* a young collection runs every ``YOUNG_THRESHOLD`` net allocations, as usual, and what
  survives it is frozen (``gc.freeze``): moved out of the collector's sight for good,
  still freed by reference counting when it dies;
* a full collection unfreezes everything, collects cycles anywhere (a Failure's
  traceback, a library's internals; sipgw's own connections make none,
  tests/proxy/transport/test_connection_cycles.py), and freezes the survivors again. It walks
  every live object (0.6 s with the 32,000 calls a 1,000 calls/s load
  keeps in their 32 s wait), so it runs only when the memory Python holds has grown by a
  quarter since the last one (checked every ``CHECK_INTERVAL`` s), or ``FULL_INTERVAL``
  has passed: a steady load is never paused, garbage that accumulates is still found.
  Its pause is logged, and ``core.memory`` reports it.
"""

from __future__ import annotations

import gc
import sys
import time

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="sipgw.gc")

YOUNG_THRESHOLD = 5_000  # small: the young objects walked stay in the CPU's caches
CHECK_INTERVAL = 60.0  # seconds between looks at the memory Python holds
GROWTH = 1.25  # a full collection once it has grown by this factor since the last one
FULL_INTERVAL = 3600.0  # and at least this often (seconds)
SLOW_FULL = 0.1  # a full collection longer than this is logged at info

_installed = False
_baseline = {"blocks": 0, "at": 0.0}  # after the last full collection

# What the last full collection did; ``core.memory`` shows it.
last_full: dict[str, float | int | None] = {"seconds": None, "found": None, "at": None}


def _freeze_survivors(phase: str, info: dict) -> None:
    if phase == "stop" and info["generation"] == 0:
        gc.freeze()


def install() -> None:
    """Freeze what start-up left (modules, config), and every young collection's
    survivors from now on. Idempotent."""
    global _installed
    _installed = True
    gc.freeze()
    # The older generations only ever see what a young collection let through between
    # its end and the freeze right after it: nothing. Their thresholds do not matter.
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def full_collection() -> int:
    """Collect cycles among every object, frozen or not; returns how many were found."""
    start = time.perf_counter()
    gc.unfreeze()
    try:
        found = gc.collect()
    finally:
        if _installed:
            gc.freeze()
    took = time.perf_counter() - start
    last_full.update(seconds=round(took, 4), found=found, at=time.time())
    _baseline["blocks"] = sys.getallocatedblocks()
    if took > SLOW_FULL:
        log.info("full garbage collection took {ms:.0f} ms ({n} objects in cycles freed)",
                 ms=took * 1000, n=found)
    return found


def maybe_full_collection(now: float) -> bool:
    """The scheduled check: a full collection if memory grew or it is time."""
    if (sys.getallocatedblocks() > _baseline["blocks"] * GROWTH
            or now - _baseline["at"] >= FULL_INTERVAL):
        full_collection()
        _baseline["at"] = now
        return True
    return False


def start(clock: IReactorTime, interval: float = CHECK_INTERVAL) -> LoopingCall:
    install()
    _baseline.update(blocks=sys.getallocatedblocks(), at=clock.seconds())
    loop = LoopingCall(lambda: maybe_full_collection(clock.seconds()))
    loop.clock = clock
    loop.start(interval, now=False)
    return loop
