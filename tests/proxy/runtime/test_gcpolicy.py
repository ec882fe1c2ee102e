"""sipgw's collector policy: young survivors frozen, cycles found by the scheduled full pass."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest
from twisted.internet.task import Clock

from sipgw.proxy.runtime import gcpolicy


class _Node:
    def __init__(self) -> None:
        self.other = None


@pytest.fixture
def policy():
    """The policy installed in this process, and the process's collector put back after."""
    saved = gc.get_threshold()
    gc.collect()
    gc.disable()  # only the collections the test asks for
    gcpolicy.install()
    yield
    gc.callbacks.remove(gcpolicy._freeze_survivors)
    gcpolicy._installed = False
    gc.unfreeze()
    gc.set_threshold(*saved)
    gc.enable()
    gc.collect()


def test_a_young_collection_freezes_what_survives_and_refcounting_still_frees_it(policy):
    kept = [_Node() for _ in range(100)]
    frozen = gc.get_freeze_count()
    gc.collect(0)
    assert gc.get_freeze_count() >= frozen + 100  # out of the collector's sight from now on
    probe = weakref.ref(kept[0])
    del kept
    assert probe() is None  # dead the moment nothing refers to it, frozen or not


def _frozen_cycle() -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gc.collect(0)  # the pair survives a young collection: frozen
    probe = weakref.ref(a)
    del a, b
    gc.collect(0)
    assert probe() is not None  # a frozen cycle: no young collection will find it
    return probe


def test_a_full_collection_runs_when_memory_has_grown_by_a_quarter(policy):
    clock = Clock()
    loop = gcpolicy.start(clock)
    try:
        probe = _frozen_cycle()
        clock.advance(gcpolicy.CHECK_INTERVAL)
        assert probe() is not None  # a steady process is not paused
        grown = [[i] for i in range(sys.getallocatedblocks() // 2)]
        clock.advance(gcpolicy.CHECK_INTERVAL)
        assert probe() is None
        assert gcpolicy.last_full["found"] >= 2 and gcpolicy.last_full["seconds"] >= 0
        assert gc.get_freeze_count() > len(grown)  # the survivors were frozen again
    finally:
        loop.stop()


def test_a_full_collection_runs_at_least_once_an_hour(policy):
    clock = Clock()
    loop = gcpolicy.start(clock)
    try:
        probe = _frozen_cycle()
        clock.pump([gcpolicy.CHECK_INTERVAL] * int(gcpolicy.FULL_INTERVAL
                                                    // gcpolicy.CHECK_INTERVAL - 1))
        assert probe() is not None
        clock.advance(gcpolicy.CHECK_INTERVAL)
        assert probe() is None
    finally:
        loop.stop()
