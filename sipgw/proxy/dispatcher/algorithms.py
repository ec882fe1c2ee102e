"""Which destination of a set gets a request: Kamailio's ds_select algorithms, by number.

==  ======================================  ===============================================
0   hash over Call-ID                        every request of a call to the same destination
1   hash over the From URI (user@host)
2   hash over the To URI (user@host)
3   hash over the Request-URI user
4   round-robin
5   hash over the authorization username     round-robin when the request carries none
6   random
8   first by priority                        serial: the others only for failover
9   weight (attrs ``weight``, percent)       a shuffled wheel of 100 slots, walked in turn
10  call load (attrs ``maxload``)            INVITE: the fewest calls in progress; others 4
11  relative weight (attrs ``rweight``)      like 9, among the usable destinations only
==  ======================================  ===============================================

As in Kamailio, a choice that lands on an unusable destination (inactive, disabled) moves
to the next usable one of the set, wrapping around. The failover order is the choice, then
the rest of the set from there on.

One addition, so that a lower priority can be a backup: the algorithm runs among the
destinations of the best priority that has a usable one; lower priorities come after
them in the failover order. A set whose destinations share one priority (the usual
Kamailio list) behaves exactly as in Kamailio.

Pure: the randomness is an argument (``random.Random``), the request comes as ``Keys``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from sipgw.proxy.dispatcher.state import Target

SUPPORTED = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11})
HASHED = {0: "call_id", 1: "from_uri", 2: "to_uri", 3: "ruri_user", 5: "auth_user"}
WHEEL = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Keys:
    """What the hash algorithms read from a request."""

    method: str = "INVITE"
    call_id: str = ""
    from_uri: str = ""
    to_uri: str = ""
    ruri_user: str = ""
    auth_user: str = ""


def hash_text(text: str) -> int:
    """A stable hash (CRC-32): the same key gives the same destination across restarts."""
    return zlib.crc32(text.encode("utf-8", "surrogateescape"))


def weight_wheel(weights: Sequence[int], rng: random.Random) -> list[int]:
    """Kamailio's dp_init_weights: ``weight`` slots per destination out of 100, the rest
    given to the last one, then shuffled so that the slots of one are spread out."""
    wheel: list[int] = []
    for index, weight in enumerate(weights):
        wheel += [index] * weight
    wheel = wheel[:WHEEL]
    wheel += [len(weights) - 1] * (WHEEL - len(wheel))
    rng.shuffle(wheel)
    return wheel


def relative_wheel(weights: Sequence[int], rng: random.Random) -> list[int]:
    """Kamailio's dp_init_relative_weights: each destination's share of the sum."""
    total = sum(weights)
    if total <= 0:
        weights, total = [1] * len(weights), len(weights)
    wheel: list[int] = []
    for index, weight in enumerate(weights):
        wheel += [index] * (weight * WHEEL // total)
    wheel += [len(weights) - 1] * (WHEEL - len(wheel))
    rng.shuffle(wheel)
    return wheel


class SetSelector:
    """The per-set memory of the stateful algorithms (round-robin position, wheels)."""

    def __init__(self, algorithm: int, rng: random.Random) -> None:
        if algorithm not in SUPPORTED:
            raise ValueError(f"dispatcher algorithm {algorithm} is not supported "
                             f"(supported: {', '.join(map(str, sorted(SUPPORTED)))})")
        self.algorithm = algorithm
        self.rng = rng
        self.last = 0  # round-robin position
        self._wheels: dict[tuple, tuple[list[int], list[int]]] = {}  # key → (wheel, pos)

    def order(self, targets: Sequence[Target], keys: Keys) -> list[Target]:
        """Usable destinations in the order to try them; [] when none is usable."""
        tiers: list[list[Target]] = []
        for t in targets:  # already ordered by priority, higher first
            if tiers and tiers[-1][0].priority == t.priority:
                tiers[-1].append(t)
            else:
                tiers.append([t])
        out: list[Target] = []
        for tier in tiers:
            if not out and any(t.usable for t in tier):
                first = self._choose(tier, keys)
                if first is None:
                    continue  # algorithm 10: every one at maxload; lower priorities next
                n = len(tier)
                out += [tier[(first + i) % n] for i in range(n) if tier[(first + i) % n].usable]
            else:
                out += [t for t in tier if t.usable]
        return out

    def _choose(self, tier: Sequence[Target], keys: Keys) -> int | None:
        """The index the algorithm picks in ``tier`` before skipping unusable ones."""
        alg = self.algorithm
        n = len(tier)
        if alg == 5 and not keys.auth_user:
            alg = 4  # Kamailio: no username → round-robin
        if alg == 10 and keys.method != "INVITE":
            alg = 4  # only INVITEs create calls; the rest go round
        if alg in HASHED:
            return hash_text(getattr(keys, HASHED[alg])) % n
        if alg == 4:
            index = self.last % n
            self.last = index + 1
            return index
        if alg == 6:
            return self.rng.randrange(n)
        if alg == 8:
            return 0
        if alg == 9:
            return self._turn(("w", tuple(t.uri for t in tier)), tier, weighted=True)
        if alg == 11:
            usable = [i for i, t in enumerate(tier) if t.usable]
            key = ("r", tuple(tier[i].uri for i in usable))
            return usable[self._turn(key, [tier[i] for i in usable], weighted=False)]
        return _least_loaded(tier)  # 10

    def _turn(self, key: tuple, targets: Sequence[Target], *, weighted: bool) -> int:
        entry = self._wheels.get(key)
        if entry is None:
            if weighted:
                wheel = weight_wheel([t.attrs.weight for t in targets], self.rng)
            else:
                wheel = relative_wheel([t.attrs.rweight or t.attrs.weight for t in targets],
                                       self.rng)
            if len(self._wheels) > 64:
                self._wheels.clear()  # sets change rarely; do not grow without bound
            entry = self._wheels[key] = (wheel, [0])
        wheel, pos = entry
        index = wheel[pos[0]]
        pos[0] = (pos[0] + 1) % WHEEL
        return index


def _least_loaded(tier: Sequence[Target]) -> int | None:
    """Kamailio's ds_get_leastloaded: the usable one with fewest calls, under ``maxload``."""
    best = None
    for i, t in enumerate(tier):
        if not t.usable or (t.attrs.maxload and t.load >= t.attrs.maxload):
            continue
        if best is None or t.load < tier[best].load:
            best = i
    return best
