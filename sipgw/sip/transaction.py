"""RFC 3261 §17 transactions, with RFC 6026's Accepted state, as sans-I/O state machines.

The rules of this module:

* A transaction is fed events — a response or request from its peer, a response from the
  TU, a timer, a transport error — each with the current time ``now`` (seconds, any
  monotonic origin). Every call returns a list of effects (``sipgw.sip.effects``) for the
  adapter to carry out in order. Nothing here sends, sleeps or reads a clock.
* After every call the adapter asks ``next_deadline()`` (absolute, same clock as ``now``,
  or None) and arms one timer for it; when it fires it calls ``on_timer(now)``. Calling
  ``on_timer`` early is harmless (nothing is due, nothing happens); calling it late fires
  what is due once — a late retransmission timer sends once and keeps its schedule.
* ``state`` is a ``State``; every transition is one entry of the four tables below, which
  cite the figure they transcribe. An input with no entry in the current state is absorbed
  (ignored) — that is how the RFC's "absorb retransmissions" rules are written here.
* Retransmission timers (A, E, G) run only over unreliable transports; D, I, J and K are
  zero over reliable ones, so entering their state terminates at once.
* One ``Send`` per retransmitted message is built once and reused, and the field-less
  effects are shared singletons: a timer or a retransmission allocates only its list.

Decisions a TU must know (each also commented where it is made):

* Client INVITE: a provisional in Calling stops timer A *and* timer B; B only has meaning
  in Calling (§17.1.1.2). Giving up on a ringing branch is the TU's timer C (§16.6 step 11,
  §16.8). Non-INVITE: timer F keeps running in Proceeding (§17.1.2.2).
* Every provisional is delivered, 100 included: the TU decides what to forward (§16.7).
* A 2xx reaching a client INVITE transaction in Completed is delivered, and a 2xx from
  the TU on a server INVITE transaction in Completed or Confirmed is sent, without a state
  change: §16.7 step 5 makes a proxy forward every 2xx to an INVITE.
* An ACK matching an INVITE server transaction in Accepted is delivered
  (``DeliverRequest``, RFC 6026 Figure 7); the ACK of a non-2xx is absorbed.
* Responses from the TU the state does not allow (a provisional after a final, a second
  non-2xx final, anything after Terminated) are dropped: the call returns ``[]``.
* Timer H (server INVITE, the ACK never came) reports ``Timeout`` then ``Terminated``,
  as B and F do on the client side.
* A transport error on a server INVITE transaction in Accepted is reported but does not
  end it (RFC 6026 gives Accepted no such edge, and L still has INVITE retransmissions to
  absorb). A client INVITE transaction in Accepted has nothing in flight: ignored.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from sipgw.sip.effects import TERMINATED, TIMEOUT, TRANSPORT_ERROR, Effect, Send
from sipgw.sip.message import Field, Request, Response
from sipgw.sip.timers import TimerConfig

if TYPE_CHECKING:  # at run time, from __getattr__ below
    from sipgw.sip.transaction_client import InviteClientTransaction, NonInviteClientTransaction
    from sipgw.sip.transaction_server import InviteServerTransaction, NonInviteServerTransaction

__all__ = [
    "State",
    "Input",
    "INVITE_CLIENT",
    "NON_INVITE_CLIENT",
    "INVITE_SERVER",
    "NON_INVITE_SERVER",
    "Transaction",
    "InviteClientTransaction",
    "NonInviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteServerTransaction",
    "build_ack",
    "input_for_status",
    "client_key",
    "server_key",
    "invite_key_for_cancel",
    "BRANCH_COOKIE",
]


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"  # RFC 6026 §7.1, §7.2
    TERMINATED = "Terminated"


class Input(enum.Enum):
    PROVISIONAL = "1xx"  # client: received; server: from the TU
    SUCCESS = "2xx"
    FAILURE = "300-699"
    REQUEST = "request retransmission"  # server: the original request again
    ACK = "ACK"  # server INVITE: an ACK that matched the transaction
    TRANSPORT_ERROR = "transport error"
    TIMER_A = "timer A"
    TIMER_B = "timer B"
    TIMER_D = "timer D"
    TIMER_E = "timer E"
    TIMER_F = "timer F"
    TIMER_G = "timer G"
    TIMER_H = "timer H"
    TIMER_I = "timer I"
    TIMER_J = "timer J"
    TIMER_K = "timer K"
    TIMER_L = "timer L"
    TIMER_M = "timer M"


S = State
I = Input  # noqa: E741 - keeps the tables readable

# RFC 3261 §17.1.1.2 Figure 5, as replaced by RFC 6026 §7.2 Figure 5.
INVITE_CLIENT: dict[State, dict[Input, State]] = {
    S.CALLING: {
        I.TIMER_A: S.CALLING,  # retransmit, double A
        I.TIMER_B: S.TERMINATED,  # inform TU: timeout
        I.PROVISIONAL: S.PROCEEDING,
        I.SUCCESS: S.ACCEPTED,  # RFC 6026: no longer straight to Terminated
        I.FAILURE: S.COMPLETED,  # send ACK
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.PROCEEDING: {
        I.PROVISIONAL: S.PROCEEDING,
        I.SUCCESS: S.ACCEPTED,
        I.FAILURE: S.COMPLETED,
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.COMPLETED: {
        I.FAILURE: S.COMPLETED,  # retransmitted final: ACK again, not delivered
        I.SUCCESS: S.COMPLETED,  # §16.7 step 5: a 2xx is always forwarded; delivered
        I.TIMER_D: S.TERMINATED,
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.ACCEPTED: {
        I.SUCCESS: S.ACCEPTED,  # RFC 6026 §7.2: passed to the TU
        I.TIMER_M: S.TERMINATED,
    },
    S.TERMINATED: {},
}

# RFC 3261 §17.1.2.2 Figure 6.
NON_INVITE_CLIENT: dict[State, dict[Input, State]] = {
    S.TRYING: {
        I.TIMER_E: S.TRYING,  # retransmit, E = min(2E, T2)
        I.TIMER_F: S.TERMINATED,  # inform TU: timeout
        I.PROVISIONAL: S.PROCEEDING,
        I.SUCCESS: S.COMPLETED,
        I.FAILURE: S.COMPLETED,
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.PROCEEDING: {
        I.TIMER_E: S.PROCEEDING,  # retransmit, E = T2
        I.TIMER_F: S.TERMINATED,
        I.PROVISIONAL: S.PROCEEDING,
        I.SUCCESS: S.COMPLETED,
        I.FAILURE: S.COMPLETED,
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.COMPLETED: {
        I.TIMER_K: S.TERMINATED,  # response retransmissions absorbed meanwhile
    },
    S.TERMINATED: {},
}

# RFC 3261 §17.2.1 Figure 7, as replaced by RFC 6026 §7.1 Figure 7.
INVITE_SERVER: dict[State, dict[Input, State]] = {
    S.PROCEEDING: {
        I.REQUEST: S.PROCEEDING,  # send the last provisional again
        I.PROVISIONAL: S.PROCEEDING,
        I.SUCCESS: S.ACCEPTED,  # RFC 6026: arm L
        I.FAILURE: S.COMPLETED,  # arm G (unreliable) and H
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.COMPLETED: {
        I.REQUEST: S.COMPLETED,  # send the final again
        I.TIMER_G: S.COMPLETED,  # send the final again, G = min(2G, T2)
        I.ACK: S.CONFIRMED,  # arm I; G and H stop
        I.SUCCESS: S.COMPLETED,  # §16.7 step 5: a 2xx is always forwarded; sent
        I.TIMER_H: S.TERMINATED,  # inform TU: the ACK never came
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.CONFIRMED: {
        I.SUCCESS: S.CONFIRMED,  # §16.7 step 5, as in Completed
        I.TIMER_I: S.TERMINATED,  # ACK and INVITE retransmissions absorbed meanwhile
    },
    S.ACCEPTED: {
        I.SUCCESS: S.ACCEPTED,  # RFC 6026 §8.7: a 2xx from the TU is sent
        I.ACK: S.ACCEPTED,  # RFC 6026 Figure 7: passed to the TU
        I.TIMER_L: S.TERMINATED,  # INVITE retransmissions absorbed meanwhile
        I.TRANSPORT_ERROR: S.ACCEPTED,  # reported; L still has work to do
    },
    S.TERMINATED: {},
}

# RFC 3261 §17.2.2 Figure 8.
NON_INVITE_SERVER: dict[State, dict[Input, State]] = {
    S.TRYING: {
        I.PROVISIONAL: S.PROCEEDING,
        I.SUCCESS: S.COMPLETED,  # arm J
        I.FAILURE: S.COMPLETED,
        I.TRANSPORT_ERROR: S.TERMINATED,
        # I.REQUEST absent: "any further request retransmissions are discarded"
    },
    S.PROCEEDING: {
        I.REQUEST: S.PROCEEDING,  # send the last provisional again
        I.PROVISIONAL: S.PROCEEDING,
        I.SUCCESS: S.COMPLETED,
        I.FAILURE: S.COMPLETED,
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.COMPLETED: {
        I.REQUEST: S.COMPLETED,  # send the final again
        I.TIMER_J: S.TERMINATED,
        I.TRANSPORT_ERROR: S.TERMINATED,
    },
    S.TERMINATED: {},
}

del S, I


def input_for_status(status: int) -> Input:
    if status < 200:
        return Input.PROVISIONAL
    if status < 300:
        return Input.SUCCESS
    return Input.FAILURE


# -- matching (§17.1.3, §17.2.3, §9.2) ---------------------------------------------------

BRANCH_COOKIE = "z9hG4bK"
_COOKIE_LEN = len(BRANCH_COOKIE)

# A transaction's key: a client's (branch, method), or one of server_key's two shapes.
TransactionKey = tuple[object, ...]


def client_key(message: Request | Response) -> TransactionKey:
    """(top Via branch, CSeq method): the key of the client transaction a response
    belongs to (§17.1.3). On our own request it gives the transaction's key."""
    return (message.top_via.branch, message.cseq[1])


