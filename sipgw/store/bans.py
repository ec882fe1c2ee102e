"""Failed authentications and bans shared by every node through Redis: the board
``sipgw.proxy.auth.cluster`` reads and writes when the subscriber store is Redis.

Layout, beside the subscribers (``sipgw.toml(5)``, "[auth]"):

- ``sipgw:auth:failures:KIND:NAME`` (KIND ``user`` or ``source``): a counter of the failed
  authentications of one user (user@realm) or from one address, over every node. The first
  failure sets its time to live to ``auth.failure_window``, so it counts over that window
  from the first failure (as each node counts on its own) and then disappears; it is
  deleted when it reaches its limit, which bans.
- ``sipgw:auth:bans``: a sorted set of the bans in force, member ``KIND:NAME``, score the
  time the ban ends (milliseconds, Redis's own clock, so the nodes' clocks need not agree).
  Ended bans are removed whenever a ban is added, and the set expires with its longest ban.
- ``sipgw:auth:bans:version``: a hash, ``epoch`` (Redis's time when it was made) and
  ``n``, the number of the last change of the set (a ban added or lengthened, a ban
  lifted). One key, never expiring: another epoch (a Redis restarted empty) tells the
  nodes that Redis lost the bans, not that they were lifted. A replica promoted by
  Sentinel has the master's, epoch included.
- ``sipgw:auth:bans:log``: the last ``LOG_KEEP`` changes, a sorted set scored by their
  number, member ``N|ban|ENDS|KIND:NAME`` or ``N|lift|0|KIND:NAME``; it expires
  ``LOG_TTL`` seconds after the last change.

Each operation is one Lua script, one round trip, atomic: ``failure`` (counted, and banned
at the limit), ``success`` (a user's count cleared), ``poll`` (this node's bans that Redis
may not hold yet added; then nothing when the caller's version is current, the changes
since it when the log still has them, else the whole set), ``unban``. A node that polls
every fraction of a second reads only the changes, however many bans are in force; a new
worker, one that was cut off longer than the log lasts, or one facing another epoch reads
the whole set. Nothing here is on the path of a successful authentication, but the first
success after failures.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.internet import defer

PREFIX = "sipgw:auth:"
FAILURES = PREFIX + "failures:"
BANS = PREFIX + "bans"
VERSION = PREFIX + "bans:version"
LOG = PREFIX + "bans:log"
LOG_KEEP = 1000  # changes kept: more than a few polls' worth in a storm of bans
LOG_TTL = 3600  # seconds the log outlives its last change

Key = tuple[str, str]  # (kind, name), as sipgw.proxy.auth.bans keys its tables

# KEYS of every script: the set, the version, the log (then a failure's counters).
# Redis's time in ms; a change numbered and logged; a ban added; the housekeeping after
# bans were added: ended ones out, the set's time to live that of its longest ban.
_COMMON = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function logged(op, member, ends)
  redis.call('HSETNX', KEYS[2], 'epoch', now)
  local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
  redis.call('ZADD', KEYS[3], n, n .. '|' .. op .. '|' .. ends .. '|' .. member)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -{LOG_KEEP + 1})
  redis.call('PEXPIRE', KEYS[3], {LOG_TTL * 1000})
end
local function banned(member, ends)
  redis.call('ZADD', KEYS[1], ends, member)
  logged('ban', member, ends)
end
local function tidy()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now)) end
end
"""

# KEYS: then one failure counter per counted key.
# ARGV: window ms, ban ms, then per counter its member and limit. Returns each count.
FAILURE = _COMMON + """
local counts, any = {}, false
for i = 4, #KEYS do
  local member, limit = ARGV[2 * i - 5], tonumber(ARGV[2 * i - 4])
  local n = redis.call('INCR', KEYS[i])
  if n == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
  if n >= limit then
    redis.call('DEL', KEYS[i])
    banned(member, now + tonumber(ARGV[2]))
    any = true
  end
  counts[#counts + 1] = n
end
if any then tidy() end
return counts
"""

# ARGV: the caller's version ("" for none), its epoch and number apart, then per ban to
# add its member and ms left (kept when Redis holds it longer). Returns {version} when
# the caller's is current; {version, 'changes', now, entry, ...} with the log's entries
# after the caller's number; else {version, 'all', member, ms left, ...}. A version is
# "EPOCH:N".
POLL = _COMMON + """
local added = false
for i = 4, #ARGV, 2 do
  local ends = now + tonumber(ARGV[i + 1])
  local held = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not held or tonumber(held) < ends then
    banned(ARGV[i], ends)
    added = true
  end
end
if added then tidy() end
local v = redis.call('HMGET', KEYS[2], 'epoch', 'n')
local epoch = v[1] or '0'
local version = epoch .. ':' .. (v[2] or '0')
if version == ARGV[1] then return {version} end
if epoch == ARGV[2] then
  local since = tonumber(ARGV[3])
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if first[2] and tonumber(first[2]) <= since + 1 then
    local out = {version, 'changes', tostring(now)}
    for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. since, '+inf')) do
      out[#out + 1] = entry
    end
    return out
  end
end
local out = {version, 'all'}
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #rows, 2 do
  out[#out + 1] = rows[i]
  out[#out + 1] = tostring(math.floor(tonumber(rows[i + 1]) - now))
end
return out
"""

