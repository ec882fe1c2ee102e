"""Bans over several nodes (``sipgw/proxy/auth/cluster.py``) on a ``task.Clock``: when it
asks Redis, what it does with each answer, and what holds while Redis is away.

Redis itself is played by the test: each call to the board is recorded with the Deferred
it returned, and the test answers it (as Redis would: in order; the whole set of bans, or
the changes since the version asked about) or fails it as the store fails when Redis
cannot be reached. The board's Lua scripts against a real redis-server,
and two real nodes sharing one, are in ``tests/integration/test_nodes_redis_sipgw.py``.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from sipgw.config import AuthConfig
from sipgw.proxy.auth.bans import Bans
from sipgw.proxy.auth.cluster import POLL_INTERVAL, ClusterBans
from sipgw.store import StoreUnavailable
from sipgw.store.bans import Heard

USER = ("user", "5001@sipgw.test")
SOURCE = ("source", "192.0.2.7")
BAN_TIME = 900.0


class Board:
    """Every call asked of Redis, with the Deferred the test fires."""

    def __init__(self) -> None:
        self.failures: list[tuple[list, defer.Deferred]] = []
        self.polls: list[tuple[str | None, list, defer.Deferred]] = []
        self.unbans: list[tuple[str, defer.Deferred]] = []
        self.successes: list = []

    def failure(self, counted, window, ban_time):
        assert (window, ban_time) == (300, BAN_TIME)
        d: defer.Deferred = defer.Deferred()
        self.failures.append((counted, d))
        return d

    def success(self, key):
        self.successes.append(key)
        return defer.succeed(None)

    def poll(self, version, add):
        d: defer.Deferred = defer.Deferred()
        self.polls.append((version, add, d))
        return d

    def unban(self, name):
        d: defer.Deferred = defer.Deferred()
        self.unbans.append((name, d))
        return d


def cluster() -> tuple[Clock, Bans, Board, ClusterBans]:
    clock = Clock()
    clock.advance(1_000_000)
    bans = Bans(clock, AuthConfig(ban_time=BAN_TIME))
    board = Board()
    nodes = ClusterBans(bans, board, clock)
    nodes.start()
    return clock, bans, board, nodes


def down() -> StoreUnavailable:
    return StoreUnavailable("redis://127.0.0.1:6379/2: Connection refused")


def test_the_first_poll_is_at_start_and_the_next_an_interval_after_each_answer():
    clock, _, board, nodes = cluster()
    assert [(v, a) for v, a, _ in board.polls] == [(None, [])]
    clock.advance(POLL_INTERVAL * 5)  # Redis slow: never a second question meanwhile
    assert len(board.polls) == 1
    board.polls[0][2].callback(Heard("e:7", bans=[]))
    clock.advance(POLL_INTERVAL - 0.01)
    assert len(board.polls) == 1
    clock.advance(0.01)
    assert [v for v, _, _ in board.polls] == [None, "e:7"]  # the version held is sent
    board.polls[1][2].callback(Heard("e:7"))  # unchanged: nothing read
    nodes.stop()
    clock.advance(POLL_INTERVAL * 5)
    assert len(board.polls) == 2


def test_a_ban_of_another_node_is_taken_on_with_its_time_left_and_ends_here_then():
    clock, bans, board, _ = cluster()
    board.polls[0][2].callback(Heard("e:3", bans=[(USER, 60.0)]))
    assert bans.is_banned(USER[1], "198.51.100.1")
    assert [row["NAME"] for row in bans.listing()] == [USER[1]]
    clock.advance(59.9)
    assert bans.is_banned(USER[1], "198.51.100.1")
    clock.advance(0.2)
    assert not bans.is_banned(USER[1], "198.51.100.1")
    assert bans.listing() == []


def test_a_ban_redis_no_longer_holds_is_lifted_but_one_made_here_meanwhile_is_given_to_it():
    clock, bans, board, _ = cluster()
    board.polls[0][2].callback(Heard("e:3", bans=[(USER, 600.0)]))
    clock.advance(POLL_INTERVAL)
    # This node's own count bans the address (its workers' failures, say) while the
    # second question is on its way: the answer predates it.
    for n in range(20):
        bans.failure(f"u{n}@sipgw.test", SOURCE[1])
    _, _, second = board.polls[1]
    with capturedLogs() as logs:
        second.callback(Heard("e:4", bans=[]))  # unbanned on another node
    assert not bans.is_banned(USER[1], "198.51.100.1")
    assert bans.is_banned("someone@sipgw.test", SOURCE[1])  # not lifted: never in Redis
    assert "ban of user 5001@sipgw.test lifted on another node" in _text(logs)
    clock.advance(POLL_INTERVAL)
    version, add, third = board.polls[2]
    assert version == "e:4"
    [(key, left)] = add
    assert key == SOURCE and BAN_TIME - 1 < left <= BAN_TIME
    third.callback(Heard("e:5", bans=[(SOURCE, left)]))
    clock.advance(POLL_INTERVAL)
    assert board.polls[3][1] == []  # Redis holds it now: not given again


def test_the_failure_that_reaches_the_limit_over_the_cluster_bans_here_at_once():
    _, bans, board, _ = cluster()
    bans.failure(USER[1], SOURCE[1])  # this node's first; two more on other nodes
    [(counted, answer)] = board.failures
    assert counted == [(USER, 3), (SOURCE, 20)]
    with capturedLogs() as logs:
        answer.callback([3, 1])
    assert bans.is_banned(USER[1], "198.51.100.1")
    assert not bans.is_banned("someone@sipgw.test", SOURCE[1])
    [line] = [e for e in logs if e.get("log_level") == LogLevel.warn]
    assert formatEvent(line).startswith(
        "auth: user 5001@sipgw.test banned for 900 s after 3 failed authentications over "
        "the cluster (the last from 192.0.2.7)")


def test_failures_of_other_workers_are_counted_in_redis_by_their_own_worker_only():
    _, bans, board, _ = cluster()
    bans.failure(USER[1], SOURCE[1], origin=1)
    assert board.failures == []


def test_without_redis_this_node_counts_and_bans_alone_and_shares_its_bans_once_back():
    clock, bans, board, _ = cluster()
    board.polls[0][2].callback(Heard("e:1", bans=[]))
    with capturedLogs() as logs:
        for _ in range(3):
            bans.failure(USER[1], SOURCE[1])
        for _, answer in board.failures:
            answer.errback(down())
        clock.advance(POLL_INTERVAL)
        board.polls[1][2].errback(down())
    assert bans.is_banned(USER[1], "198.51.100.1")  # counted here: 3 of this node's own
    said = [formatEvent(e) for e in logs if "not shared with the other nodes" in
            formatEvent(e)]
    assert len(said) == 1 and "Connection refused" in said[0]  # once, not per call
    clock.advance(POLL_INTERVAL)
    version, add, back = board.polls[2]
    assert version == "e:1" and [key for key, _ in add] == [USER]  # given to Redis
    with capturedLogs() as logs:
        back.callback(Heard("e:2", bans=[(USER, add[0][1])]))
    assert "Redis reachable again" in _text(logs)
    assert "Traceback" not in _text(logs)


def test_a_version_of_another_epoch_means_redis_lost_the_bans_none_is_lifted_all_given_again():
    clock, bans, board, _ = cluster()
    board.polls[0][2].callback(Heard("1733500000000:41", bans=[(USER, 600.0)]))
    clock.advance(POLL_INTERVAL)
    with capturedLogs() as logs:
        board.polls[1][2].callback(Heard("0:0", bans=[]))  # Redis restarted empty
    assert bans.is_banned(USER[1], "198.51.100.1")
    assert "Redis lost the bans it held" in _text(logs)
    clock.advance(POLL_INTERVAL)
    assert [key for key, _ in board.polls[2][1]] == [USER]


def test_unban_lifts_here_and_in_redis_and_says_how_many_were_lifted_anywhere():
    _, bans, board, nodes = cluster()
    board.polls[0][2].callback(Heard("e:3", bans=[(USER, 600.0)]))
    lifted: list = []
    nodes.unban(USER[1], bans.unban(USER[1])).addCallback(lifted.append)
    assert not bans.is_banned(USER[1], "198.51.100.1")  # here, at once
    [(name, answer)] = board.unbans
    assert name == USER[1]
    answer.callback(1)
    assert lifted == [1]
    # A ban this node had not taken on yet is lifted in Redis and counted.
    nodes.unban("all", bans.unban("all")).addCallback(lifted.append)
    board.unbans[1][1].callback(2)
    assert lifted == [1, 2]


def test_an_unban_without_redis_lifts_here_only_and_says_so():
    _, bans, board, nodes = cluster()
    board.polls[0][2].callback(Heard("e:3", bans=[(USER, 600.0)]))
    lifted: list = []
    with capturedLogs() as logs:
        nodes.unban(USER[1], bans.unban(USER[1])).addCallback(lifted.append)
        board.unbans[0][1].errback(down())
    assert lifted == [1]
    assert "lifted on this node only" in _text(logs)


def _text(logs) -> str:
    return "\n".join(formatEvent(e) for e in logs)


def test_the_first_ban_ever_made_in_redis_is_no_loss():
    clock, bans, board, _ = cluster()
    board.polls[0][2].callback(Heard("0:0", bans=[]))  # no ban was ever made in this Redis
    clock.advance(POLL_INTERVAL)
    with capturedLogs() as logs:
        board.polls[1][2].callback(Heard("1733500000000:1", bans=[(USER, 600.0)]))
    assert bans.is_banned(USER[1], "198.51.100.1")
    assert "Redis lost" not in _text(logs)


def test_changes_since_the_version_held_add_and_lift_bans_one_by_one():
    clock, bans, board, _ = cluster()
    board.polls[0][2].callback(Heard("e:3", bans=[(USER, 600.0)]))
    clock.advance(POLL_INTERVAL)
    assert board.polls[1][0] == "e:3"
    board.polls[1][2].callback(Heard("e:5", changes=[("ban", SOURCE, 900.0),
                                                      ("lift", USER, 0.0)]))
    assert bans.is_banned("someone@sipgw.test", SOURCE[1])
    assert not bans.is_banned(USER[1], "198.51.100.1")
    clock.advance(POLL_INTERVAL)
    version, add, third = board.polls[2]
    assert (version, add) == ("e:5", [])  # SOURCE came from Redis: not given back
    # A ban logged and lifted since, or one already over, leaves nothing here.
    third.callback(Heard("e:7", changes=[("ban", USER, 600.0), ("lift", USER, 0.0),
                                          ("ban", ("user", "gone@sipgw.test"), -1.0)]))
    assert [row["NAME"] for row in bans.listing()] == [SOURCE[1]]


def test_a_success_clears_the_users_count_in_redis_only_after_failures_counted_here():
    _, bans, board, _ = cluster()
    bans.success(USER[1])  # nothing counted: Redis is not asked
    bans.failure(USER[1], SOURCE[1], origin=1)  # another worker's, counted here too
    bans.success(USER[1], origin=1)  # that worker's success: it tells Redis itself
    assert board.successes == []
    bans.failure(USER[1], SOURCE[1])
    bans.success(USER[1])
    assert board.successes == [USER]
    bans.success(USER[1])  # once
    assert board.successes == [USER]
