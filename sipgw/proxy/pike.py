"""Flood detection per source address, as Kamailio's pike module does it.

Every request a source sends counts in the current sampling unit (``sampling_time_unit``
seconds, aligned on the clock). A source that sends more than ``reqs_density_per_unit``
requests in one unit is blocked: everything it sends afterwards is dropped unread, with no
reply (an answer would only help the flood), and counted in ``pike:dropped_msgs``; its new
TCP/TLS/WebSocket connections are closed as soon as they are accepted (``Proxy.screen``).
It stays blocked until it has been quiet for ``remove_latency`` seconds.

The check runs before parsing (``Proxy.receive``), since a flood must cost as little CPU as
possible: for a source that is not blocked it is one dict lookup, a clock read and a few
comparisons. The source is ``Source.host``, which for WebSocket behind a trusted reverse
proxy is already the client's own address (``transport.ws.client_address``).

Exempt: addresses in ``auth.trusted`` and the dispatcher's backends (by address, any port).
Exemption is decided when an address is first seen and checked again before it would be
blocked, so a backend added later is never blocked.

Several workers (issue 14) share the count. The kernel spreads one address's datagrams
and connections over the workers by source port, so each sees only a part of a flood.
A worker tells the others how many requests an address sent it in the current unit each
time that count reaches a multiple of ``step`` (the density over twice the workers): an
address below that on every worker costs the channel nothing, one that floods costs at
most twice the workers' count of messages per unit before it is blocked. Each worker
blocks when its own count plus the others' last reports pass the density (so the sum
over workers is exact to within a step per other worker), and a worker that blocks an
address tells the others, which block it too: within one unit, every worker drops it.
Each then releases it when it has been quiet *there* for ``remove_latency``.

Memory is bounded: at most ``max_sources`` addresses are tracked; a new one beyond that
makes the least recently active one forgotten (a spoofed-source flood only recycles the
table, and a warning says so). Entries silent for ``remove_latency`` (at least one unit)
are removed by a sweep every unit; a blocked one is released then, with a log line.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sipgw.config import PikeConfig
from sipgw.proxy.stats import StatDef, Stats
from sipgw.proxy.transport import Source, transport_address
from sipgw.rpc.registry import RpcError, rpc

log = Logger(namespace="sipgw.pike")

PIKE_STATS = (
    StatDef(group="pike", name="blocked_ips", help="source addresses blocked by pike now", gauge=True),  # noqa: E501
    StatDef(group="pike", name="dropped_msgs", help="messages dropped unread because their source address was blocked by pike"),  # noqa: E501
)

TOP_ROWS = 1000  # pike.top ALL lists at most this many addresses, the busiest first


class _Entry:
    """One source address: hits in the current and the previous unit, and its state."""

    __slots__ = ("host", "window_end", "hits", "prev", "last", "blocked", "exempt",
                 "dropped", "since", "others", "reports")

    def __init__(self, host: str, window_end: float, now: float, exempt: bool) -> None:
        self.host = host
        self.window_end = window_end  # the current unit ends here
        self.hits = 0  # messages in the current unit
        self.prev = 0  # messages in the unit before
        self.last = now  # last message, dropped or not
        self.blocked = False
        self.exempt = exempt
        self.dropped = 0  # while blocked, for the release log line
        self.since = now  # blocked since
        self.others = 0  # requests in the current unit on the other workers, as they said
        self.reports: dict[int, int] | None = None  # worker → its last report this unit


class Pike:
    """The table of sources and the check ``Proxy.receive`` calls for every message."""

    def __init__(
        self,
        clock: IReactorTime,
        stats: Stats,
        settings: PikeConfig,
        *,
        exempt: Callable[[str], bool] = lambda host: False,
    ) -> None:
        self.clock = clock
        self.stats = stats
        self.exempt = exempt
        self._table: OrderedDict[str, _Entry] = OrderedDict()  # least recently active first
        self._blocked = 0
        self._evicted = 0  # since the last sweep, for one warning per sweep
        self._sweeper: LoopingCall | None = None
        self.workers = 1
        # Tells the other workers (topic, payload); None in a single process.
        self.share: Callable[[str, dict], None] | None = None
        stats.declare(PIKE_STATS)
        self.configure(settings)

    def configure(self, settings: PikeConfig) -> None:
        """Apply (re)loaded [pike]; the table survives (unless pike is turned off), and
        exemptions are decided again."""
        self.settings = settings
        self.enabled = settings.enabled
        self.unit = settings.sampling_time_unit
        self.density = settings.reqs_density_per_unit
        self.step = max(1, -(-self.density // (2 * self.workers)))  # see the module doc
        self.latency = settings.remove_latency
        # An entry must live at least one unit, or its count would be lost mid-unit.
        self.keep = max(settings.remove_latency, settings.sampling_time_unit)
        for entry in list(self._table.values()):
            entry.exempt = self.exempt(entry.host)
            if not self.enabled:
                self._forget(entry, "pike.enabled = false")
            elif entry.exempt and entry.blocked:
                self._release(entry, "now trusted")
        while len(self._table) > settings.max_sources:
            self._evict()
        if self._sweeper is not None and self._sweeper.running:
            self.stop()
            self.start()

    # -- the check ----------------------------------------------------------------------

    def check(self, source: Source, request: bool = True) -> bool:
        """One message from ``source``; False means drop it unread.

        Only requests count towards the density, as in Kamailio's pike_check_req: a phone
        answering the calls it is offered must not be blocked for it. A blocked source's
        replies are dropped all the same.
        """
        if not self.enabled:
            return True
        entry = self._table.get(source.host)
        now = self.clock.seconds()
        if entry is None:
            entry = self._new(source.host, now)
        elif entry.exempt:
            return True
        if now >= entry.window_end:
            self._roll(entry, now)
        if entry.blocked:
            if now - entry.last < self.latency:
                entry.last = now
                entry.dropped += 1
                self.stats.values["pike:dropped_msgs"] += 1
                return False
            self._release(entry, f"quiet for {now - entry.last:.1f}s")
        if not request:
            return True
        entry.last = now
        entry.hits += 1
        if entry.hits + entry.others > self.density and not entry.exempt:
            return not self._block(entry, now, transport_address(
                source.transport, source.host, source.port), dropped=1)
        if self.share is not None and entry.hits % self.step == 0:
            self.share("pike.hits", {"host": entry.host, "unit": self._unit_of(entry),
                                     "hits": entry.hits})
        return True

    def blocked(self, host: str) -> bool:
        """Is ``host`` blocked now? Asked for new connections, which are not messages: the
        question does not extend the block."""
        entry = self._table.get(host)
        return (entry is not None and entry.blocked
                and self.clock.seconds() - entry.last < self.latency)

    def _new(self, host: str, now: float) -> _Entry:
        if len(self._table) >= self.settings.max_sources:
            self._evict()
        entry = _Entry(host, self._window_end(now), now, self.exempt(host))
        self._table[host] = entry
        return entry

    def _window_end(self, now: float) -> float:
        return now - now % self.unit + self.unit

    def _roll(self, entry: _Entry, now: float) -> None:
        """A new unit: the count moves to ``prev`` (or is forgotten after a silent unit)."""
        entry.prev = entry.hits if now < entry.window_end + self.unit else 0
        entry.hits = entry.others = 0
        entry.reports = None
        entry.window_end = self._window_end(now)
        self._table.move_to_end(entry.host)  # keeps the table ordered by activity

    def _block(self, entry: _Entry, now: float, seen: str, dropped: int = 0) -> bool:
        """Block ``entry`` by our count (``seen``: where its last request came from, which
        is ``dropped``); False when it turned out exempt."""
        if self.exempt(entry.host):  # a backend added since it was first seen
            entry.exempt = True
            return False
        self._blocked_now(entry, now)
        entry.dropped = dropped
        self.stats.values["pike:dropped_msgs"] += dropped
        over = (f" ({entry.hits} here, {entry.others} on the other workers)"
                if entry.others else "")
        # "pike blocking": the words of the Kamailio guide's xlog line, which operators grep.
        log.warn("pike blocking {host} ({src}): more than {n} messages in {unit:g}s{over}; "
                 "dropping everything it sends until it is quiet for {latency:g}s",
                 host=entry.host, src=seen, n=self.density, unit=self.unit, over=over,
                 latency=self.latency)
        if self.share is not None:
            self.share("pike.block", {"host": entry.host})
        return True

    def _blocked_now(self, entry: _Entry, now: float) -> None:
        entry.blocked = True
        entry.since = now
        entry.last = now
        entry.dropped = 0
        self._blocked += 1
        self.stats.values["pike:blocked_ips"] = self._blocked

    # -- with the other workers ---------------------------------------------------------

    def share_with(self, publish: Callable[[str, dict], None],
                   workers: int) -> dict[str, Callable[[dict, int], None]]:
        """Count with the other workers (``service.share_state``): our reports and
        blocks are published, and the handlers of theirs are returned, by topic."""
        self.share = publish
        self.workers = workers
        self.configure(self.settings)
        return {"pike.hits": self._reported, "pike.block": self._blocked_elsewhere}

    def snapshot(self) -> list[str]:
        """The addresses blocked here, for a worker that (re)starts."""
        return [e.host for e in self._table.values() if e.blocked and self.blocked(e.host)]

    def restore(self, hosts: list[str], origin: int) -> None:
        """Another worker's blocked addresses (``snapshot``), blocked here too."""
        for host in hosts:
            self._blocked_elsewhere({"host": host}, origin)

    def _unit_of(self, entry: _Entry) -> int:
        """The number of the entry's current unit, the same in every worker."""
        return round(entry.window_end / self.unit)

    def _peer_entry(self, host: str) -> _Entry | None:
        """The entry another worker's message is about, or None when it changes nothing."""
        if not self.enabled:
            return None
        now = self.clock.seconds()
        entry = self._table.get(host)
        if entry is None:
            entry = self._new(host, now)
        elif now >= entry.window_end:
            self._roll(entry, now)
        return None if entry.exempt else entry

    def _reported(self, payload: dict, origin: int) -> None:
        """Worker ``origin`` counted ``hits`` requests from ``host`` in unit ``unit``."""
        entry = self._peer_entry(payload["host"])
        if entry is None or entry.blocked or payload["unit"] != self._unit_of(entry):
            return  # blocked already, or a unit already over here (its count went with it)
        if entry.reports is None:
            entry.reports = {}
        entry.reports[origin] = payload["hits"]
        entry.others = sum(entry.reports.values())
        if entry.hits + entry.others > self.density:
            self._block(entry, self.clock.seconds(), entry.host)

    def _blocked_elsewhere(self, payload: dict, origin: int) -> None:
        entry = self._peer_entry(payload["host"])
        if entry is None:
            return
        now = self.clock.seconds()
        if entry.blocked:  # here too; blocked afresh there, so its quiet starts again here
            entry.last = now
            return
        if self.exempt(entry.host):
            entry.exempt = True
            return
        self._blocked_now(entry, now)
        log.info("pike blocking {host}: blocked by worker {w}; dropping everything it "
                 "sends here until it is quiet for {latency:g}s", host=entry.host, w=origin,
                 latency=self.latency)

    def _release(self, entry: _Entry, why: str) -> None:
        entry.blocked = False
        entry.hits = entry.prev = 0
        self._blocked -= 1
        self.stats.values["pike:blocked_ips"] = self._blocked
        log.info("releasing {host} ({why}); blocked {secs:g}s, {n} messages dropped",
                 host=entry.host, why=why, secs=round(self.clock.seconds() - entry.since, 1),
                 n=entry.dropped)

    def _forget(self, entry: _Entry, why: str) -> None:
        del self._table[entry.host]
        if entry.blocked:
            self._release(entry, why)

    def _evict(self) -> None:
        _, entry = next(iter(self._table.items()))
        self._evicted += 1
        self._forget(entry, "forgotten: pike.max_sources reached")

    def memory_tables(self) -> dict[str, object]:
        """What ``mod.stats pike`` measures: the addresses pike follows."""
        return {"sources": self._table}

    # -- expiry -------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(self.unit, now=False)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def sweep(self) -> None:
        """Remove the entries silent for ``keep`` seconds, releasing the blocked ones.

        The table is ordered by the unit of each entry's last activity, so the walk stops
        at the first entry whose unit began less than ``keep`` seconds ago.
        """
        now = self.clock.seconds()
        done = []
        for entry in self._table.values():
            if entry.window_end - self.unit + self.keep > now:
                break
            if now - entry.last >= self.keep:
                done.append(entry)
        for entry in done:
            self._forget(entry, f"quiet for {now - entry.last:.1f}s")
        if self._evicted:
            log.warn("{n} source address(es) forgotten to stay within pike.max_sources "
                     "({max}): a flood from many addresses?", n=self._evicted,
                     max=self.settings.max_sources)
            self._evicted = 0

    def __len__(self) -> int:
        return len(self._table)

    # -- RPC ----------------------------------------------------------------------------

    def _status(self, entry: _Entry, now: float) -> str:
        """Kamailio's node status: HOT at the density (blocked), WARM at a quarter of it."""
        hits = entry.hits if now < entry.window_end else 0
        if entry.blocked or hits >= self.density:
            return "HOT"
        if hits >= self.density >> 2:
            return "WARM"
        return ""

    @rpc("pike.top", help="Source addresses pike tracks, busiest first, as Kamailio's pike.top: "
                          "HOT (default: blocked or at the density), WARM (a quarter of it or "
                          "more), or ALL.")
    def rpc_top(self, which: str = "HOT") -> dict:
        which = str(which).upper()
        wanted = {"HOT": ("HOT",), "WARM": ("WARM", "HOT"), "ALL": None}.get(which, ())
        if wanted == ():
            raise RpcError("bad argument: HOT, WARM or ALL")
        now = self.clock.seconds()
        rows: list[dict[str, Any]] = []
        for entry in self._table.values():
            if entry.exempt:
                continue
            status = self._status(entry, now)
            if wanted is not None and status not in wanted:
                continue
            current = now < entry.window_end
            curr = entry.hits if current else 0
            prev = entry.prev if current else (entry.hits if now < entry.window_end
                                               + self.unit else 0)
            expires = (self.latency if entry.blocked else self.keep) - (now - entry.last)
            rows.append({"ip_addr": entry.host, "leaf_hits_prev": prev, "leaf_hits_curr": curr,
                         "expires": max(0, round(expires)), "status": status})
        rows.sort(key=lambda r: r["leaf_hits_prev"] + r["leaf_hits_curr"], reverse=True)
        rows = rows[:TOP_ROWS]
        return {"max_hits": self.density, "list": rows, "number_of_rows": len(rows)}

    @rpc("pike.list", help="The same as pike.top (Kamailio's alias).")
    def rpc_list(self, which: str = "HOT") -> dict:
        return self.rpc_top(which)

    @rpc("pike.unblock", help="Release a blocked source address now (or all); returns how "
                              "many were released.")
    def rpc_unblock(self, address: str) -> int:
        address = str(address)
        entries = [e for e in self._table.values()
                   if e.blocked and (address == "all" or e.host == address)]
        for entry in entries:
            self._release(entry, "pike.unblock")
        if not entries and address != "all":
            raise RpcError(f"{address} is not blocked")
        return len(entries)
