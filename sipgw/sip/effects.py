"""What a transaction asks of the world: the only outputs of ``sipgw.sip.transaction``.

Every method of a transaction returns a list of these, in the order they must be carried
out. The adapter (``sipgw.proxy.relay``) knows the peer address and flow, does the sending,
and re-arms its one timer per transaction from ``next_deadline()`` after every call.

Effects without fields are compared by type; the transactions reuse one instance of each
(``TIMEOUT``, ``TRANSPORT_ERROR``, ``TERMINATED``) so that a timer firing allocates nothing
but its list.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipgw.sip.message import Request, Response


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Transmit ``message`` to the transaction's peer: the request (and, for an INVITE
    answered with a non-2xx, its ACK) for a client transaction; a response for a server
    transaction. If sending fails, call ``on_transport_error``."""

    message: Request | Response


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Client transaction: hand ``response`` to the TU (the proxy core), RFC 3261 §17.1."""

    response: Response


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverRequest:
    """INVITE server transaction in Accepted: an ACK that matched it goes to the TU
    (RFC 6026 §8.7 and its Figure 7). The ACK of a non-2xx final is part of the
    transaction and is absorbed, never delivered (RFC 3261 §17.2.1)."""

    request: Request


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    """No answer in time: timer B or F (client; the TU answers upstream with 408,
    §16.7 step 2 / §8.1.3.1) or timer H (server: the ACK never came, §17.2.1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportError:
    """A send of this transaction failed (§17.1.4, §17.2.4); the TU decides what next."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Terminated:
    """The transaction is over: the adapter drops it from its table and disarms its timer."""


Effect = Send | Deliver | DeliverRequest | Timeout | TransportError | Terminated

TIMEOUT = Timeout()
TRANSPORT_ERROR = TransportError()
TERMINATED = Terminated()
