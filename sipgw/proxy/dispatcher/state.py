"""Destination state, with Kamailio's flag bits and letters (dispatcher.h, ds_update_state).

Bits: 1 inactive, 2 trying, 4 disabled, 8 probing, 16 no DNS, 32 no ping. Shown as two
letters: the state (D disabled > I inactive > T trying > A active) and P(robing) or X.

Transitions (Kamailio's ds_update_state, with separate counters instead of its shared one):

=========================  =============================================================
probe or request failed    A → T, and after ``probing_threshold`` failures in a row → I;
                           an inactive destination stays I (it must come back first).
probe answered             T/I → A after ``inactive_threshold`` answers in a row; A stays A.
transport error            → I at once (ICMP unreachable, connection refused).
``dispatcher.set_state``   replaces the state bits; counters start again.
=========================  =============================================================

The probing bit follows the probing mode (``health.py``). A disabled destination is left
alone by probes: only an operator brings it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipgw.proxy.dispatcher.listfile import Attrs
from sipgw.proxy.transport import Destination

INACTIVE = 1
TRYING = 2
DISABLED = 4
PROBING = 8
NODNSARES = 16
NOPING = 32
STATES = INACTIVE | TRYING | DISABLED | PROBING

# Probing modes (ds_probing_mode).
PROBE_FLAGGED = 0  # only destinations with the probing bit; an answer clears it
PROBE_ALL = 1  # every destination, and each keeps the probing bit
PROBE_INACTIVE = 2  # only inactive destinations
PROBE_ONLY_FLAGGED = 3  # only destinations with the probing bit, which is never cleared


def flags_text(flags: int) -> str:
    """``AP``, ``IP``, ``DX``, ``TP``... as ``kamcmd dispatcher.list`` prints them."""
    if flags & DISABLED:
        state = "D"
    elif flags & INACTIVE:
        state = "I"
    elif flags & TRYING:
        state = "T"
    else:
        state = "A"
    return state + ("P" if flags & PROBING else "X")


def parse_state(text: str) -> int:
    """``dispatcher.set_state`` argument → state bits: a/i/d/t (or 1/0/2/3), then ``p``."""
    t = text.strip().lower()
    base = {"a": 0, "1": 0, "i": INACTIVE, "0": INACTIVE, "d": DISABLED, "2": DISABLED,
            "t": TRYING, "3": TRYING}.get(t[:1])
    if base is None or len(t) > 2 or (len(t) == 2 and t[1] != "p"):
        raise ValueError(f"bad state {text!r}: expected a, i, d or t, optionally followed by p")
    return base | (PROBING if t.endswith("p") and len(t) == 2 else 0)


@dataclass(slots=True, kw_only=True)
class Latency:
    """Probe round trips in milliseconds, as Kamailio's LATENCY (AVG, MAX, TIMEOUT)."""

    count: int = 0
    avg: float = 0.0
    max: float = 0.0
    last: float = 0.0
    timeouts: int = 0

    def add(self, ms: float) -> None:
        self.count += 1
        self.avg += (ms - self.avg) / self.count
        self.max = max(self.max, ms)
        self.last = ms


class Target:
    """One destination of a set, while it runs: where it is, its state and counters."""

    __slots__ = ("setid", "uri", "address", "priority", "attrs", "flags", "failures_in_row",
                 "answers_in_row", "sent", "failures", "latency", "load", "line")

    def __init__(self, *, setid: int, uri: str, address: Destination, priority: int,
                 attrs: Attrs, flags: int, line: int | None = None) -> None:
        self.setid = setid
        self.uri = uri
        self.address = address
        self.priority = priority
        self.attrs = attrs
        self.flags = flags
        self.line = line
        self.failures_in_row = 0
        self.answers_in_row = 0
        self.sent = 0  # requests sent to it (first tries and failovers)
        self.failures = 0  # requests that failed there (timeout, transport, failover code)
        self.latency = Latency()
        self.load = 0  # calls in progress (algorithm 10)

    @property
    def usable(self) -> bool:
        """Kamailio's ds_skip_dst: inactive and disabled destinations are skipped."""
        return not self.flags & (INACTIVE | DISABLED)

    @property
    def state(self) -> str:
        return flags_text(self.flags)

    def failed(self, *, probing_threshold: int, probing: bool) -> None:
        """A probe or a request got no answer (or a refusal counted as death)."""
        self.answers_in_row = 0
        if self.flags & DISABLED:
            return
        if probing:
            self.flags |= PROBING
        if self.flags & INACTIVE:
            return
        self.failures_in_row += 1
        if self.failures_in_row >= probing_threshold:
            self.flags = (self.flags & ~TRYING) | INACTIVE
            self.failures_in_row = 0
        else:
            self.flags |= TRYING

    def answered(self, *, inactive_threshold: int, keep_probing: bool) -> None:
        """A probe got a reply that counts as alive."""
        self.failures_in_row = 0
        if self.flags & DISABLED:
            return
        if not keep_probing:
            self.flags &= ~PROBING
        if self.flags & (INACTIVE | TRYING):
            self.answers_in_row += 1
            if self.answers_in_row < inactive_threshold:
                return
        self.answers_in_row = 0
        self.flags &= ~(INACTIVE | TRYING)

    def unreachable(self) -> None:
        """A transport error: no threshold, the destination is down now."""
        self.failures_in_row = self.answers_in_row = 0
        if not self.flags & DISABLED:
            self.flags = (self.flags & ~TRYING) | INACTIVE | PROBING

    def set_state(self, bits: int) -> None:
        self.flags = (self.flags & ~STATES) | bits
        self.failures_in_row = self.answers_in_row = 0
