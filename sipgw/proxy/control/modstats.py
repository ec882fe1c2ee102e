"""``mod.stats``: what each part of sipgw holds in memory, named as Kamailio names modules.

Kamailio's ``kamcmd mod.stats MODULE|all pkg|shm|all`` prints the bytes each module has
allocated. sipgw is one Python process without per-module allocators, so this reports what
can be measured honestly instead: for each component ("module") the tables it keeps, with
their number of entries and an estimate of their bytes.

The estimate is ``sys.getsizeof`` summed over the table, its keys and entries, and what the
entries hold: containers, strings and sipgw's own objects are followed; objects of other
libraries (a Twisted transport, an autobahn protocol's state) count with their attribute
dict but without what they refer to; functions, classes, enum members and the components
themselves are not counted. An object reached twice within one module counts once (a
client transaction's server transaction, already counted with the server transactions). A
table of more than ``SAMPLE`` entries is estimated from its first ``SAMPLE``: their mean
times the number of entries. It is a floor, not the process's RSS (``core.memory``): memory
the allocator keeps, interpreter overhead and garbage not yet collected are not in it.
"""

from __future__ import annotations

import enum
import sys
import types
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any

from sipgw.rpc.registry import RpcError, rpc

if TYPE_CHECKING:
    from sipgw.proxy.service import ProxyService

SAMPLE = 1000  # entries measured per table; the rest are assumed alike
MAX_DEPTH = 24  # a guard against a chain of objects, not a limit met in practice

_SKIPPED = (type, types.ModuleType, types.FunctionType, types.MethodType,
            types.BuiltinFunctionType, types.BuiltinMethodType, enum.Enum)
_ATOMS = (str, bytes, bytearray, int, float, bool, type(None), memoryview)
_SEQUENCES = (list, tuple, set, frozenset, deque)

# Kamailio's module names for sipgw's components; auth_db is the name the guide uses for
# authentication (sipgw has one component for it).
ALIASES = {"auth_db": "auth"}
TRANSPORTS_WS = ("ws", "wss")


def _flows(service: ProxyService, ws: bool) -> dict:
    return {fid: flow for fid, flow in service.flows.by_id.items()
            if (getattr(flow, "transport_name", "") in TRANSPORTS_WS) == ws}


def _core(service: ProxyService) -> dict[str, Any]:
    return {"statistics": service.stats.values, "tcp_connections": _flows(service, ws=False),
            "connection_index": service.flows.by_addr}


def _tm(service: ProxyService) -> dict[str, Any]:
    relay = service.proxy.relay
    return {"server_transactions": relay.servers, "client_transactions": relay.clients,
            "retired_server_transactions": relay.retired_servers.entries,
            "retired_client_transactions": relay.retired_clients.entries}


def _registrar(service: ProxyService) -> dict[str, Any]:
    registrar = service.proxy.registrar
    return {"flows": registrar.records, "flow_addresses": registrar.by_address}


def _dispatcher(service: ProxyService) -> dict[str, Any]:
    dispatcher = service.proxy.dispatcher
    return {} if dispatcher is None else dispatcher.memory_tables()


def _websocket(service: ProxyService) -> dict[str, Any]:
    tables: dict[str, Any] = {"connections": _flows(service, ws=True)}
    if service.ws is not None:
        tables["connections_per_address"] = service.ws.caps.per_address
    return tables


def _auth(service: ProxyService) -> dict[str, Any]:
    auth = service.proxy.auth
    if auth is None:
        return {}
    return {**auth.nonces.memory_tables(), **auth.bans.memory_tables()}


def _pike(service: ProxyService) -> dict[str, Any]:
    pike = service.proxy.pike
    return {} if pike is None else pike.memory_tables()


def _dialog(service: ProxyService) -> dict[str, Any]:
    dialogs = service.proxy.dialogs
    return {} if dialogs is None else {"dialogs": dialogs.active}


MODULES: dict[str, Callable[[ProxyService], dict[str, Any]]] = {
    "core": _core, "tm": _tm, "registrar": _registrar, "dispatcher": _dispatcher,
    "websocket": _websocket, "auth": _auth, "pike": _pike, "dialog": _dialog,
}


