"""The dispatcher: a pool of backends (Asterisks) in sets, chosen per request, probed with
OPTIONS, failed over, as Kamailio's dispatcher module does (``listfile``, ``algorithms``,
``state``, ``health``).

The route script's DISPATCH step calls ``begin(request)``: an ``Attempt`` with the first
destination and the failover order, or None when no destination of the set is usable (the
caller then gets 503 with Retry-After). When a branch fails (the relay's per-request
``on_branch_failed`` hook), ``Attempt.failed`` says whether and where to try next.

Several workers keep one state (issue 14): only one of them probes (``probes``: worker 0),
so each destination gets one OPTIONS per interval, and every event that moves a state --
a probe's result, a request that failed there, a transport error, ``dispatcher.set_state``,
``dispatcher.reload`` -- is published to the other workers (``share``), which apply it to
their copy as if it had happened to them. The worker where it happened logs the change;
the others log it at debug. While worker 0 is down (restarting), nobody probes.

Operations (``dispatcher.list``, ``dispatcher.reload``, ``dispatcher.set_state``) return
Kamailio's shapes (DESIGN.md §6). Every state change is logged once, as
``dispatcher: set 1 sip:10.0.0.5:5060 AP -> IP (probe timeout)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Callable, Iterable

from twisted.logger import Logger, LogLevel

from sipgw.config import DispatcherConfig
from sipgw.proxy.dispatcher.algorithms import HASHED, SUPPORTED, Keys, SetSelector
from sipgw.proxy.dispatcher.health import (
    Prober,
    StatusCodes,
    options_request,
    wants_probe,
)
from sipgw.proxy.dispatcher.icmp import UnreachableDetector
from sipgw.proxy.dispatcher.listfile import (
    DispatcherList,
    ListFileError,
    check_uri,
    load_list,
)
from sipgw.proxy.dispatcher.state import (
    PROBE_ALL,
    PROBE_ONLY_FLAGGED,
    PROBING,
    Target,
    flags_text,
    parse_state,
)
from sipgw.proxy.limits import CapLog
from sipgw.proxy.stats import StatDef, Stats
from sipgw.proxy.transport import Destination, Source
from sipgw.rpc.registry import RpcError, rpc
from sipgw.sip.address import parse_name_addr
from sipgw.sip.digest import parse_credentials
from sipgw.sip.errors import ParseError
from sipgw.sip.message import Request

__all__ = ["Attempt", "Dispatcher", "ListFileError", "StatusCodes", "Target"]

log = Logger(namespace="sipgw.dispatcher")

DISPATCHER_STATS = (
    StatDef(group="dispatcher", name="active_destinations", gauge=True,
            help="destinations usable now (neither inactive nor disabled), all sets"),
    StatDef(group="dispatcher", name="failovers",
            help="requests sent to a next destination after one failed"),
    StatDef(group="dispatcher", name="no_destination",
            help="requests answered 503 because no destination was usable"),
    StatDef(group="dispatcher", name="probes_sent", help="OPTIONS probes sent"),
    StatDef(group="dispatcher", name="probe_failures",
            help="probes that timed out, failed to send or got a code not counted as alive"),
)

TOPIC = "dispatcher"  # what the workers publish to each other (``share_with``)

# Calls tracked for algorithm 10 are forgotten after this (Kamailio's ds_hash_expire).
CALL_EXPIRE = 7200.0


def request_keys(req: Request, algorithm: int) -> Keys:
    """What ``algorithm`` reads from the request: only the header its hash needs is parsed;
    a header that does not parse hashes as empty (or as written)."""
    keys = Keys(method=req.method, call_id=req.header("call-id") or "")
    field = HASHED.get(algorithm)
    if field is None or field == "call_id":
        return keys
    return dataclasses.replace(keys, **{field: _KEY_READERS[field](req)})


def _uri_key(req: Request, name: str) -> str:
    """user@host of the From or To URI (Kamailio hashes those two parts)."""
    value = req.header(name)
    if not value:
        return ""
    try:
        uri = parse_name_addr(value).uri
    except ParseError:
        return value
    user = getattr(uri, "user", None)
    host = getattr(uri, "host", "")
    return f"{user}@{host}" if user else str(host or uri)


def _auth_user(req: Request) -> str:
    for name in ("proxy-authorization", "authorization"):
        value = req.header(name)
        if value:
            try:
                return parse_credentials(value).username or ""
            except ParseError:
                return ""
    return ""


def _ruri_user(req: Request) -> str:
    try:
        return getattr(req.parsed_uri(), "user", None) or ""
    except ParseError:
        return ""


_KEY_READERS = {
    "from_uri": lambda req: _uri_key(req, "from"),
    "to_uri": lambda req: _uri_key(req, "to"),
    "ruri_user": _ruri_user,
    "auth_user": _auth_user,
}


class Attempt:
    """One request's way through a set: where it went, where it may go next."""

    __slots__ = ("dispatcher", "order", "target", "tries", "call_id")

    def __init__(self, dispatcher: Dispatcher, order: list[Target], call_id: str | None):
        self.dispatcher = dispatcher
        self.order = order
        self.target = order[0]
        self.tries = 1
        self.call_id = call_id  # set when algorithm 10 counts this call's load

    def failed(self, status: int, local: bool) -> Target | None:
        """The branch to ``target`` ended with ``status`` (``local``: our own 408 timeout
        or 503 transport error). The next destination, or None to pass the result on."""
        d = self.dispatcher
        failed = self.target
        if local:
            failed.failures += 1
            d._request_failed(failed, transport=status == 503)
        elif status in d.failover_codes:
            failed.failures += 1
        else:
            d._call_done(self.call_id)  # a final answer (486, 404...): the call is over
            return None
        while self.tries <= d.settings.max_failover and self.order:
            self.order.pop(0)
            if self.order and self.order[0].usable:
                self.target = self.order[0]
                self.tries += 1
                self.target.sent += 1
                d.stats.inc("dispatcher:failovers")
                d._move_load(self.call_id, failed, self.target)
                log.info("dispatcher: failover from {a} ({s}) to {b}", a=failed.uri, s=status,
                         b=self.target.uri)
                return self.target
        d._call_done(self.call_id)
        return None


