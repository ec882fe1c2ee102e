"""Bans over several nodes: failed authentications counted and bans kept in Redis
(``sipgw.store.bans``), when the subscriber store is Redis and so may be shared.

- A failure seen here is counted in this node (``bans.py``, and its workers over their
  channel) and, by the worker that saw it, in Redis: one round trip, which bans the user or
  address there when the count over every node reaches the limit; this worker then bans
  it at once, the others within a poll. A success after failures this node counted
  clears the user's count there as here (one round trip, once; other successes, none).
- Every worker asks Redis every ``POLL_INTERVAL`` seconds what changed since the version
  it holds: nothing (one short string), the bans added and lifted since (Redis's log), or,
  when the log does not reach back that far (at start), the whole set of bans: then a ban
  this worker had seen in Redis and the set no longer holds was lifted on another node,
  and is lifted here. So a ban reaches every node within about half a second, and the
  successful path costs nothing: whether a request is banned is asked of memory, never of
  Redis.
- Every worker polls, rather than one per node passing the set on over the workers'
  channel: a poll costs Redis a few microseconds, and then no worker depends on another
  being up (worker 0 restarting does not stop the bans from arriving), nor on an order
  between what Redis and the channel say.
- Polling follows a Sentinel failover by itself: it goes wherever the store's one
  connection goes, with nothing to subscribe to again.
- While Redis cannot be reached, this node goes on counting its own failures and banning
  on them; the bans it made meanwhile are given to Redis at the first poll that works
  (so are any Redis lost: a version of another epoch means that, and lifts nothing).
- ``auth.unban`` lifts here at once and in Redis, hence everywhere within a poll. Without
  Redis it lifts on this node only: the others keep the ban, and this worker takes it
  back if it reads the whole set again (after a restart).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from sipgw.proxy.auth.bans import Bans, Key
from sipgw.proxy.limits import CapLog
from sipgw.store import StoreError
from sipgw.store.bans import Heard

log = Logger(namespace="sipgw.auth")

POLL_INTERVAL = 0.4  # seconds between two questions of one worker to Redis


class ClusterBans:
    """``board``: ``sipgw.store.bans.RedisBans`` (failure, success, poll, unban; each a
    Deferred)."""

    def __init__(self, bans: Bans, board, clock, *, interval: float = POLL_INTERVAL) -> None:
        self.bans = bans
        self.board = board
        self.clock = clock
        self.interval = interval
        self.version: str | None = None  # of the set last read; None: never read
        self.confirmed: set[Key] = set()  # bans here that Redis held when last asked
        self._next: IDelayedCall | None = None
        self._running = False
        self._down = False
        self.cap_log = CapLog(log, clock.seconds)
        bans.on_own_failure = self.failure
        bans.on_own_success = self.success

    def start(self) -> None:
        self._running = True
        self._poll()  # at once: a (re)started worker takes on the cluster's bans

    def stop(self) -> None:
        self._running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    # -- a failure seen here ----------------------------------------------------------

    def failure(self, user: str, source: str) -> None:
        b = self.bans
        counted = [(("user", user), b.max_failures_user),
                   (("source", source), b.max_failures_source)]
        d = self.board.failure(counted, b.failure_window, b.ban_time)
        d.addCallbacks(self._counted, self._unreachable, callbackArgs=(counted, user, source))
        d.addErrback(lambda failure: log.failure("auth: cluster bans", failure))

    def _counted(self, counts: list[int], counted: list[tuple[Key, int]], user: str,
                 source: str) -> None:
        self._reachable()
        for (key, limit), n in zip(counted, counts, strict=True):
            if n >= limit:
                last = f"the last from {source}" if key[0] == "user" else f"the last for {user}"
                self.bans.impose(key, self.bans.ban_time, count=n, last=last)
                self.confirmed.add(key)

    def success(self, user: str) -> None:
        """A user this node had counted failures of got the password right: the count
        over the cluster starts again from zero too."""
        d = self.board.success(("user", user))
        d.addCallbacks(lambda _: self._reachable(), self._unreachable)
        d.addErrback(lambda failure: log.failure("auth: cluster bans", failure))

    # -- the poll ---------------------------------------------------------------------

    def _poll(self) -> None:
        self._next = None
        # Bans made here that Redis may not hold (made while it was unreachable, or from a
        # count of this node's alone): given to it with the question.
        add = [(key, left) for key, left in self.bans.in_force() if key not in self.confirmed]
        d = self.board.poll(self.version, add)
        d.addCallbacks(self._heard, self._unreachable, callbackArgs=(add,))
        d.addErrback(lambda failure: log.failure("auth: cluster bans", failure))
        d.addBoth(self._again)

    def _again(self, _) -> None:
        if self._running:
            self._next = self.clock.callLater(self.interval, self._poll)

    def _heard(self, heard: Heard, added: list[tuple[Key, float]]) -> None:
        self._reachable()
        # One connection answers in order: what Redis said reflects every call sent
        # before this one, and nothing sent after.
        seen = self.confirmed | {key for key, _ in added}
        if heard.changes is not None:
            for op, key, left in heard.changes:
                if op == "lift":
                    self.bans.lift(key)
                    seen.discard(key)
                elif left > 0:
                    self.bans.impose(key, left)
                    seen.add(key)
            self.version, self.confirmed = heard.version, seen
            return
        if heard.bans is None:
            self.confirmed = seen
            return
        # The whole set: what it lacks and was seen in Redis before was lifted there.
        if self.version is not None and _epoch(self.version) not in ("0",
                                                                     _epoch(heard.version)):
            log.warn("auth: Redis lost the bans it held (their version went from {a} to "
                     "{b}: restarted empty?); this node's bans are given to it again",
                     a=self.version, b=heard.version)
            seen = set()
        self.version = heard.version
        held = dict(heard.bans)
        for key, left in heard.bans:
            self.bans.impose(key, left)
        for key in seen - held.keys():
            self.bans.lift(key)
        self.confirmed = set(held)

    # -- auth.unban -------------------------------------------------------------------

    def unban(self, name: str, here: int) -> defer.Deferred:
        """Lift ``name`` in Redis too, after ``here`` bans were lifted here: fires with
        the larger count (a ban this worker had not taken on yet is counted)."""
        def lifted(n: int) -> int:
            return max(n, here)

        def failed(failure) -> int:
            failure.trap(StoreError)
            log.warn("auth: auth.unban {name}: lifted on this node only: Redis cannot be "
                     "reached ({err}); the other nodes keep the ban: lift it again once "
                     "Redis is back",
                     name=name, err=failure.getErrorMessage())
            return here

        return self.board.unban(name).addCallbacks(lifted, failed)

    # -- Redis up and down ------------------------------------------------------------

    def _unreachable(self, failure) -> None:
        failure.trap(StoreError)
        self._down = True
        self.cap_log.once("cluster-bans", "auth: bans are not shared with the other nodes "
                          "while Redis cannot be reached ({err}): this node counts its own "
                          "failed authentications and keeps its own bans meanwhile",
                          err=failure.getErrorMessage())

    def _reachable(self) -> None:
        if self._down:
            self._down = False
            log.info("auth: Redis reachable again: bans shared with the other nodes again")


def _epoch(version: str) -> str:
    """A version is "EPOCH:N" (``sipgw.store.bans``); the epoch changes only when Redis
    lost the bans, or from "0" when the first ban ever is made."""
    return version.partition(":")[0]