def server_key(request: Request) -> TransactionKey:
    """The key of the server transaction ``request`` belongs to (§17.2.3).

    RFC 3261 branch (``z9hG4bK`` and more): ``(branch, sent-by lowercased, method)``.
    Anything else, including a bare ``z9hG4bK`` (RFC 4475 badbranch) or no branch at all
    (RFC 4475 inv2543), gets the RFC 2543 key: ``(Request-URI, From tag, Call-ID, CSeq
    number, top Via as written, method, To tag)``. In both, ACK keys as INVITE. The two
    shapes have different lengths and never collide.

    RFC 2543 INVITE and ACK keys carry None for the To tag: the ACK of a non-2xx carries the
    tag our response added, which the INVITE did not have (§17.2.3 compares it with the
    response's). Request-URIs are compared as written, not by §19.1.4 rules.
    """
    key = request._cache.get("server_key")
    if key is None:
        # Asked for up to three times per request (absorb, table, transaction); a change
        # of the top Via drops it (``Message._touch``).
        method = request.method
        if method == "ACK":
            method = "INVITE"
        key = request._cache["server_key"] = _server_key(request, method)
    return key  # type: ignore[return-value]


def invite_key_for_cancel(cancel: Request) -> TransactionKey:
    """The key of the INVITE server transaction that ``cancel`` refers to (§9.2).

    A CANCEL has its own server transaction (``server_key(cancel)`` has method CANCEL);
    this is where the TU finds the INVITE to cancel.
    """
    return _server_key(cancel, "INVITE")