class Dispatcher:
    def __init__(
        self,
        *,
        clock,
        stats: Stats,
        settings: DispatcherConfig,
        inline: DispatcherList,
        resolve: Callable[[str], Destination],
        send_request: Callable[..., None] | None = None,
        rng: random.Random | None = None,
        detector: UnreachableDetector | None = None,
        max_calls: int = 100_000,
        fail_waiting: Callable[[str, int, str], None] | None = None,
    ) -> None:
        """``inline`` is the list from ``[dispatcher] destinations`` (used without a list
        file); ``resolve`` turns a destination URI into an address (and may raise
        ValueError); ``send_request(request, address, timeout=, on_result=)`` sends a probe;
        ``fail_waiting(host, port, transport)`` fails the branches waiting on a destination
        another worker found unreachable (ours fail when we find it ourselves).
        Nothing is loaded until ``reload()``."""
        self.fail_waiting = fail_waiting
        self.clock = clock
        self.stats = stats
        stats.declare(DISPATCHER_STATS)
        self._apply(settings)
        self.inline = inline
        self.resolve = resolve
        self.send_request = send_request
        self.rng = rng or random.Random()
        self.sets: dict[int, list[Target]] = {}
        self.listed = ""  # a digest of the list loaded: a worker that has it needs no reload
        self.selectors: dict[int, SetSelector] = {}
        self._backends: set[tuple[str, int]] = set()
        self._backend_transports: set[tuple[str, str, int]] = set()  # (transport, host, port)
        self._backend_hosts: set[str] = set()
        self._pending: set[int] = set()  # id() of targets with a probe in flight
        self._calls: dict[str, tuple[Target, float]] = {}
        self.max_calls = max_calls  # limits.max_dialogs: calls counted for algorithm 10
        self.cap_log = CapLog(log, clock.seconds)
        self._probe_ids = 0
        self.prober = Prober(clock, self.probe_all)
        self.probes = True  # this process probes (only worker 0 of several does)
        self._running = False  # probing, between start() and stop()
        # Tells the other workers (topic, payload); None in a single process.
        self.share: Callable[[str, dict], None] | None = None
        # Notices ICMP unreachable for UDP destinations (icmp.py).
        self.detector = detector

    def memory_tables(self) -> dict[str, object]:
        """What ``mod.stats dispatcher`` measures: the destinations by set, and the calls
        counted towards their load (algorithm 10)."""
        return {"destinations": self.sets, "call_load": self._calls}

    # -- the list ---------------------------------------------------------------------

    def load(self, dlist: DispatcherList) -> None:
        """Use ``dlist`` from now on; destinations still listed keep their state and
        counters. Raises ListFileError (nothing changed) when a host does not resolve."""
        old = {(t.setid, t.uri): t for ts in self.sets.values() for t in ts}
        sets: dict[int, list[Target]] = {}
        for setid, entries in dlist.sets().items():
            for e in entries:
                try:
                    address = self.resolve(e.uri)
                except (ValueError, OSError) as err:
                    raise ListFileError(f"{e.uri}: {err}", path=dlist.source, line=e.line) from None
                flags = e.flags
                if self.settings.probing_mode == PROBE_ALL:
                    flags |= PROBING  # Kamailio flags every destination probing in mode 1
                previous = old.get((setid, e.uri))
                t = Target(setid=setid, uri=e.uri, address=address, priority=e.priority,
                           attrs=e.attrs, flags=flags, line=e.line)
                if previous is not None:
                    t.flags, t.sent, t.failures = previous.flags, previous.sent, previous.failures
                    t.latency, t.load = previous.latency, previous.load
                sets.setdefault(setid, []).append(t)
        for warning in dlist.warnings:
            log.warn("{w}", w=warning)
        self.sets = sets
        self.listed = _fingerprint(dlist)
        self.selectors = {s: SetSelector(self.settings.algorithm, self.rng) for s in sets}
        self._backend_transports = {(t.address.transport, t.address.host, t.address.port)
                                    for ts in sets.values() for t in ts}
        self._backends = {(host, port) for _, host, port in self._backend_transports}
        self._backend_hosts = {host for host, _ in self._backends}
        if self.detector is not None:
            self.detector.forget(self._backends)
        if self.settings.setid not in sets:
            log.warn("dispatcher: set {s} (used for requests) is not in {src}",
                     s=self.settings.setid, src=dlist.source)
        self._gauge()

    def read_list(self) -> DispatcherList:
        """The list as configured: the list file if there is one, else ``destinations``."""
        if self.settings.list_file:
            return load_list(self.settings.list_file)
        return self.inline

    def configure(self, settings: DispatcherConfig, inline: DispatcherList | None = None, *,
                  max_calls: int | None = None) -> None:
        """New settings (start, config reload); the list is (re)read by the caller."""
        algorithm_changed = settings.algorithm != self.settings.algorithm
        self._apply(settings)
        if max_calls is not None:
            self.max_calls = max_calls
        if inline is not None:
            self.inline = inline
        if algorithm_changed:
            self.selectors = {s: SetSelector(settings.algorithm, self.rng) for s in self.sets}
        if self._running and self.probes:
            self.prober.start(settings.ping_interval)

    def _apply(self, settings: DispatcherConfig) -> None:
        if settings.algorithm not in SUPPORTED:
            raise ValueError(f"dispatcher.algorithm {settings.algorithm} is not supported "
                             f"(supported: {', '.join(map(str, sorted(SUPPORTED)))})")
        self.settings = settings
        # The status-code patterns ("2xx", "408"), matched for every reply.
        self.ping_reply_codes = StatusCodes(settings.ping_reply_codes)
        self.failover_codes = StatusCodes(settings.failover_codes)

    def reload(self, origin: int | None = None) -> None:
        """Read the list again; a bad list raises ListFileError and changes nothing.
        ``origin``: the worker whose ``dispatcher.reload`` this follows."""
        dlist = self.read_list()
        self.load(dlist)
        count = sum(len(ts) for ts in self.sets.values())
        log.info("dispatcher: loaded {n} destinations in {s} sets from {src}{by}", n=count,
                 s=len(self.sets), src=dlist.source,
                 by="" if origin is None else f" (dispatcher.reload on worker {origin})")

    def targets(self) -> Iterable[Target]:
        for ts in self.sets.values():
            yield from ts

    # -- choosing ---------------------------------------------------------------------

    def select(self, request: Request, exclude: Iterable[Target] = ()) -> Target | None:
        """The destination for ``request`` in the configured set, skipping ``exclude``."""
        skip = {id(t) for t in exclude}
        for t in self._order(request):
            if id(t) not in skip:
                return t
        return None

    def _order(self, request: Request, keys: Keys | None = None) -> list[Target]:
        setid = self.settings.setid
        targets = self.sets.get(setid)
        if not targets:
            return []
        return self.selectors[setid].order(
            targets, keys or request_keys(request, self.settings.algorithm))

    def begin(self, request: Request) -> Attempt | None:
        """DISPATCH: an attempt for ``request``, or None (count it; the caller says 503)."""
        keys = request_keys(request, self.settings.algorithm)
        order = self._order(request, keys)
        if not order:
            self.stats.inc("dispatcher:no_destination")
            return None
        call_id = None
        if self.settings.algorithm == 10 and request.method == "INVITE" and keys.call_id:
            call_id = keys.call_id
            self._track_call(call_id, order[0])
        order[0].sent += 1
        return Attempt(self, order, call_id)

    def is_backend(self, source: Source | Destination) -> bool:
        """Did this come from (or go to) one of our destinations (any set)? Address, port
        and transport, as Kamailio's ds_is_from_list: a browser behind nginx has nginx's
        port, and a TCP client its own, either of which may be the number of a backend's
        UDP port on the same host."""
        return (source.transport, source.host, source.port) in self._backend_transports

    def is_backend_address(self, host: str, port: int) -> bool:
        """Is ``host:port`` one of our destinations', over any transport?"""
        return (host, port) in self._backends

    def is_backend_host(self, host: str) -> bool:
        """Is ``host`` one of our destinations' addresses, whatever the port?"""
        return host in self._backend_hosts

    # -- call load (algorithm 10) -----------------------------------------------------

    def _track_call(self, call_id: str, target: Target) -> None:
        now = self.clock.seconds()
        if len(self._calls) % 256 == 0:
            for cid, (_, started) in list(self._calls.items()):
                if now - started > CALL_EXPIRE:
                    self._call_done(cid)
        self._call_done(call_id)
        if len(self._calls) >= self.max_calls:
            # Calls that never sent a BYE, by the thousand: forget the oldest, so the
            # table stays bounded between the two-hour sweeps.
            self._call_done(next(iter(self._calls)))
            self.cap_log.reached("limits.max_dialogs", "{n} calls counted for the call "
                                 "load; the oldest forgotten", n=self.max_calls)
        target.load += 1
        self._calls[call_id] = (target, now)

    def _move_load(self, call_id: str | None, old: Target, new: Target) -> None:
        if call_id is not None and call_id in self._calls:
            old.load = max(old.load - 1, 0)
            new.load += 1
            self._calls[call_id] = (new, self._calls[call_id][1])

    def _call_done(self, call_id: str | None) -> None:
        entry = self._calls.pop(call_id, None) if call_id is not None else None
        if entry is not None:
            entry[0].load = max(entry[0].load - 1, 0)

    def call_ended(self, request: Request) -> None:
        """A BYE or CANCEL went by: the call no longer counts for algorithm 10."""
        if self._calls:
            self._call_done(request.header("call-id"))

    # -- health -----------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        if self.probes:
            self.prober.start(self.settings.ping_interval)

    def stop(self) -> None:
        self._running = False
        self.prober.stop()
        if self.detector is not None:
            self.detector.close()

    def probe_all(self) -> None:
        mode = self.settings.probing_mode
        for t in list(self.targets()):
            if wants_probe(t.flags, mode) and id(t) not in self._pending:
                self.probe(t)

    def probe(self, target: Target) -> None:
        if self.send_request is None:
            return
        self._probe_ids += 1
        n = self._probe_ids
        req = options_request(target.uri, ping_from=self.settings.ping_from,
                              call_id=f"ds-{os.getpid()}-{n}", tag=f"ds{n:x}", cseq=n)
        started = self.clock.seconds()
        self._pending.add(id(target))
        self.stats.inc("dispatcher:probes_sent")

        def done(status: int, local: bool) -> None:
            self._pending.discard(id(target))
            elapsed = self.clock.seconds() - started
            if self._probe_result(target, status, local, elapsed):
                self._tell("probe", target, status=status, local=local, elapsed=elapsed)

        self.send_request(req, target.address, timeout=self.settings.ping_timeout,
                          on_result=done)
        if self.detector is not None:
            self.detector.ping(target.address)

    def _probe_result(self, t: Target, status: int, local: bool, elapsed: float,
                      origin: int | None = None) -> bool:
        """Apply a probe's result (``origin``: the worker that probed); False when ``t``
        was removed by a reload while the probe was out."""
        if not any(t is x for x in self.sets.get(t.setid, ())):
            return False
        s = self.settings
        before = t.flags
        failures = 1 if origin is None else 0  # a probe is counted where it was sent
        if local:
            self.stats.inc("dispatcher:probe_failures", failures)
            if status == 503:
                t.unreachable()
                why = "unreachable"
            else:
                t.latency.timeouts += 1
                t.failed(probing_threshold=s.probing_threshold,
                         probing=s.probing_mode != PROBE_ONLY_FLAGGED)
                why = "probe timeout"
        elif status in self.ping_reply_codes:
            t.latency.add(elapsed * 1000.0)
            t.answered(inactive_threshold=s.inactive_threshold,
                       keep_probing=s.probing_mode != 0)
            why = f"probe answered {status}"
        else:
            self.stats.inc("dispatcher:probe_failures", failures)
            t.failed(probing_threshold=s.probing_threshold,
                     probing=s.probing_mode != PROBE_ONLY_FLAGGED)
            why = f"probe answered {status}"
        self._changed(t, before, why, origin)
        return True

    def _request_failed(self, t: Target, *, transport: bool, origin: int | None = None) -> None:
        """A relayed request got no answer (timeout) or could not be sent."""
        if not self._revivable():
            return
        if origin is None:
            self._tell("failed", t, transport=transport)
        before = t.flags
        if transport:
            t.unreachable()
            why = "transport error"
        else:
            t.failed(probing_threshold=self.settings.probing_threshold,
                     probing=self.settings.probing_mode != PROBE_ONLY_FLAGGED)
            why = "request timeout"
        self._changed(t, before, why, origin)

    def transport_error(self, host: str, port: int, origin: int | None = None) -> None:
        """Sending to host:port failed (ICMP unreachable, refused connection)."""
        if not self._revivable():
            return
        if origin is None and self.share is not None:
            self.share(TOPIC, {"kind": "unreachable", "host": host, "port": port})
        for t in self.targets():
            if (t.address.host, t.address.port) == (host, port):
                before = t.flags
                t.unreachable()
                self._changed(t, before, "transport error", origin)

    def _revivable(self) -> bool:
        """Only probes bring a destination back: without them, relayed traffic must not
        take one down (it would stay down until an operator's set_state)."""
        return self.settings.ping_interval > 0 and self.send_request is not None

    def _changed(self, t: Target, before: int, why: str, origin: int | None = None) -> None:
        old, new = flags_text(before), flags_text(t.flags)
        if old != new:
            # Logged once, by the worker where it happened; the others say it at debug.
            log.emit(LogLevel.info if origin is None else LogLevel.debug,
                     "dispatcher: set {s} {uri} {old} -> {new} ({why}{on})", s=t.setid,
                     uri=t.uri, old=old, new=new, why=why,
                     on="" if origin is None else f", on worker {origin}")
            self._gauge()

    # -- with the other workers -------------------------------------------------------

    def share_with(self, publish: Callable[[str, dict], None],
                   workers: int) -> dict[str, Callable[[dict, int], None]]:
        """Keep one state with the other workers (``service.share_state``): our
        events are published, and the handler of theirs is returned, by topic."""
        self.share = publish
        return {TOPIC: self._event}

    def snapshot(self) -> list[list]:
        """Every destination's state, for a worker that (re)starts: [set, uri, flags]."""
        return [[t.setid, t.uri, t.flags] for t in self.targets()]

    def restore(self, rows: list[list], origin: int) -> None:
        """Another worker's states (``snapshot``): a restarted worker takes them on instead
        of the list's (an operator's ``set_state`` and what probes found survive it)."""
        by_key = {(setid, uri): flags for setid, uri, flags in rows}
        for t in self.targets():
            flags = by_key.get((t.setid, t.uri))
            if flags is not None and flags != t.flags:
                before, t.flags = t.flags, flags
                self._changed(t, before, "as the other workers have it", origin)

    def _tell(self, kind: str, t: Target, **what) -> None:
        if self.share is not None:
            self.share(TOPIC, {"kind": kind, "set": t.setid, "uri": t.uri, **what})

    def _event(self, p: dict, origin: int) -> None:
        """What happened on worker ``origin``, applied here."""
        kind = p["kind"]
        if kind == "reload":
            if p["list"] == self.listed:
                return  # ours already (the control plane asked every worker to reload)
            try:
                self.reload(origin)
            except ListFileError as e:
                log.error("dispatcher reload (on worker {w}) refused here, keeping the "
                          "running list: {err}", w=origin, err=e)
        elif kind == "unreachable":
            # Only worker 0 probes and so notices ICMP unreachable: the calls this worker
            # sent there meanwhile fail over now, not after timer B.
            if self.fail_waiting is not None:
                self.fail_waiting(p["host"], p["port"], "udp")
            self.transport_error(p["host"], p["port"], origin)
        elif kind == "state":
            self._set_state(parse_state(p["state"]), p["set"], p["uri"], origin)
        else:
            t = next((t for t in self.sets.get(p["set"], ()) if t.uri == p["uri"]), None)
            if t is None:
                return  # not listed here (a reload in between)
            if kind == "probe":
                self._probe_result(t, p["status"], p["local"], p["elapsed"], origin)
            elif kind == "failed":
                self._request_failed(t, transport=p["transport"], origin=origin)

    def _gauge(self) -> None:
        self.stats.set("dispatcher:active_destinations", sum(t.usable for t in self.targets()))

    # -- operations -------------------------------------------------------------------

    @rpc("dispatcher.list", help="Destinations by set with their state flags (AP, IP, DX...), "
         "priority, attributes, probe latency and request counters, as Kamailio lists them.")
    def rpc_list(self) -> dict:
        records = []
        for setid, targets in self.sets.items():
            records.append({"SET": {"ID": setid, "TARGETS": [
                {"DEST": _dest_record(t)} for t in targets]}})
        return {"NRSETS": len(self.sets), "RECORDS": records}

    @rpc("dispatcher.reload", help="Read the destination list again (list_file, or the "
         "config's destinations); a bad list is refused and the running one kept.")
    def rpc_reload(self) -> None:
        try:
            self.reload()
        except ListFileError as e:
            log.error("dispatcher reload refused, keeping the running list: {err}", err=e)
            raise RpcError(f"reload refused, running list kept: {e}", code=500) from None
        if self.share is not None:
            self.share(TOPIC, {"kind": "reload", "list": self.listed})

    @rpc("dispatcher.set_state", help="set_state STATE SETID URI: STATE is a(ctive), "
         "i(nactive), d(isabled) or t(rying), optionally followed by p(robing); SETID may be "
         "'all'.")
    def rpc_set_state(self, state: str, setid: int | str, uri: str) -> None:
        try:
            bits = parse_state(str(state))
        except ValueError as e:
            raise RpcError(str(e)) from None
        try:
            check_uri(uri)
        except ValueError as e:
            raise RpcError(str(e)) from None
        if not self._set_state(bits, setid, uri):
            raise RpcError(f"destination not found: set {setid} {uri}", code=404)
        if self.share is not None:
            self.share(TOPIC, {"kind": "state", "state": str(state), "set": setid, "uri": uri})

    def _set_state(self, bits: int, setid: int | str, uri: str,
                   origin: int | None = None) -> bool:
        every = str(setid).lower() == "all"
        found = False
        for t in self.targets():
            if (every or str(t.setid) == str(setid)) and t.uri == uri:
                before = t.flags
                t.set_state(bits)
                self._changed(t, before, "set by operator", origin)
                found = True
        return found


def _fingerprint(dlist: DispatcherList) -> str:
    return hashlib.sha256(repr(dlist.entries).encode()).hexdigest()[:16]


def _dest_record(t: Target) -> dict:
    a = t.attrs
    attrs: dict[str, object] = {"BODY": a.body, "DUID": a.duid, "MAXLOAD": a.maxload,
                                "WEIGHT": a.weight, "RWEIGHT": a.rweight}
    for name, value in a.other:
        attrs[name.upper()] = value
    lat = t.latency
    return {
        "URI": t.uri,
        "FLAGS": t.state,
        "PRIORITY": t.priority,
        "ATTRS": attrs,
        "LATENCY": {"AVG": round(lat.avg, 3), "MAX": round(lat.max, 3), "TIMEOUT": lat.timeouts},
        "STATS": {"REQUESTS": t.sent, "FAILURES": t.failures, "LOAD": t.load,
                  "LAST_LATENCY": round(lat.last, 3)},
    }
