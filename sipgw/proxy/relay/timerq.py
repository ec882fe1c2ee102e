"""Many deadlines on one reactor timer: the transactions' timers.

Every live transaction has a timer, and at 1,000 calls/s tens of thousands are armed at
once (timers J, L and M wait 32 s). A reactor ``DelayedCall`` each costs seven objects for
the cyclic collector to walk for as long as it is armed (the call, four bound methods,
its args and kwargs), a Python ``__lt__`` per heap comparison, and a cancelled one stays
in the reactor's heap until its time comes. Here an armed timer is one
``[deadline, seq, owner]`` list, compared in C, and one reactor call is armed for the
earliest of them.

Cancelling marks the entry (its owner becomes None); dead entries are skipped when they
come up, and the heap is rebuilt without them once they are the majority, as Twisted does
with its own cancelled calls.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="sipgw.timers")

Entry = list  # [deadline, seq, owner]; owner None once cancelled or fired

_REBUILD_MIN = 1024


class TimerQueue:
    """``at(deadline, owner)`` arms ``on_due(owner)`` for ``deadline`` (on ``clock``'s
    time); it returns the entry, which ``cancel(entry)`` disarms."""

    __slots__ = ("clock", "on_due", "_heap", "_seq", "_call", "_call_at", "_dead", "_live")

    def __init__(self, clock, on_due: Callable[[Any], None]) -> None:
        self.clock = clock
        self.on_due = on_due
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        self._call = None  # the reactor call, armed for self._call_at
        self._call_at: float | None = None
        self._dead = 0
        self._live = 0

    def __len__(self) -> int:
        """Timers armed and not yet fired."""
        return self._live

    def at(self, deadline: float, owner: Any) -> Entry:
        entry = [deadline, next(self._seq), owner]
        heapq.heappush(self._heap, entry)
        self._live += 1
        if self._call_at is None or deadline < self._call_at:
            self._schedule(deadline)
        return entry

    def cancel(self, entry: Entry) -> None:
        if entry[2] is None:
            return
        entry[2] = None
        self._live -= 1
        self._dead += 1
        heap = self._heap
        if self._dead > _REBUILD_MIN and self._dead * 2 > len(heap):
            # In place: _fire may be holding the list.
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
            self._dead = 0
        if not self._live:
            heap.clear()
            self._dead = 0
            if self._call is not None:
                self._call.cancel()
                self._call = self._call_at = None

    def _schedule(self, deadline: float) -> None:
        call = self._call
        if call is not None:
            call.cancel()
        now = self.clock.seconds()
        self._call = self.clock.callLater(max(deadline - now, 0.0), self._fire)
        self._call_at = deadline

    def _fire(self) -> None:
        self._call = self._call_at = None
        now = self.clock.seconds()
        heap = self._heap
        # Timers armed by the handlers below wait for the next turn, even when already
        # due: a handler that re-arms at once cannot keep this loop going.
        last = next(self._seq)
        pop = heapq.heappop
        while heap and heap[0][0] <= now and heap[0][1] < last:
            entry = pop(heap)
            owner = entry[2]
            if owner is None:
                self._dead -= 1
                continue
            entry[2] = None
            self._live -= 1
            try:
                self.on_due(owner)
            except Exception:
                # One broken handler must not leave every other timer unfired.
                log.failure("timer handler failed for {owner!r}", owner=owner)
        while heap and heap[0][2] is None:
            pop(heap)
            self._dead -= 1
        # Handlers may have armed the call for a later timer than the one now first.
        if heap and (self._call_at is None or heap[0][0] < self._call_at):
            self._schedule(heap[0][0])
