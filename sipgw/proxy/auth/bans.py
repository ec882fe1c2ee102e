"""Brute-force defence: failed authentications counted per user and per source address.

After ``max_failures_user`` failures (default 3, Kamailio's htable example) within
``failure_window`` seconds, the user is refused 403 for ``ban_time`` seconds; a source
address only after ``max_failures_source`` (default 20): a contact center puts dozens of
agents behind one NAT address, and one agent's typo must never lock out the floor
(DESIGN.md §5). Trusted addresses and backends never get here.

Every ban is logged at warning when it starts (who, after how many failures, for how long)
and when it ends: a timer ends it at its time, so the end is logged then, not at the next
request; ``auth.unban`` ends it early. Without these lines an operator sees only "auth:
failed" and a client refused 403 for a quarter of an hour.

Several workers count together: each failure and each success that clears a count is
published to the other workers (``share``, wired by ``service.share_state``), which
count it as their own, so three failures spread over workers ban the user in every one of
them. The worker whose own failure started the ban logs it at warning, the others at debug.

Several nodes count together when the subscriber store is Redis (``cluster.py``): the
worker that saw a failure also counts it there (``on_own_failure``; a success clears
the user's count there as here, ``on_own_success``), and the bans Redis
holds are taken on (``impose``) and lifted (``lift``) as the other nodes decide them.

Memory is bounded: both tables hold at most ``max_entries`` keys (``limits.max_auth_failures``),
the oldest dropped first
(an attacker cycling through made-up user names only recycles the table).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from twisted.logger import Logger, LogLevel

from sipgw.config import AuthConfig, LimitsConfig
from sipgw.proxy.relay.timerq import Entry, TimerQueue

log = Logger(namespace="sipgw.auth")

Key = tuple[str, str]  # ("user", "user@realm") or ("source", address)
_NAMES = {"user": "user", "source": "address"}
SLACK = 1.0  # seconds: a ban another node says ends this much later is not restarted


def _level(loud: bool) -> LogLevel:
    """A ban is logged at warning by the worker that decided it, at debug by the others."""
    return LogLevel.warn if loud else LogLevel.debug


class Bans:
    def __init__(
        self,
        clock,
        auth: AuthConfig = AuthConfig(),
        limits: LimitsConfig = LimitsConfig(),
        *,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self.now = clock.seconds
        self.configure(auth, limits)
        self._failures: OrderedDict[Key, tuple[int, float]] = OrderedDict()
        # → (until, the timer that ends it, ban_time when it started, logged at warning)
        self._banned: OrderedDict[Key, tuple[float, Entry, float, bool]] = OrderedDict()
        self._ends = TimerQueue(clock, self._expired)
        self.on_forget = on_forget  # told "failures" or "bans" when one is dropped for room
        # Tells the other workers (topic, payload); None in a single process.
        self.share: Callable[[str, dict], None] | None = None
        # Tell the other nodes of a failure (user, source) seen here, and of a success
        # (user) that clears a count; None on one node.
        self.on_own_failure: Callable[[str, str], None] | None = None
        self.on_own_success: Callable[[str], None] | None = None

    def configure(self, auth: AuthConfig, limits: LimitsConfig) -> None:
        """[auth] thresholds and ban time, limits.max_auth_failures; what is counted and
        banned survives (a ban keeps the length it started with)."""
        self.max_failures_user = auth.max_failures_user
        self.max_failures_source = auth.max_failures_source
        self.failure_window = auth.failure_window
        self.ban_time = auth.ban_time
        self.max_entries = limits.max_auth_failures

    def is_banned(self, user: str | None, source: str) -> bool:
        return self._active(("source", source)) or (
            user is not None and self._active(("user", user))
        )

    def _active(self, key: Key) -> bool:
        ban = self._banned.get(key)
        return ban is not None and ban[0] > self.now()

    def failure(self, user: str, source: str, *, origin: int | None = None) -> None:
        """One failed authentication of ``user`` from ``source`` (``origin``: counted by
        that other worker, which logs the ban)."""
        where = "" if origin is None else f", on worker {origin}"
        self._count(("user", user), self.max_failures_user, f"the last from {source}{where}",
                    origin is None)
        self._count(("source", source), self.max_failures_source,
                    f"the last for {user}{where}", origin is None)
        if origin is None and self.share is not None:
            self.share("auth.failure", {"user": user, "source": source})
        if origin is None and self.on_own_failure is not None:
            self.on_own_failure(user, source)

    def success(self, user: str, *, origin: int | None = None) -> None:
        # A user who got the password right starts again from zero; the address does not
        # (one good agent must not launder a neighbour's guessing).
        counted = self._failures.pop(("user", user), None)
        if counted is not None and origin is None and self.share is not None:
            # Only then: every worker counts the same failures, so a user none of them
            # counts costs the channel nothing however often it registers.
            self.share("auth.success", {"user": user})
        if counted is not None and origin is None and self.on_own_success is not None:
            # The same rule over the nodes: only a user this node counted costs Redis a
            # round trip, once; every other success costs it nothing.
            self.on_own_success(user)

    def share_with(self, publish: Callable[[str, dict], None],
                   workers: int) -> dict[str, Callable[[dict, int], None]]:
        """Count with the other workers (``service.share_state``): what we count is
        published, and the handlers of what they publish are returned, by topic."""
        self.share = publish
        return {
            "auth.failure": lambda p, origin: self.failure(p["user"], p["source"], origin=origin),
            "auth.success": lambda p, origin: self.success(p["user"], origin=origin),
        }

    def in_force(self) -> list[tuple[Key, float]]:
        """The bans in force: (key, seconds left)."""
        now = self.now()
        return [(key, until - now) for key, (until, *_) in self._banned.items() if until > now]

    def snapshot(self) -> list[list]:
        """The bans in force, for a worker that (re)starts: [kind, name, seconds left]."""
        return [[kind, name, left] for (kind, name), left in self.in_force()]

    def restore(self, rows: list[list], origin: int) -> None:
        """Another worker's bans (``snapshot``), taken on at start; ours are kept."""
        for kind, name, left in rows:
            key = (kind, name)
            if key not in self._banned:
                self._set(key, self.now() + left, self.ban_time, False)
        self._bound(self._banned, "bans")

    def impose(self, key: Key, left: float, *, count: int = 0, last: str = "") -> bool:
        """A ban decided over the cluster (``cluster.py``), ``left`` seconds to run: taken
        on, or lengthened to end when the cluster's does. ``count``: the failures counted
        over the cluster when this worker's own failure reached the limit there (logged at
        warning, unless this worker had already banned it); else another node's or worker's
        ban (logged at debug). True when it is new here."""
        until = self.now() + left
        old = self._banned.get(key)
        if old is not None and old[0] >= until - SLACK:
            return False
        if old is not None:
            self._ends.cancel(old[1])
            self._set(key, until, old[2], old[3])
            return False
        loud = count > 0
        log.emit(_level(loud), "auth: {kind} {name} banned for {t:.0f} s {why}; requests "
                 "refused 403 until then (sipgw ctl auth.unban {name} lifts it)",
                 kind=_NAMES[key[0]], name=key[1], t=left,
                 why=f"after {count} failed authentications over the cluster ({last})"
                 if loud else "by another node or worker (cluster)")
        self._set(key, until, left, loud)
        self._bound(self._banned, "bans")
        return True

    def lift(self, key: Key) -> bool:
        """A ban lifted on another node (its ``auth.unban``): lifted here."""
        ban = self._banned.pop(key, None)
        if ban is None:
            return False
        self._ends.cancel(ban[1])
        self._failures.pop(key, None)
        # At debug, as the others' bans are: the node where it was lifted says it, and
        # an "auth.unban all" may lift thousands in every worker of every node.
        log.debug("auth: ban of {kind} {name} lifted on another node (auth.unban)",
                  kind=_NAMES[key[0]], name=key[1])
        return True

    def _set(self, key: Key, until: float, length: float, loud: bool) -> None:
        self._banned[key] = (until, self._ends.at(until, key), length, loud)

    def _count(self, key: Key, limit: int, last: str, loud: bool) -> None:
        now = self.now()
        count, since = self._failures.pop(key, (0, now))
        if now - since > self.failure_window:
            count, since = 0, now
        count += 1
        if count >= limit:
            self._ban(key, count, now - since, last, loud)
            return
        self._failures[key] = (count, since)
        self._bound(self._failures, "failures")

    def _ban(self, key: Key, count: int, within: float, last: str, loud: bool) -> None:
        old = self._banned.pop(key, None)
        if old is not None:
            self._ends.cancel(old[1])
        self._set(key, self.now() + self.ban_time, self.ban_time, loud)
        log.emit(_level(loud), "auth: {kind} {name} banned for {t:.0f} s after {n} failed "
                 "authentications in {w:.0f} s ({last}); requests refused 403 until then "
                 "(sipgw ctl auth.unban {name} lifts it)", kind=_NAMES[key[0]], name=key[1],
                 t=self.ban_time, n=count, w=within, last=last)
        self._bound(self._banned, "bans")

    def _expired(self, key: Key) -> None:
        ban = self._banned.pop(key, None)
        if ban is not None:
            log.emit(_level(ban[3]), "auth: ban of {kind} {name} ended: its {t:.0f} s are "
                     "over", kind=_NAMES[key[0]], name=key[1], t=ban[2])

    def _bound(self, table: OrderedDict, what: str) -> None:
        if len(table) <= self.max_entries:
            return
        while len(table) > self.max_entries:
            _, value = table.popitem(last=False)
            if table is self._banned:
                self._ends.cancel(value[1])
        if self.on_forget is not None:
            self.on_forget(what)

    # -- for the control plane (auth.bans, auth.unban) -----------------------------------

    def memory_tables(self) -> dict[str, object]:
        """What ``mod.stats auth`` measures: failures being counted, bans in force."""
        return {"failures": self._failures, "bans": self._banned}

    def listing(self) -> list[dict]:
        now = self.now()
        return [{"TYPE": kind, "NAME": name, "EXPIRES": round(until - now)}
                for (kind, name), (until, *_) in self._banned.items() if until > now]

    def unban(self, name: str) -> int:
        """Lift the bans named ``name`` (a user@domain or an address; "all": every one)."""
        keys = [k for k in self._banned if name == "all" or k[1] == name]
        now = self.now()
        for key in keys:
            until, entry, *_ = self._banned.pop(key)
            self._ends.cancel(entry)
            self._failures.pop(key, None)
            if name != "all":
                log.warn("auth: ban of {kind} {name} lifted (auth.unban) {left:.0f} s early",
                         kind=_NAMES[key[0]], name=key[1], left=until - now)
        if name == "all" and keys:
            # One line, not one per ban: "all" may lift thousands.
            log.warn("auth: every ban lifted (auth.unban all): {n} of them", n=len(keys))
        return len(keys)
