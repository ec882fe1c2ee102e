"""Transactions in their last wait: a few bytes each instead of their messages.

After its final response a transaction still lives for up to 32 s (timers J, L, M, D on
UDP; K and I 5 s) only to absorb retransmissions, and at 1,000 calls/s that is some 100,000
of them, each with its requests, responses and their header fields: the bulk of the
proxy's memory and of what the garbage collector walks. Once a transaction is
``absorbing()`` the relay drops it and keeps here, under the same key, what a repeat still
needs: the bytes to send again and where to (``Retired``), until the end timer.
"""

from __future__ import annotations

from typing import NamedTuple

from sipgw.proxy.relay.timerq import TimerQueue
from sipgw.proxy.transport import Destination


class Retired(NamedTuple):
    key: tuple  # the transaction's, in its table
    method: str  # the transaction's: an INVITE client passes a late 2xx on (§16.7 step 5)
    resend: bytes | None  # sent again when the peer repeats itself (repeat())
    dest: Destination | None  # where resend goes
    upstream: Destination | None  # INVITE client: where a 2xx goes, if its server was here


class RetiredTable:
    """Retired server or client transactions by key, each until its end time."""

    __slots__ = ("entries", "_timers", "_expired")

    def __init__(self, clock, expired=lambda: None) -> None:
        self.entries: dict[tuple, Retired] = {}
        self._timers = TimerQueue(clock, self._expire)
        self._expired = expired  # called after an entry's end time removed it

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: tuple) -> Retired | None:
        return self.entries.get(key)

    def add(self, entry: Retired, until: float) -> None:
        self.entries[entry.key] = entry
        self._timers.at(until, entry)

    def _expire(self, entry: Retired) -> None:
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
            self._expired()
