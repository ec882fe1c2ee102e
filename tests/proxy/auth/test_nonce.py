"""Stateless nonces and the bounded replay and ban tables, on a hand-moved clock."""

from __future__ import annotations

import itertools

from twisted.internet.task import Clock

from sipgw.config import AuthConfig, LimitsConfig
from sipgw.proxy.auth.bans import Bans
from sipgw.proxy.auth.nonce import NONCE_LENGTH, Nonces, NonceState


class Now:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def counter_random():
    n = itertools.count()
    return lambda size: next(n).to_bytes(size, "big")


def test_a_nonce_is_hex_of_fixed_length_and_valid_only_where_it_was_issued():
    now = Now()
    a = Nonces(b"s", 300, now, random=counter_random())
    nonce = a.new()
    assert len(nonce) == NONCE_LENGTH and int(nonce, 16) >= 0
    assert a.check(nonce) is NonceState.VALID
    # Another process with the secret (a worker, a node, this one restarted): stale.
    assert Nonces(b"s", 300, now).check(nonce) is NonceState.STALE
    assert Nonces(b"other", 300, now).check(nonce) is NonceState.INVALID


def test_a_tampered_or_garbled_nonce_is_invalid():
    nonces = Nonces(b"s", 300, Now())
    nonce = nonces.new()
    later = f"{int(nonce[:12], 16) + 1000:012x}" + nonce[12:]  # pushed its time forward
    for bad in (later, nonce[:-1], nonce + "0", "", "z" * NONCE_LENGTH):
        assert nonces.check(bad) is NonceState.INVALID


def test_a_nonce_is_stale_after_its_lifetime_and_not_before():
    now = Now()
    nonces = Nonces(b"s", 300, now)
    nonce = nonces.new()
    now.t += 300
    assert nonces.check(nonce) is NonceState.VALID
    now.t += 0.01
    assert nonces.check(nonce) is NonceState.STALE


def test_the_nonce_count_must_grow_and_a_nonce_without_qop_serves_once():
    nonces = Nonces(b"s", 300, Now())
    n1, n2 = nonces.new(), nonces.new()
    assert nonces.use(n1, 1) and nonces.use(n1, 2) and nonces.use(n1, 5)
    assert not nonces.use(n1, 5) and not nonces.use(n1, 3)
    assert nonces.use(n2, None) and not nonces.use(n2, None)


def test_the_replay_table_is_bounded_and_a_forgotten_nonce_is_stale_not_replayable():
    now = Now()
    nonces = Nonces(b"s", 300, now, max_tracked=100)
    issued = []
    for _ in range(250):
        nonce = nonces.new()
        issued.append(nonce)
        assert nonces.use(nonce, 1)
        now.t += 0.01
    assert len(nonces) <= 100
    oldest = issued[0]
    assert nonces.check(oldest) is NonceState.STALE  # dropped for room: never replayable
    assert nonces.check(issued[-1]) is NonceState.VALID
    assert not nonces.use(issued[-1], 1)
    fresh = nonces.new()
    assert nonces.check(fresh) is NonceState.VALID and nonces.use(fresh, 1)


def test_expired_entries_leave_the_replay_table():
    now = Now()
    nonces = Nonces(b"s", 300, now)
    for _ in range(50):
        nonces.use(nonces.new(), 1)
    now.t += 301
    nonces.use(nonces.new(), 1)
    assert len(nonces) == 1


def test_the_failure_and_ban_tables_are_bounded():
    bans = Bans(Clock(), AuthConfig(max_failures_user=1, max_failures_source=1_000_000),
                LimitsConfig(max_auth_failures=50))
    for i in range(500):
        bans.failure(f"user{i}@d", f"10.0.{i // 250}.{i % 250}")
    assert len(bans.listing()) == 50
    assert bans.is_banned("user499@d", "192.0.2.1")
    assert not bans.is_banned("user0@d", "192.0.2.1")  # dropped for room, oldest first
