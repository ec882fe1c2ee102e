"""Dialog tracking for operators (Kamailio's dialog module, counting only).

A dialog is active from the 2xx to its INVITE until its BYE, or until ``timeout`` seconds
after it started (a BYE lost on the way, a peer that vanished): Kamailio's
``default_timeout``, 12 hours. sipgw does not need dialogs to route (Record-Route does
that); this is what ``dlg.list``, ``dlg.stats_active`` and ``dialog:active_dialogs`` report.

The relay calls two hooks: ``confirmed`` when it forwards a 2xx to an INVITE, ``ended``
when it forwards a BYE. Both cost a dict operation.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from sipgw.proxy.limits import CapLog
from sipgw.proxy.stats import StatDef, Stats
from sipgw.rpc.registry import rpc
from sipgw.sip.message import Request, Response

DIALOG_STATS = (
    StatDef(group="dialog", name="active_dialogs", help="dialogs confirmed (2xx) and not ended",
            gauge=True),
    StatDef(group="dialog", name="processed_dialogs", help="dialogs confirmed since start"),
    StatDef(group="dialog", name="expired_dialogs",
            help="dialogs ended by the timeout, without a BYE"),
)

log = Logger(namespace="sipgw.dialogs")

DEFAULT_TIMEOUT = 43200.0  # Kamailio's dialog default_timeout, seconds
STATE_CONFIRMED = 4  # Kamailio's DLG_STATE_CONFIRMED_NA / 4 = confirmed


@dataclass(slots=True, kw_only=True)
class Dialog:
    h_id: int
    call_id: str
    from_uri: str
    from_tag: str
    to_uri: str
    to_tag: str
    start: float  # clock seconds
    start_wall: float
    caller_contact: str
    callee_contact: str

    def as_kamailio(self, now: float, timeout: float) -> dict[str, Any]:
        return {
            "h_entry": self.h_id % 4096, "h_id": self.h_id,
            "call-id": self.call_id,
            "from_uri": self.from_uri, "from_tag": self.from_tag,
            "to_uri": self.to_uri, "to_tag": self.to_tag,
            "state": STATE_CONFIRMED,
            "start_ts": int(self.start_wall),
            "timeout": int(self.start_wall + timeout),
            "lifetime": int(now - self.start),
            "caller_contact": self.caller_contact,
            "callee_contact": self.callee_contact,
        }


def _uri(value: str | None) -> str:
    if not value:
        return ""
    value = value.strip()
    if "<" in value:
        return value.split("<", 1)[1].split(">", 1)[0]
    return value.split(";", 1)[0]


class Dialogs:
    def __init__(self, clock, stats: Stats, *, timeout: float = DEFAULT_TIMEOUT,
                 wall=time.time, max_dialogs: int = 100_000) -> None:
        self.clock = clock
        self.stats = stats
        self.timeout = timeout
        # limits.max_dialogs: a caller and callee that never send BYE (or a backend that
        # confirms calls by the thousand) must not grow this table for 12 hours.
        self.max_dialogs = max_dialogs
        self.cap_log = CapLog(log, clock.seconds)
        self.wall = wall
        self.active: dict[tuple[str, str, str], Dialog] = {}
        self._ids = itertools.count(1)
        self._sweep_call = None
        stats.declare(DIALOG_STATS)

    # -- hooks from the relay ---------------------------------------------------------

    def configure(self, max_dialogs: int) -> None:
        """limits.max_dialogs, at reload."""
        self.max_dialogs = max_dialogs

    def confirmed(self, invite: Request, response: Response) -> None:
        """A 2xx to ``invite`` goes upstream: the dialog is active (retransmissions and
        2xx from further forks of an existing dialog change nothing)."""
        call_id = invite.call_id
        from_tag = invite.from_tag or ""
        to_tag = response.to_tag or ""
        key = (call_id, from_tag, to_tag)
        if key in self.active:
            return
        if len(self.active) >= self.max_dialogs:
            del self.active[next(iter(self.active))]  # the oldest: dicts keep their order
            self.cap_log.reached("limits.max_dialogs", "{n} dialogs tracked; the oldest "
                                 "forgotten (dlg.list only: calls are not affected)",
                                 n=self.max_dialogs)
        self.active[key] = Dialog(
            h_id=next(self._ids), call_id=call_id,
            from_uri=_uri(invite.header("from")), from_tag=from_tag,
            to_uri=_uri(invite.header("to")), to_tag=to_tag,
            start=self.clock.seconds(), start_wall=self.wall(),
            caller_contact=_uri(invite.header("contact")),
            callee_contact=_uri(response.header("contact")),
        )
        self.stats.inc("dialog:processed_dialogs")
        self._count()
        if self._sweep_call is None:
            self._sweep_call = self.clock.callLater(self.timeout, self._sweep)

    def ended(self, bye: Request) -> None:
        """A BYE in either direction ends its dialog."""
        call_id, a, b = bye.call_id, bye.from_tag or "", bye.to_tag or ""
        if self.active.pop((call_id, a, b), None) or self.active.pop((call_id, b, a), None):
            self._count()

    # -- timeout ----------------------------------------------------------------------

    def _sweep(self) -> None:
        self._sweep_call = None
        now = self.clock.seconds()
        expired = [k for k, d in self.active.items() if now - d.start >= self.timeout]
        for key in expired:
            del self.active[key]
        if expired:
            self.stats.inc("dialog:expired_dialogs", len(expired))
            self._count()
        if self.active:
            oldest = min(d.start for d in self.active.values())
            self._sweep_call = self.clock.callLater(max(oldest + self.timeout - now, 1.0),
                                                    self._sweep)

    def stop(self) -> None:
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None

    def _count(self) -> None:
        self.stats.set("dialog:active_dialogs", len(self.active))

    # -- RPC --------------------------------------------------------------------------

    @rpc("dlg.list", help="Active dialogs: Call-ID, From and To with their tags, start, "
                          "timeout and lifetime, as Kamailio lists them.")
    def rpc_list(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        return [d.as_kamailio(now, self.timeout) for d in self.active.values()]

    @rpc("dlg.stats_active", help="Dialogs by state: starting, connecting, answering, "
                                  "ongoing, all (sipgw counts confirmed dialogs: ongoing).")
    def rpc_stats_active(self) -> dict[str, int]:
        n = len(self.active)
        return {"starting": 0, "connecting": 0, "answering": 0, "ongoing": n, "all": n}
