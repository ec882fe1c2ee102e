"""A subscriber store in a dict: the verified fake the unit tests use.

It behaves as the real stores do (``tests/store`` runs one contract suite against all
three), and can be told to fail, so the proxy's reaction to a store outage is testable
without a server: ``down = StoreUnavailable(...)`` makes every call errback, ``hold =
True`` leaves lookups pending until ``release()``.
"""

from __future__ import annotations

from twisted.internet import defer

from sipgw.store.base import Subscriber


class MemoryStore:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], Subscriber] = {}
        self.down: Exception | None = None
        self.hold = False
        self.lookups = 0
        self.domain_lookups = 0
        self._pending: list[tuple[defer.Deferred, object]] = []

    def get(self, username: str, domain: str) -> defer.Deferred:
        self.lookups += 1
        if self.down is not None:
            return defer.fail(self.down)
        return self._answer(self.records.get((username, domain)))

    def _answer(self, found) -> defer.Deferred:
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self._pending.append((d, found))
            return d
        return defer.succeed(found)

    def release(self) -> None:
        """Answer the lookups held back by ``hold``."""
        pending, self._pending = self._pending, []
        for d, found in pending:
            d.callback(found)

    def put(self, subscriber: Subscriber) -> defer.Deferred:
        if self.down is not None:
            return defer.fail(self.down)
        self.records[(subscriber.username, subscriber.domain)] = subscriber
        return defer.succeed(None)

    def delete(self, username: str, domain: str) -> defer.Deferred:
        if self.down is not None:
            return defer.fail(self.down)
        return defer.succeed(self.records.pop((username, domain), None) is not None)

    def all(self) -> defer.Deferred:
        if self.down is not None:
            return defer.fail(self.down)
        return defer.succeed(sorted(self.records.values(), key=lambda s: (s.domain, s.username)))

    def has_domain(self, domain: str) -> defer.Deferred:
        self.domain_lookups += 1
        if self.down is not None:
            return defer.fail(self.down)
        return self._answer(any(d == domain for _, d in self.records))

    def close(self) -> defer.Deferred:
        return defer.succeed(None)
