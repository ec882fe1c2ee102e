"""Domains that are ours because the subscriber store has users in them.

``auth.realm``, the hosts of ``proxy.aliases`` and sipgw's own addresses are ours by
configuration. On the embedded default there is no realm, and ``sipgw users add 5001
--domain example.com`` must be all it takes for 5001@example.com to register: so a domain
with at least one subscriber in the store is ours too (``SubscriberStore.has_domain``).

The store is asked only for a domain that is not ours by configuration, and the answer is
remembered: a yes for ``POSITIVE_TTL`` seconds, a no for ``NEGATIVE_TTL`` (short, so that a
user just added works within seconds). A REGISTER flood for one domain costs one lookup
per TTL; lookups of one domain in flight at once are one lookup. Memory is bounded: at most
``MAX_ENTRIES`` answers are remembered (the oldest forgotten first) and as many lookups in
flight (beyond, ``StoreUnavailable``: the request gets 503 and comes again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from sipgw.store import StoreUnavailable, SubscriberStore

POSITIVE_TTL = 30.0  # seconds a domain with subscribers stays ours without asking again
NEGATIVE_TTL = 5.0  # seconds a domain without stays foreign: a new user waits this at most
MAX_ENTRIES = 10_000


class StoreDomains:
    def __init__(self, store: SubscriberStore, now: Callable[[], float], *,
                 positive_ttl: float = POSITIVE_TTL, negative_ttl: float = NEGATIVE_TTL,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.store = store
        self.now = now
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._known: OrderedDict[str, tuple[bool, float]] = OrderedDict()  # → (ours, until)
        self._asking: dict[str, list[defer.Deferred]] = {}

    def ours(self, domain: str) -> defer.Deferred:
        """Fires with True when ``domain`` has subscribers; errbacks as the store does."""
        known = self._known.get(domain)
        if known is not None and known[1] > self.now():
            return defer.succeed(known[0])
        d: defer.Deferred = defer.Deferred()
        waiting = self._asking.get(domain)
        if waiting is not None:
            waiting.append(d)
            return d
        if len(self._asking) >= self.max_entries:
            return defer.fail(StoreUnavailable(f"{len(self._asking)} domain lookups in flight"))
        self._asking[domain] = [d]
        self.store.has_domain(domain).addBoth(self._answered, domain)
        return d

    def any_ours(self, domains: list[str]) -> defer.Deferred:
        """True as soon as one of ``domains`` is ours (asked in order, the next only when
        the one before is not)."""
        d = self.ours(domains[0])
        for domain in domains[1:]:
            d.addCallback(lambda ours, domain: ours or self.ours(domain), domain)
        return d

    def _answered(self, result, domain: str) -> None:
        waiting = self._asking.pop(domain, [])
        if not isinstance(result, Failure):
            ours = bool(result)
            self._known.pop(domain, None)
            ttl = self.positive_ttl if ours else self.negative_ttl
            self._known[domain] = (ours, self.now() + ttl)
            while len(self._known) > self.max_entries:
                self._known.popitem(last=False)
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(bool(result))