# ARGV: a name (user@realm or address) or "all", the counters' prefix. Returns how many
# bans in force were lifted.
UNBAN = _COMMON + """
local members = {'user:' .. ARGV[1], 'source:' .. ARGV[1]}
if ARGV[1] == 'all' then members = redis.call('ZRANGE', KEYS[1], 0, -1) end
local lifted = 0
for _, member in ipairs(members) do
  local ends = redis.call('ZSCORE', KEYS[1], member)
  if ends then
    redis.call('ZREM', KEYS[1], member)
    redis.call('DEL', ARGV[2] .. member)
    logged('lift', member, 0)
    if tonumber(ends) > now then lifted = lifted + 1 end
  end
end
return lifted
"""

# KEYS: a user's failure counter. A success clears it.
SUCCESS = "return redis.call('DEL', KEYS[1])"

_KEYS = [BANS, VERSION, LOG]


class Heard(NamedTuple):
    """What a poll found: the version; then ``changes`` (op "ban" or "lift", key, seconds
    left) since the caller's, or ``bans`` (key, seconds left): every ban in force, or
    neither when the caller's version is current."""

    version: str
    changes: list[tuple[str, Key, float]] | None = None
    bans: list[tuple[Key, float]] | None = None


def member(key: Key) -> str:
    return f"{key[0]}:{key[1]}"


def key_of(text: str) -> Key:
    kind, _, name = text.partition(":")  # a kind has no colon; an IPv6 address has several
    return kind, name


class RedisBans:
    """The board on the Redis subscriber store's own connection (``RedisStore.script``):
    every call a Deferred, failing as the store's lookups do (``StoreUnavailable``...)."""

    def __init__(self, store) -> None:
        self.store = store

    def failure(self, counted: list[tuple[Key, int]], window: float,
                ban_time: float) -> defer.Deferred:
        """Count one failure for each (key, limit): fires with the count each reached over
        the cluster (a count at its limit has banned the key for ``ban_time``)."""
        keys = [*_KEYS, *(FAILURES + member(key) for key, _ in counted)]
        args: list[object] = [_ms(window), _ms(ban_time)]
        for key, limit in counted:
            args += [member(key), limit]
        return self.store.script(FAILURE, keys, args).addCallback(
            lambda counts: [int(n) for n in counts])

    def success(self, key: Key) -> defer.Deferred:
        """The count of ``key`` over the cluster starts again from zero."""
        return self.store.script(SUCCESS, [FAILURES + member(key)], [])

    def poll(self, version: str | None, add: list[tuple[Key, float]]) -> defer.Deferred:
        """Add ``add`` (key, seconds left), and fire with what changed since ``version``
        (``Heard``)."""
        epoch, _, number = (version or "").partition(":")
        args: list[object] = [version or "", epoch, number or "0"]
        for key, left in add:
            args += [member(key), _ms(left)]
        return self.store.script(POLL, _KEYS, args).addCallback(_heard)

    def unban(self, name: str) -> defer.Deferred:
        """Lift the bans named ``name`` ("all": every one): fires with how many were in
        force."""
        return self.store.script(UNBAN, _KEYS, [name, FAILURES]).addCallback(int)


def _heard(answer: list) -> Heard:
    version = str(answer[0])
    if len(answer) == 1:
        return Heard(version)
    rest = [str(item) for item in answer[2:]]
    if answer[1] == "changes":
        now, changes = int(rest[0]), []
        for entry in rest[1:]:
            _, op, ends, text = entry.split("|", 3)
            changes.append((op, key_of(text), (int(ends) - now) / 1000))
        return Heard(version, changes=changes)
    return Heard(version, bans=[(key_of(rest[i]), int(rest[i + 1]) / 1000)
                                for i in range(0, len(rest), 2)])


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def ban_board(store) -> RedisBans | None:
    """The board of a store several nodes share (Redis), None for one that is a single
    node's (SQLite, memory)."""
    from sipgw.store.redis import RedisStore

    return RedisBans(store) if isinstance(store, RedisStore) else None
