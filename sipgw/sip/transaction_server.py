"""Server transactions, RFC 3261 §17.2 with RFC 6026 §7.1.

The rules, the transition tables and the decisions a TU must know are at the top of
``sipgw.sip.transaction``; this file only carries out the actions of each transition.
"""

from __future__ import annotations

from sipgw.sip.effects import DeliverRequest, Effect, Send
from sipgw.sip.message import Request, Response
from sipgw.sip.timers import TimerConfig
from sipgw.sip.transaction import (
    INVITE_SERVER,
    NON_INVITE_SERVER,
    Input,
    State,
    Transaction,
    input_for_status,
    server_key,
)

__all__ = ["InviteServerTransaction", "NonInviteServerTransaction"]


class _ServerTransaction(Transaction):
    __slots__ = ("last_response",)

    def __init__(self, request: Request, reliable: bool, timers: TimerConfig) -> None:
        super().__init__(request, reliable, timers)
        self.key = server_key(request)
        self.last_response: Response | None = None

    def _next_interval(self, interval: float) -> float:
        doubled = interval * 2  # G: min(2G, T2), §17.2.1
        t2 = self.timers.t2
        return doubled if doubled < t2 else t2

    def _sent(self, response: Response) -> Send:
        """Remember ``response`` as the one retransmissions are answered with."""
        self.last_response = response
        send = Send(message=response)
        self._resend = send
        return send


class InviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.1 with RFC 6026 §7.1. Starts in Proceeding; the TU sends the 100."""

    __slots__ = ()
    _ABSORBING = frozenset({State.ACCEPTED, State.CONFIRMED})  # INVITE and ACK absorbed

    def __init__(self, request: Request, *, reliable: bool, timers: TimerConfig) -> None:
        if request.method != "INVITE":
            raise ValueError(f"InviteServerTransaction cannot carry {request.method}")
        super().__init__(request, reliable, timers)
        self._table = INVITE_SERVER
        self.state = State.PROCEEDING

    def on_request(self, request: Request, now: float) -> list[Effect]:
        """A request that matched this transaction: the INVITE again, or an ACK."""
        inp = Input.ACK if request.method == "ACK" else Input.REQUEST
        old = self.state
        new = INVITE_SERVER[old].get(inp)
        if new is None:
            return []  # absorbed: Confirmed, Accepted (RFC 6026), Terminated
        self.state = new
        if inp is Input.REQUEST:
            resend = self._resend
            return [] if resend is None else [resend]
        if new is State.ACCEPTED:
            return [DeliverRequest(request=request)]
        # Completed → Confirmed: G and H stop, I absorbs ACK retransmissions.
        self._retx_at = None
        self._end_at = None
        effects: list[Effect] = []
        self._arm_end(Input.TIMER_I, self.timers.i_on(self.reliable), now, effects)
        return effects

    def respond(self, response: Response, now: float) -> list[Effect]:
        """Send the TU's response to the INVITE."""
        inp = input_for_status(response.status)
        old = self.state
        new = INVITE_SERVER[old].get(inp)
        if new is None:
            return []  # not allowed now: dropped (see the module docstring)
        self.state = new
        if old is not State.PROCEEDING:
            # A 2xx after a final (§16.7 step 5) or again in Accepted (RFC 6026 §8.7):
            # sent once, and never used to answer retransmissions of the INVITE.
            if old is State.ACCEPTED:
                self.last_response = response
            return [Send(message=response)]
        send = self._sent(response)
        if inp is Input.PROVISIONAL:
            return [send]
        effects: list[Effect] = [send]
        if inp is Input.SUCCESS:
            # RFC 6026 §8.5: Accepted, L absorbs INVITE retransmissions; the UAS core
            # (never this transaction) retransmits the 2xx.
            self._end_input = Input.TIMER_L
            self._end_at = now + self.timers.l
            return effects
        if not self.reliable:
            self._arm_retransmit(Input.TIMER_G, self.timers.g, now, send)
        self._end_input = Input.TIMER_H
        self._end_at = now + self.timers.h
        return effects


class NonInviteServerTransaction(_ServerTransaction):
    """RFC 3261 §17.2.2. States: Trying, Proceeding, Completed, Terminated."""

    __slots__ = ()
    _ABSORBING = frozenset({State.COMPLETED})

    def repeat(self) -> Send | None:
        return self._resend if self.absorbing() else None

    def __init__(self, request: Request, *, reliable: bool, timers: TimerConfig) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"NonInviteServerTransaction cannot carry {request.method}")
        super().__init__(request, reliable, timers)
        self._table = NON_INVITE_SERVER
        self.state = State.TRYING

    def on_request(self, request: Request, now: float) -> list[Effect]:
        """A retransmission of the request: answered with the last response, if any."""
        new = NON_INVITE_SERVER[self.state].get(Input.REQUEST)
        if new is None:
            return []  # Trying: discarded (§17.2.2)
        resend = self._resend
        return [] if resend is None else [resend]

    def respond(self, response: Response, now: float) -> list[Effect]:
        """Send the TU's response."""
        inp = input_for_status(response.status)
        new = NON_INVITE_SERVER[self.state].get(inp)
        if new is None:
            return []  # after the final: dropped
        self.state = new
        effects: list[Effect] = [self._sent(response)]
        if new is State.COMPLETED:
            self._arm_end(Input.TIMER_J, self.timers.j_on(self.reliable), now, effects)
        return effects
