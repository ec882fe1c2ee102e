"""Client transactions, RFC 3261 §17.1 with RFC 6026 §7.2.

The rules, the transition tables and the decisions a TU must know are at the top of
``sipgw.sip.transaction``; this file only carries out the actions of each transition.
"""

from __future__ import annotations

from sipgw.sip.effects import Deliver, Effect, Send
from sipgw.sip.message import Request, Response
from sipgw.sip.timers import TimerConfig
from sipgw.sip.transaction import (
    INVITE_CLIENT,
    NON_INVITE_CLIENT,
    Input,
    State,
    Transaction,
    TransactionKey,
    build_ack,
    client_key,
    input_for_status,
)

__all__ = ["InviteClientTransaction", "NonInviteClientTransaction"]


class _ClientTransaction(Transaction):
    __slots__ = ("_started",)

    def __init__(self, request: Request, reliable: bool, timers: TimerConfig,
                 key: TransactionKey | None) -> None:
        super().__init__(request, reliable, timers)
        # The TU that just wrote the top Via may pass the key instead of having it parsed.
        self.key = client_key(request) if key is None else key
        self._started = False

    def _start(
        self, now: float, retransmit: Input, first_interval: float, timeout: Input, after: float
    ) -> list[Effect]:
        if self._started:
            raise RuntimeError(f"{self!r}: start() called twice")
        self._started = True
        send = Send(message=self.request)
        if not self.reliable:
            # §17.1.1.2 / §17.1.2.2: retransmissions only over unreliable transports.
            self._arm_retransmit(retransmit, first_interval, now, send)
        self._end_input = timeout
        self._end_at = now + after
        return [send]


class InviteClientTransaction(_ClientTransaction):
    """RFC 3261 §17.1.1 with RFC 6026 §7.2. States: Calling, Proceeding, Completed,
    Accepted, Terminated."""

    __slots__ = ("_send_ack",)
    _ABSORBING = frozenset({State.COMPLETED, State.ACCEPTED})

    def repeat(self) -> Send | None:
        return self._send_ack if self.absorbing() and self.state is State.COMPLETED else None

    def __init__(self, request: Request, *, reliable: bool, timers: TimerConfig,
                 key: TransactionKey | None = None) -> None:
        if request.method != "INVITE":
            raise ValueError(f"InviteClientTransaction cannot carry {request.method}")
        super().__init__(request, reliable, timers, key)
        self._table = INVITE_CLIENT
        self.state = State.CALLING
        self._send_ack: Send | None = None

    def start(self, now: float) -> list[Effect]:
        """Send the INVITE; arm A (unreliable only) and B."""
        timers = self.timers
        return self._start(now, Input.TIMER_A, timers.a, Input.TIMER_B, timers.b)

    def on_response(self, response: Response, now: float) -> list[Effect]:
        inp = input_for_status(response.status)
        old = self.state
        new = INVITE_CLIENT[old].get(inp)
        if new is None:
            return []  # absorbed
        self.state = new
        if inp is Input.PROVISIONAL:
            if old is State.CALLING:
                # §17.1.1.2: no retransmission in Proceeding, and B only means anything in
                # Calling. Giving up on a ringing branch is the TU's timer C (§16.8).
                self._retx_at = None
                self._end_at = None
            return [Deliver(response=response)]
        if inp is Input.SUCCESS:
            if old is not State.COMPLETED and old is not State.ACCEPTED:
                # RFC 6026 §7.2: the TU ACKs the 2xx end to end; the transaction stays
                # in Accepted until M so 2xx retransmissions and 2xx from other forks
                # still match it and are passed up, not taken for strays.
                self._retx_at = None
                self._end_input = Input.TIMER_M
                self._end_at = now + self.timers.m
            return [Deliver(response=response)]
        # 300-699
        if old is State.COMPLETED:
            return [self._send_ack]  # type: ignore[list-item]  # §17.1.1.2: ACK again
        self._send_ack = send_ack = Send(message=build_ack(self.request, response))
        self._retx_at = None
        effects: list[Effect] = [send_ack, Deliver(response=response)]
        self._arm_end(Input.TIMER_D, self.timers.d_on(self.reliable), now, effects)
        return effects


class NonInviteClientTransaction(_ClientTransaction):
    """RFC 3261 §17.1.2. States: Trying, Proceeding, Completed, Terminated."""

    __slots__ = ()
    _ABSORBING = frozenset({State.COMPLETED})  # response retransmissions absorbed

    def __init__(self, request: Request, *, reliable: bool, timers: TimerConfig,
                 key: TransactionKey | None = None) -> None:
        if request.method in ("INVITE", "ACK"):
            raise ValueError(f"NonInviteClientTransaction cannot carry {request.method}")
        super().__init__(request, reliable, timers, key)
        self._table = NON_INVITE_CLIENT
        self.state = State.TRYING

    def start(self, now: float) -> list[Effect]:
        """Send the request; arm E (unreliable only) and F."""
        timers = self.timers
        return self._start(now, Input.TIMER_E, timers.e, Input.TIMER_F, timers.f)

    def _next_interval(self, interval: float) -> float:
        t2 = self.timers.t2
        if self.state is State.PROCEEDING:
            return t2  # §17.1.2.2: "reset with a value of T2 seconds"
        doubled = interval * 2
        return doubled if doubled < t2 else t2

    def on_response(self, response: Response, now: float) -> list[Effect]:
        inp = input_for_status(response.status)
        new = NON_INVITE_CLIENT[self.state].get(inp)
        if new is None:
            return []  # absorbed: retransmitted responses in Completed
        self.state = new
        if new is State.PROCEEDING:
            return [Deliver(response=response)]  # E and F keep running
        effects: list[Effect] = [Deliver(response=response)]
        self._retx_at = None
        self._end_at = None
        self._arm_end(Input.TIMER_K, self.timers.k_on(self.reliable), now, effects)
        return effects
