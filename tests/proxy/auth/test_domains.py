"""Domains with users in the store: the answers remembered, and the bounds on memory
(the AUTH step's use of them: tests/proxy/auth/test_auth.py)."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipgw.proxy.auth.domains import StoreDomains
from sipgw.store import StoreUnavailable, make_subscriber
from sipgw.store.memory import MemoryStore


def answer(d):
    box = []
    d.addBoth(box.append)
    return box[0] if box else None


def rig(**bounds) -> tuple[StoreDomains, MemoryStore, Clock]:
    store, clock = MemoryStore(), Clock()
    store.records[("5001", "example.com")] = make_subscriber("5001", "example.com", "pw")
    return StoreDomains(store, clock.seconds, **bounds), store, clock


def test_a_yes_is_remembered_30_s_and_a_no_5_s():
    domains, store, clock = rig()
    assert answer(domains.ours("example.com")) is True
    assert answer(domains.ours("other.test")) is False
    assert store.domain_lookups == 2
    clock.advance(4.9)
    assert (answer(domains.ours("example.com")), answer(domains.ours("other.test"))) == (
        True, False)
    assert store.domain_lookups == 2
    clock.advance(0.1)
    answer(domains.ours("other.test"))
    assert store.domain_lookups == 3
    clock.advance(25)
    answer(domains.ours("example.com"))
    assert store.domain_lookups == 4


def test_the_remembered_answers_are_bounded_the_oldest_forgotten_first():
    domains, store, _ = rig(max_entries=2)
    for domain in ("a.test", "b.test", "c.test"):
        answer(domains.ours(domain))
    answer(domains.ours("c.test"))
    answer(domains.ours("b.test"))
    assert store.domain_lookups == 3
    answer(domains.ours("a.test"))  # forgotten for room: asked again
    assert store.domain_lookups == 4


def test_lookups_in_flight_are_bounded_and_beyond_them_the_store_counts_as_unavailable():
    domains, store, _ = rig(max_entries=2)
    store.hold = True
    pending = [domains.ours("a.test"), domains.ours("b.test"), domains.ours("a.test")]
    refused = answer(domains.ours("c.test"))
    assert refused.check(StoreUnavailable)
    assert store.domain_lookups == 2
    store.release()
    assert [answer(d) for d in pending] == [False, False, False]


def test_a_failed_lookup_is_not_remembered():
    domains, store, _ = rig()
    store.down = StoreUnavailable("redis down")
    assert answer(domains.ours("example.com")).check(StoreUnavailable)
    store.down = None
    assert answer(domains.ours("example.com")) is True


def test_any_ours_asks_the_second_domain_only_when_the_first_is_not():
    domains, store, _ = rig()
    assert answer(domains.any_ours(["example.com", "x.test"])) is True
    assert store.domain_lookups == 1
    assert answer(domains.any_ours(["y.test", "example.com"])) is True
    assert answer(domains.any_ours(["y.test", "z.test"])) is False
