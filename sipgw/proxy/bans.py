"""Brute-force defence: failed authentications counted per user and per source address.

After ``max_failures_user`` failures (default 3, Kamailio's htable example) within
``failure_window`` seconds, the user is refused 403 for ``ban_time`` seconds; a source
address only after ``max_failures_source`` (default 20): a contact center puts dozens of
agents behind one NAT address, and one agent's typo must never lock out the floor
(DESIGN.md §5). Trusted addresses and backends never get here.

Memory is bounded: both tables hold at most ``max_entries`` keys (``limits.max_auth_failures``),
the oldest dropped first
(an attacker cycling through made-up user names only recycles the table).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


class Bans:
    def __init__(
        self,
        now: Callable[[], float],
        *,
        max_failures_user: int = 3,
        max_failures_source: int = 20,
        failure_window: float = 300.0,
        ban_time: float = 900.0,
        max_entries: int = 100_000,
    ) -> None:
        self.now = now
        self.max_failures_user = max_failures_user
        self.max_failures_source = max_failures_source
        self.failure_window = failure_window
        self.ban_time = ban_time
        self.max_entries = max_entries
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._banned: OrderedDict[tuple[str, str], float] = OrderedDict()  # → until
        self.on_forget: Callable[[str], None] | None = None  # told "failures" or "bans"

    def is_banned(self, user: str | None, source: str) -> bool:
        return self._active(("source", source)) or (
            user is not None and self._active(("user", user))
        )

    def _active(self, key: tuple[str, str]) -> bool:
        until = self._banned.get(key)
        if until is None:
            return False
        if until > self.now():
            return True
        del self._banned[key]
        return False

    def failure(self, user: str, source: str) -> None:
        """One failed authentication of ``user`` from ``source``."""
        self._count(("user", user), self.max_failures_user)
        self._count(("source", source), self.max_failures_source)

    def success(self, user: str) -> None:
        # A user who got the password right starts again from zero; the address does not
        # (one good agent must not launder a neighbour's guessing).
        self._failures.pop(("user", user), None)

    def _count(self, key: tuple[str, str], limit: int) -> None:
        now = self.now()
        count, since = self._failures.pop(key, (0, now))
        if now - since > self.failure_window:
            count, since = 0, now
        count += 1
        if count >= limit:
            self._banned.pop(key, None)
            self._banned[key] = now + self.ban_time
            self._bound(self._banned, "bans")
            return
        self._failures[key] = (count, since)
        self._bound(self._failures, "failures")

    def _bound(self, table: OrderedDict, what: str) -> None:
        if len(table) <= self.max_entries:
            return
        while len(table) > self.max_entries:
            table.popitem(last=False)
        if self.on_forget is not None:
            self.on_forget(what)

    # -- for the control plane (auth.bans, auth.unban) -----------------------------------

    def memory_tables(self) -> dict[str, object]:
        """What ``mod.stats auth`` measures: failures being counted, bans in force."""
        return {"failures": self._failures, "bans": self._banned}

    def listing(self) -> list[dict]:
        now = self.now()
        return [{"TYPE": kind, "NAME": name, "EXPIRES": round(until - now)}
                for (kind, name), until in self._banned.items() if until > now]

    def unban(self, name: str) -> int:
        """Lift the bans named ``name`` (a user@domain or an address; "all": every one)."""
        keys = [k for k in self._banned if name == "all" or k[1] == name]
        for key in keys:
            del self._banned[key]
            self._failures.pop(key, None)
        return len(keys)

