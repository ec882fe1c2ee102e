"""Health probes: an OPTIONS to each destination every ``ping_interval``, as Kamailio's
ds_check_timer does, with their own short timeout.

Which destinations are probed follows Kamailio's ``ds_probing_mode`` (0 those flagged
probing, 1 all, 2 the inactive ones, 3 those flagged probing, without ever clearing the
flag). The probe goes through a real non-INVITE client transaction (retransmitted over UDP
from T1 on) whose timer F is ``ping_timeout`` instead of 32 s: a dead backend is noticed in
seconds. A reply whose code is in ``ping_reply_codes`` means alive: a backend that answers
403 or 405 to an OPTIONS from a stranger still answered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from twisted.internet.task import LoopingCall

from sipgw.proxy.dispatcher.state import (
    DISABLED,
    INACTIVE,
    NOPING,
    PROBE_ALL,
    PROBE_INACTIVE,
    PROBING,
)
from sipgw.sip.message import Request

_CODE = re.compile(r"([1-6])(\d\d|xx)\Z")


class StatusCodes:
    """A set of SIP status codes written as ``"408"`` or ``"5xx"``."""

    __slots__ = ("items", "_exact", "_classes")

    def __init__(self, items: Iterable[str]) -> None:
        self.items = tuple(items)
        self._exact: set[int] = set()
        self._classes: set[int] = set()
        for item in self.items:
            m = _CODE.match(item.strip().lower())
            if m is None:
                raise ValueError(f'expected a status code like "408" or "5xx", got {item!r}')
            if m.group(2) == "xx":
                self._classes.add(int(m.group(1)))
            else:
                self._exact.add(int(item))

    def __contains__(self, status: int) -> bool:
        return status in self._exact or status // 100 in self._classes

    def __repr__(self) -> str:
        return f"StatusCodes({list(self.items)!r})"


def wants_probe(flags: int, mode: int) -> bool:
    """ds_check_timer's choice for one destination."""
    if flags & (NOPING | DISABLED):
        return False
    if mode == PROBE_ALL:
        return True
    if mode == PROBE_INACTIVE:
        return bool(flags & INACTIVE)
    return bool(flags & PROBING)  # modes 0 and 3


def options_request(uri: str, *, ping_from: str, call_id: str, tag: str, cseq: int) -> Request:
    """The probe, as Kamailio's ds_ping sends it; the relay adds the Via."""
    req = Request("OPTIONS", uri)
    req.append("From", f"<{ping_from}>;tag={tag}")
    req.append("To", f"<{uri}>")
    req.append("Call-ID", call_id)
    req.append("CSeq", f"{cseq} OPTIONS")
    req.append("Max-Forwards", "70")
    req.append("Content-Length", "0")
    return req


class Prober:
    """Calls ``probe_all`` every ``interval`` seconds on the given clock (0 = never)."""

    def __init__(self, clock, probe_all: Callable[[], None]) -> None:
        self.clock = clock
        self.probe_all = probe_all
        self.interval = 0.0
        self._loop: LoopingCall | None = None
        self._first = None

    def start(self, interval: float) -> None:
        """(Re)start at ``interval``; the first round goes out as soon as the reactor
        runs (the listeners are not sending yet while the service starts)."""
        if self._loop is not None and interval == self.interval:
            return
        self.stop()
        self.interval = interval
        if interval <= 0:
            return
        loop = self._loop = LoopingCall(self.probe_all)
        loop.clock = self.clock
        self._first = self.clock.callLater(0, loop.start, interval, now=True)

    def stop(self) -> None:
        if self._first is not None and self._first.active():
            self._first.cancel()
        self._first = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
