"""sipgw's collector policy: young survivors frozen, cycles found by the scheduled full pass."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.task import Clock

from sipgw.proxy import gcpolicy


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


def test_the_scheduled_full_collection_frees_cycles_that_aged_among_frozen_objects(policy):
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gc.collect(0)  # the pair survives a young collection: frozen
    probe = weakref.ref(a)
    del a, b
    gc.collect(0)
    assert probe() is not None  # a frozen cycle: no young collection will find it
    clock = Clock()
    loop = gcpolicy.start(clock, interval=300)
    try:
        clock.advance(299)
        assert probe() is not None
        clock.advance(1)
        assert probe() is None
        assert gcpolicy.last_full["found"] >= 2 and gcpolicy.last_full["seconds"] >= 0
        assert gc.get_freeze_count() > 0  # the survivors were frozen again
    finally:
        loop.stop()
