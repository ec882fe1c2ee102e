"""Stateless digest nonces, and nonce-count replay protection with bounded memory.

A nonce is ``TTTTTTTTTTTT IIIIIIII RRRRRRRRRRRRRRRR MMMM...`` in hex: the issue time in
milliseconds (12 digits), the issuer (4 bytes, random per process start), 8 random bytes,
and the first 16 bytes of HMAC-SHA256(secret, time + issuer + random). A nonce older than
``auth.nonce_expire`` is stale (RFC 7616 §3.3: re-challenge with ``stale=true``).

Only the process that issued a nonce accepts it: it alone holds the nonce's count. Another
process that shares the secret -- another worker of the service, another node, this one
before a restart -- recognises the nonce as sipgw's and answers it as stale, so the client
answers a fresh challenge at once (it does not take it for a wrong password), and a
request replayed to another process is never accepted a second time. UDP retransmissions
and a connection's requests stay on one worker (the kernel's hash), so an honest client
meets this only when it moves.

Replay protection (RFC 7616 §3.4.6, §5.10): the nonce-count must grow per nonce. The last
``nc`` of each nonce used is kept until the nonce expires; a request without qop (RFC 2617
clients) uses its nonce once. The table is bounded: when it is full the oldest entry is
dropped and the *floor* rises to its issue time, so a nonce issued at or before the floor
and no longer in the table is treated as stale -- forgetting an entry can never reopen a
replay, it only costs an honest client one more challenge.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable

from sipgw.config import LimitsConfig

_TIME_DIGITS = 12
_RANDOM_BYTES = 8
_MAC_DIGITS = 32
_ISSUER_BYTES = 4
_ISSUER_END = _TIME_DIGITS + 2 * _ISSUER_BYTES
NONCE_LENGTH = _ISSUER_END + 2 * _RANDOM_BYTES + _MAC_DIGITS
_HEX = frozenset("0123456789abcdef")


class NonceState(enum.Enum):
    VALID = "valid"
    STALE = "stale"  # ours, but expired, forgotten or another process's: stale=true
    INVALID = "invalid"  # not ours: forged, garbled, or another secret


class Nonces:
    def __init__(
        self,
        secret: bytes,
        expire: float,
        now: Callable[[], float],
        *,
        random: Callable[[int], bytes] = os.urandom,
        max_tracked: int = LimitsConfig().max_nonces,
        on_forget: Callable[[], None] | None = None,
    ) -> None:
        self.secret = secret
        self.now = now
        self.random = random
        self.issuer = random(_ISSUER_BYTES).hex()  # names this process in its nonces
        self.configure(expire, max_tracked)
        self._counts: OrderedDict[str, tuple[int, int]] = OrderedDict()  # nonce → (nc, ms)
        self._floor = -1  # issue time (ms) of the newest entry ever dropped for room
        self.on_forget = on_forget  # told when one is dropped for room

    def configure(self, expire: float, max_tracked: int) -> None:
        """auth.nonce_expire and limits.max_nonces; the nonce counts kept survive."""
        self.expire = expire
        self.max_tracked = max_tracked

    def new(self) -> str:
        head = (f"{int(self.now() * 1000):0{_TIME_DIGITS}x}{self.issuer}"
                f"{self.random(_RANDOM_BYTES).hex()}")
        return head + self._mac(head)

    def _mac(self, head: str) -> str:
        return hmac.new(self.secret, head.encode("ascii"), hashlib.sha256).hexdigest()[:_MAC_DIGITS]

    def check(self, nonce: str) -> NonceState:
        if len(nonce) != NONCE_LENGTH or not _HEX.issuperset(nonce):
            return NonceState.INVALID
        head, mac = nonce[:-_MAC_DIGITS], nonce[-_MAC_DIGITS:]
        if not hmac.compare_digest(mac, self._mac(head)):
            return NonceState.INVALID
        if nonce[_TIME_DIGITS:_ISSUER_END] != self.issuer:
            return NonceState.STALE
        issued = int(nonce[:_TIME_DIGITS], 16)
        age = self.now() - issued / 1000
        if age > self.expire or age < -self.expire:  # from the future: a clock is off
            return NonceState.STALE
        if issued <= self._floor and nonce not in self._counts:
            return NonceState.STALE
        return NonceState.VALID

    def use(self, nonce: str, nc: int | None) -> bool:
        """Record a use of a valid nonce; False when ``nc`` does not grow (a replay).

        ``nc`` None (no qop) counts as 1: such a nonce serves one request.
        """
        count = 1 if nc is None else nc
        seen = self._counts.get(nonce)
        if seen is not None:
            if count <= seen[0]:
                return False
            self._counts[nonce] = (count, seen[1])
            return True
        self._prune()
        self._counts[nonce] = (count, int(nonce[:_TIME_DIGITS], 16))
        return True

    def _prune(self) -> None:
        counts = self._counts
        limit = (self.now() - self.expire) * 1000
        # Oldest first use first; an expired nonce's entry is useless (check() says stale).
        while counts:
            oldest = next(iter(counts.values()))[1]
            if oldest >= limit and len(counts) < self.max_tracked:
                return
            _, (_, issued) = counts.popitem(last=False)
            if oldest >= limit:
                self._floor = max(self._floor, issued)
                if self.on_forget is not None:
                    self.on_forget()

    def memory_tables(self) -> dict[str, object]:
        """What ``mod.stats auth`` measures: the nonces whose nonce-count is followed."""
        return {"nonces": self._counts}

    def __len__(self) -> int:
        return len(self._counts)