class Sizer:
    """``sys.getsizeof`` over an object graph, each object once, stopping at ``stop``."""

    def __init__(self, stop: Iterable[object]) -> None:
        self.seen: set[int] = {id(o) for o in stop}

    def size(self, obj: object, depth: int = 0) -> int:
        if id(obj) in self.seen or isinstance(obj, _SKIPPED) or depth > MAX_DEPTH:
            return 0
        self.seen.add(id(obj))
        total = sys.getsizeof(obj)
        if isinstance(obj, _ATOMS):
            return total
        if isinstance(obj, dict):
            return total + sum(self.size(k, depth + 1) + self.size(v, depth + 1)
                               for k, v in obj.items())
        if isinstance(obj, _SEQUENCES):
            return total + sum(self.size(item, depth + 1) for item in obj)
        ours = type(obj).__module__.startswith("sipgw.")
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict) and id(attrs) not in self.seen:
            self.seen.add(id(attrs))
            total += sys.getsizeof(attrs)
            if ours:
                total += sum(self.size(v, depth + 1) for v in attrs.values())
        if ours:
            for cls in type(obj).__mro__:
                slots = cls.__dict__.get("__slots__", ())
                for name in (slots,) if isinstance(slots, str) else slots:
                    total += self.size(getattr(obj, name, None), depth + 1)
        return total

    def table(self, table: Any) -> dict[str, int]:
        """``{"entries": n, "bytes": estimate}`` of one table (a dict or a collection)."""
        entries = len(table)
        total = self.size_shallow(table)
        if isinstance(table, dict):
            sample = [self.size(k) + self.size(v) for k, v in islice(table.items(), SAMPLE)]
        else:
            sample = [self.size(item) for item in islice(table, SAMPLE)]
        if sample:
            total += sum(sample) * entries // len(sample)
        return {"entries": entries, "bytes": total}

    def size_shallow(self, obj: object) -> int:
        """The container alone: what it holds is measured entry by entry."""
        if id(obj) in self.seen:
            return 0
        self.seen.add(id(obj))
        return sys.getsizeof(obj)


class ModStats:
    """The ``mod.stats`` owner: sizes the tables of ``MODULES`` on the running service."""

    def __init__(self, service: ProxyService) -> None:
        self.service = service

    def _stop(self) -> list[object]:
        """The components themselves: reached from an entry, they are not the entry's."""
        svc = self.service
        proxy = svc.proxy
        stop: list[object] = [svc, svc.reactor, svc.stats, svc.flows, svc.loaded, svc.ws,
                              svc.stream, svc.tls_stream, svc.control]
        if proxy is not None:
            stop += [proxy, proxy.relay, proxy.router, proxy.registrar, proxy.dispatcher,
                     proxy.auth, proxy.pike, proxy.dialogs, proxy.nat, proxy.identity,
                     proxy.acl, proxy.clock]
        return [o for o in stop if o is not None]

    def module(self, name: str) -> dict[str, Any]:
        """One module's tables, each ``{"entries", "bytes"}``, and ``Total`` bytes."""
        if self.service.proxy is None:
            return {"Total": 0}
        sizer = Sizer(self._stop())
        out: dict[str, Any] = {}
        for table, content in MODULES[ALIASES.get(name, name)](self.service).items():
            out[table] = sizer.table(content)
        out["Total"] = sum(t["bytes"] for t in out.values())
        return out

    @rpc("mod.stats", help="Memory of sipgw's components named as Kamailio modules (core, "
                           "tm, registrar, dispatcher, websocket, auth or auth_db, pike, "
                           "dialog): each table's entries and estimated bytes, and Total; "
                           "MODULE or all, then pkg, shm or all (one process: the same).")
    def rpc_stats(self, module: str = "all", kind: str = "all") -> dict[str, Any]:
        if kind not in ("pkg", "shm", "all"):
            raise RpcError(f"memory kind {kind!r}: use pkg, shm or all")
        if module == "all":
            return {name: self.module(name) for name in MODULES}
        if ALIASES.get(module, module) not in MODULES:
            names = ", ".join([*MODULES, *ALIASES])
            raise RpcError(f"no module {module!r}; modules: {names} or all")
        return {module: self.module(module)}
