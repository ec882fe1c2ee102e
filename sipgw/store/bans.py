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
  ``n``, raised by every change of the set (a ban added or lengthened, a ban lifted), so
  that a node asks for the set only when it changed. One key, never expiring: another
  epoch (a Redis restarted empty) tells the nodes that Redis lost the bans, not that they
  were lifted. A replica promoted by Sentinel has the master's, epoch included.

Each operation is one Lua script, one round trip, atomic: ``failure`` (counted, and banned
at the limit), ``poll`` (this node's bans that Redis may not hold yet added, and the set
returned only when its version moved), ``unban``. Nothing here is on the path of a
successful authentication.
"""

from __future__ import annotations

from twisted.internet import defer

PREFIX = "sipgw:auth:"
FAILURES = PREFIX + "failures:"
BANS = PREFIX + "bans"
VERSION = PREFIX + "bans:version"

Key = tuple[str, str]  # (kind, name), as sipgw.proxy.auth.bans keys its tables

# Redis's time in ms, and the housekeeping after the set grew: ended bans out, the set's
# time to live that of its longest ban, the version raised.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_BUMP = """
local function bump()
  redis.call('HSETNX', KEYS[2], 'epoch', now)
  redis.call('HINCRBY', KEYS[2], 'n', 1)
end
"""
_CHANGED = _BUMP + """
local function changed()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(last[2]) - now)) end
  bump()
end
"""

# KEYS: bans, version, then one failure counter per counted key.
# ARGV: window ms, ban ms, then per counter its member and limit. Returns each count.
FAILURE = _NOW + _CHANGED + """
local counts, banned = {}, false
for i = 3, #KEYS do
  local member, limit = ARGV[2 * i - 3], tonumber(ARGV[2 * i - 2])
  local n = redis.call('INCR', KEYS[i])
  if n == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
  if n >= limit then
    redis.call('DEL', KEYS[i])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), member)
    banned = true
  end
  counts[#counts + 1] = n
end
if banned then changed() end
return counts
"""

# KEYS: bans, version. ARGV: the version the caller holds, then per ban to add its member
# and ms left (kept when Redis holds it longer). Returns {version} when the caller's is
# current, else {version, member, ms left, member, ms left, ...}; a version is
# "EPOCH:N".
POLL = _NOW + _CHANGED + """
local added = false
for i = 2, #ARGV, 2 do
  local ends = now + tonumber(ARGV[i + 1])
  local held = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not held or tonumber(held) < ends then
    redis.call('ZADD', KEYS[1], ends, ARGV[i])
    added = true
  end
end
if added then changed() end
local v = redis.call('HMGET', KEYS[2], 'epoch', 'n')
local version = (v[1] or '0') .. ':' .. (v[2] or '0')
if version == ARGV[1] then return {version} end
local out = {version}
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #rows, 2 do
  out[#out + 1] = rows[i]
  out[#out + 1] = tostring(math.floor(tonumber(rows[i + 1]) - now))
end
return out
"""

# KEYS: bans, version. ARGV: a name (user@realm or address) or "all", the counters' prefix.
# Returns how many bans in force were lifted.
UNBAN = _NOW + _BUMP + """
local members = {'user:' .. ARGV[1], 'source:' .. ARGV[1]}
if ARGV[1] == 'all' then members = redis.call('ZRANGE', KEYS[1], 0, -1) end
local lifted = 0
for _, member in ipairs(members) do
  local ends = redis.call('ZSCORE', KEYS[1], member)
  if ends then
    redis.call('ZREM', KEYS[1], member)
    redis.call('DEL', ARGV[2] .. member)
    if tonumber(ends) > now then lifted = lifted + 1 end
  end
end
if lifted > 0 then bump() end
return lifted
"""


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
        keys = [BANS, VERSION, *(FAILURES + member(key) for key, _ in counted)]
        args: list[object] = [_ms(window), _ms(ban_time)]
        for key, limit in counted:
            args += [member(key), limit]
        return self.store.script(FAILURE, keys, args).addCallback(
            lambda counts: [int(n) for n in counts])

    def poll(self, version: str | None,
             add: list[tuple[Key, float]]) -> defer.Deferred:
        """Add ``add`` (key, seconds left), and fire with (version, None) when ``version``
        is current, else (version, [(key, seconds left), ...]): every ban in force."""
        args: list[object] = [version or ""]
        for key, left in add:
            args += [member(key), _ms(left)]

        def read(answer: list) -> tuple[str, list[tuple[Key, float]] | None]:
            current = str(answer[0])
            if len(answer) == 1 and current == version:
                return current, None
            rows = answer[1:]
            return current, [(key_of(str(rows[i])), int(rows[i + 1]) / 1000)
                             for i in range(0, len(rows), 2)]

        return self.store.script(POLL, [BANS, VERSION], args).addCallback(read)

    def unban(self, name: str) -> defer.Deferred:
        """Lift the bans named ``name`` ("all": every one): fires with how many were in
        force."""
        return self.store.script(UNBAN, [BANS, VERSION], [name, FAILURES]).addCallback(int)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def ban_board(store) -> RedisBans | None:
    """The board of a store several nodes share (Redis), None for one that is a single
    node's (SQLite, memory)."""
    from sipgw.store.redis import RedisStore

    return RedisBans(store) if isinstance(store, RedisStore) else None
