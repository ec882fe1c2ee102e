"""SIP transaction timer values (RFC 3261 §17 and Table 4 of Appendix A; RFC 6026 §8.11).

Only values live here, in seconds; nothing here reads a clock. A transaction turns them
into absolute deadlines from the ``now`` it is given, and reports the earliest one through
``next_deadline()``; the adapter arms the real timer (see ``sipgw.sip.transaction``).

The properties give each timer's value on an *unreliable* transport (UDP). The four
timers that exist only to absorb datagram retransmissions — D, I, J, K — are zero on a
reliable transport; ``d_on``, ``i_on``, ``j_on`` and ``k_on`` apply that rule. A, E and G
are never armed on a reliable transport (§17.1.1.2, §17.1.2.2, §17.2.1): the transaction
decides that, as it decides everything about state.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerConfig:
    """T1, T2, T4 and the overridable timers; everything else is derived (RFC 3261 App. A)."""

    t1: float = 0.5  # RTT estimate (§17.1.1.1)
    t2: float = 4.0  # the longest retransmit interval for non-INVITE requests and INVITE responses
    t4: float = 5.0  # the longest time a message stays in the network
    timer_b: float | None = None  # INVITE transaction timeout; None means 64*T1
    timer_f: float | None = None  # non-INVITE transaction timeout; None means 64*T1
    timer_d: float = 32.0  # wait for response retransmits; "at least 32 s" on unreliable

    def __post_init__(self) -> None:
        if not self.t1 > 0:
            raise ValueError(f"TimerConfig: t1 must be positive, got {self.t1!r}")
        if not self.t2 >= self.t1:
            raise ValueError(f"TimerConfig: t2 ({self.t2!r}) must be at least t1 ({self.t1!r})")
        if not self.t4 >= 0:
            raise ValueError(f"TimerConfig: t4 must not be negative, got {self.t4!r}")
        for name in ("timer_b", "timer_f"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"TimerConfig: {name} must be positive, got {value!r}")
        if not self.timer_d >= 0:
            raise ValueError(f"TimerConfig: timer_d must not be negative, got {self.timer_d!r}")

    # -- INVITE client transaction (§17.1.1.2) -------------------------------------------

    @property
    def a(self) -> float:
        """Timer A, the first INVITE retransmit interval: T1, then doubling without cap."""
        return self.t1

    @property
    def b(self) -> float:
        """Timer B, INVITE transaction timeout: 64*T1 unless configured."""
        return self.timer_b if self.timer_b is not None else 64 * self.t1

    @property
    def d(self) -> float:
        """Timer D, wait in Completed for final-response retransmits (unreliable)."""
        return self.timer_d

    def d_on(self, reliable: bool) -> float:
        return 0.0 if reliable else self.timer_d

    # -- non-INVITE client transaction (§17.1.2.2) ---------------------------------------

    @property
    def e(self) -> float:
        """Timer E, the first non-INVITE retransmit interval: T1, doubling, capped at T2."""
        return self.t1

    @property
    def f(self) -> float:
        """Timer F, non-INVITE transaction timeout: 64*T1 unless configured."""
        return self.timer_f if self.timer_f is not None else 64 * self.t1

    @property
    def k(self) -> float:
        """Timer K, wait in Completed for response retransmits: T4 (unreliable)."""
        return self.t4

    def k_on(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4

    # -- INVITE server transaction (§17.2.1) ---------------------------------------------

    @property
    def g(self) -> float:
        """Timer G, the first final-response retransmit interval: T1, doubling, capped at T2."""
        return self.t1

    @property
    def h(self) -> float:
        """Timer H, wait for the ACK of a non-2xx final response: 64*T1."""
        return 64 * self.t1

    @property
    def i(self) -> float:
        """Timer I, wait in Confirmed for ACK retransmits: T4 (unreliable)."""
        return self.t4

    def i_on(self, reliable: bool) -> float:
        return 0.0 if reliable else self.t4

    # -- non-INVITE server transaction (§17.2.2) -----------------------------------------

    @property
    def j(self) -> float:
        """Timer J, wait in Completed for request retransmits: 64*T1 (unreliable)."""
        return 64 * self.t1

    def j_on(self, reliable: bool) -> float:
        return 0.0 if reliable else 64 * self.t1

    # -- RFC 6026 §8.11: the Accepted state --------------------------------------------

    @property
    def l(self) -> float:  # noqa: E743 - the RFC's name for it
        """Timer L, INVITE server transaction in Accepted: 64*T1, all transports."""
        return 64 * self.t1

    @property
    def m(self) -> float:
        """Timer M, INVITE client transaction in Accepted: 64*T1, all transports."""
        return 64 * self.t1


DEFAULT_TIMERS = TimerConfig()