def _server_key(request: Request, method: str) -> TransactionKey:
    via = request.top_via
    branch = via.branch
    if branch is not None and len(branch) > _COOKIE_LEN and branch.startswith(BRANCH_COOKIE):
        return (branch, via.sent_by.lower(), method)
    # RFC 3261 §17.2.3, the RFC 2543 rules.
    to_tag = None if method == "INVITE" else request.to_tag
    top = request.values("via")[0]
    return (request.uri, request.from_tag, request.call_id, request.cseq[0], top, method, to_tag)


# -- the ACK of a non-2xx final (§17.1.1.3) --------------------------------------------


def build_ack(request: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 ``response`` (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as ``request``; To from the response
    (with its tag); one Via, the top one of ``request`` (same branch); ``request``'s Route
    headers; Max-Forwards 70; no body.
    """
    top_via = request.values("via")[0]
    fields = [Field("via", "Via", top_via)]
    from_field = call_id = None
    for f in request.fields:
        key = f.key
        if key == "route":
            fields.append(Field(key, f.name, f.value, f.raw))
        elif key == "from":
            from_field = Field(key, f.name, f.value, f.raw)
        elif key == "call-id":
            call_id = Field(key, f.name, f.value, f.raw)
    fields.append(Field("max-forwards", "Max-Forwards", "70"))
    if from_field is not None:
        fields.append(from_field)
    for f in response.fields:
        if f.key == "to":
            fields.append(Field("to", f.name, f.value, f.raw))
            break
    if call_id is not None:
        fields.append(call_id)
    fields.append(Field("cseq", "CSeq", f"{request.cseq[0]} ACK"))
    fields.append(Field("content-length", "Content-Length", "0"))
    return Request("ACK", request.uri, fields, b"", request.version)


# -- the machines ----------------------------------------------------------------------


class Transaction:
    """What the four machines share: the public calls below, and timer bookkeeping.

    Public attributes: ``request`` (the request that created the transaction), ``state``,
    ``key`` (client: ``(branch, method)``; server: ``server_key(request)``), ``reliable``
    and ``timers``. Every method returns the effects to carry out, in order.

    At most two timers are ever armed at once: a retransmission timer (A, E or G) and an
    end timer (B, F, H, or one of the waits D, I, J, K, L, M). Each slot remembers which
    RFC timer it is, so firing it is one table lookup.
    """

    __slots__ = (
        "request",
        "reliable",
        "timers",
        "state",
        "key",
        "_table",
        "_retx_at",
        "_retx_interval",
        "_retx_input",
        "_resend",
        "_end_at",
        "_end_input",
    )
    # Set by each machine's __init__.
    key: TransactionKey
    _table: dict[State, dict[Input, State]]

    def __init__(self, request: Request, reliable: bool, timers: TimerConfig) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self._retx_at: float | None = None
        self._retx_interval = 0.0
        self._retx_input: Input | None = None
        self._resend: Send | None = None
        self._end_at: float | None = None
        self._end_input: Input | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.state.value} key={self.key!r}>"

    def next_deadline(self) -> float | None:
        """The earliest armed timer (absolute, on the clock ``now`` comes from), or None."""
        retx = self._retx_at
        end = self._end_at
        if retx is None:
            return end
        if end is None or retx < end:
            return retx
        return end

    def on_timer(self, now: float) -> list[Effect]:
        """Fire what is due at ``now``. An end timer that is due ends the transaction, so it
        goes first and a retransmission due at the same time is not sent."""
        end = self._end_at
        if end is not None and end <= now:
            return self._fire_end()
        retx = self._retx_at
        if retx is not None and retx <= now:
            return self._fire_retransmit(now)
        return []

    # The wait states, where the machine has made its last decision and only absorbs
    # retransmissions until its end timer (J; L, I; D, M; K). Set by each machine.
    _ABSORBING: frozenset[State] = frozenset()

    def absorbing(self) -> bool:
        """True when nothing is left but absorbing retransmissions until the end timer.

        A TU that holds many transactions may then keep only ``repeat()`` and the end
        time: what the machine would still do, without the messages it holds.
        """
        return self._retx_at is None and self._end_at is not None and (
            self.state in self._ABSORBING)

    def repeat(self) -> Send | None:
        """In an absorbing state, what goes out again when the peer repeats itself: the
        final response to a repeated request (non-INVITE server, Completed), the ACK to a
        repeated non-2xx final (INVITE client, Completed); None where the repeat is only
        absorbed. A 2xx reaching an INVITE client in Accepted is the TU's (§16.7 step 5)."""
        return None

    def on_transport_error(self, now: float) -> list[Effect]:
        """A send for this transaction failed (§17.1.4, §17.2.4)."""
        new = self._table[self.state].get(Input.TRANSPORT_ERROR)
        if new is None:
            return []
        if new is State.TERMINATED:
            effects: list[Effect] = [TRANSPORT_ERROR]
            self._terminate(effects)
            return effects
        return [TRANSPORT_ERROR]  # Accepted: reported, the transaction stays

    # -- helpers for the subclasses ------------------------------------------------------

    def _arm_retransmit(self, timer: Input, interval: float, now: float, send: Send) -> None:
        self._retx_input = timer
        self._retx_interval = interval
        self._retx_at = now + interval
        self._resend = send

    def _arm_end(self, timer: Input, delay: float, now: float, effects: list[Effect]) -> None:
        """Arm an end timer; a zero delay (D, I, J, K on reliable) terminates now."""
        self._end_input = timer
        if delay > 0:
            self._end_at = now + delay
        else:
            self._terminate(effects)

    def _terminate(self, effects: list[Effect]) -> None:
        self.state = State.TERMINATED
        self._retx_at = None
        self._end_at = None
        effects.append(TERMINATED)

    def _fire_end(self) -> list[Effect]:
        timer = self._end_input
        self._end_at = None
        assert timer is not None
        new = self._table[self.state].get(timer)
        if new is None:  # pragma: no cover - every armed end timer has an entry
            return []
        effects: list[Effect] = []
        if timer is Input.TIMER_B or timer is Input.TIMER_F or timer is Input.TIMER_H:
            effects.append(TIMEOUT)
        self._terminate(effects)
        return effects

    def _next_interval(self, interval: float) -> float:
        """A doubles without cap (§17.1.1.2); E and G double up to T2 (overridden)."""
        return interval * 2

    def _fire_retransmit(self, now: float) -> list[Effect]:
        if self._table[self.state].get(self._retx_input) is None:  # type: ignore[arg-type]
            self._retx_at = None  # pragma: no cover - every state stops its own timer
            return []  # pragma: no cover
        assert self._retx_at is not None and self._resend is not None
        # The schedule stays anchored to the first send: a late call sends once and skips
        # the retransmissions it missed rather than bursting them.
        at = self._retx_at
        interval = self._retx_interval
        while at <= now:
            interval = self._next_interval(interval)
            at += interval
        self._retx_at = at
        self._retx_interval = interval
        return [self._resend]


# The machines live in transaction_client.py and transaction_server.py (this file holds
# what they share, and every transition). They are importable from here too (PEP 562);
# a lazy import keeps the modules free of an import cycle.
_MACHINES = {
    "InviteClientTransaction": "sipgw.sip.transaction_client",
    "NonInviteClientTransaction": "sipgw.sip.transaction_client",
    "InviteServerTransaction": "sipgw.sip.transaction_server",
    "NonInviteServerTransaction": "sipgw.sip.transaction_server",
}


def __getattr__(name: str) -> object:
    module = _MACHINES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
