"""``core.*`` and ``cfg.*``: what the service knows about itself, over the control socket.

The service owns the running config, the start time and the listeners; this is its RPC face
(kamcmd's ``core.version``, ``core.uptime``, ``core.info``, ``core.printi``, ``cfg.get``,
``cfg.reload``), and ``core.connections``, the open connections by transport (what
``sipgw top`` shows).
"""

from __future__ import annotations

import os
import platform
import sys
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

from sipgw import __version__
from sipgw.config import ConfigError, config_to_dict, load_config
from sipgw.proxy.runtime.gcpolicy import full_collection, last_full
from sipgw.proxy.runtime.log import current_level
from sipgw.proxy.runtime.memtrim import trim
from sipgw.proxy.transport import transport_address
from sipgw.rpc.registry import RpcError, rpc

if TYPE_CHECKING:
    from sipgw.proxy.service import ProxyService


TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")


VERSION_HELP = "The version line, as 'sipgw X.Y.Z (python .../linux)'."
UPTIME_HELP = ("now and up_since as local times (as ctime writes them: "
               "'Sun Dec  6 08:52:29 2026') and uptime in seconds, as Kamailio.")


def version_line() -> str:
    return f"sipgw {__version__} (python {platform.python_version()}/{platform.system().lower()})"


def uptime(started_wall: float, seconds: float) -> dict[str, Any]:
    """``core.uptime``'s answer for a start at ``started_wall``, ``seconds`` ago."""
    return {"now": time.ctime(), "up_since": time.ctime(started_wall), "uptime": int(seconds)}


class Admin:
    def __init__(self, service: ProxyService) -> None:
        self.service = service
        self.started = service.reactor.seconds()
        self.started_wall = time.time()

    @rpc("core.version", help=VERSION_HELP)
    def rpc_version(self) -> str:
        return version_line()

    @rpc("core.uptime", help=UPTIME_HELP)
    def rpc_uptime(self) -> dict[str, Any]:
        return uptime(self.started_wall, self.service.reactor.seconds() - self.started)

    @rpc("core.printi", help="The integers given, back (kamcmd's check that the control "
                             "socket answers).")
    def rpc_printi(self, *numbers: int) -> list[int]:
        for n in numbers:
            if isinstance(n, bool) or not isinstance(n, int):
                raise RpcError(f"integers only, not {n!r}")
        return list(numbers)

    @rpc("core.info", help="Version, pid, config file, listeners, the addresses written "
                           "toward the backends, backend and control socket.")
    def rpc_info(self) -> dict[str, Any]:
        svc = self.service
        proxy = svc.proxy
        listeners, toward = [], []
        if proxy is not None:
            listeners = [transport_address(lst.transport, lst.host, lst.port)
                         for lst in proxy.identity.listeners]
            # What a backend over each transport finds in our Via, Record-Route and Path:
            # where it sends answers, in-dialog requests and calls to a browser.
            # Only the transports we listen on: facing() falls back to another listener.
            served = {lst.transport for lst in proxy.identity.listeners}
            toward = [transport_address(t, lst.host, lst.port)
                      for t in ("udp", "tcp", "tls") if t in served
                      for lst in (proxy.identity.facing(t, backend=True),)]
        control = getattr(svc, "control", None)
        return {
            "version": __version__,
            "python": platform.python_version(),
            "pid": os.getpid(),
            "config": svc.loaded.path or "embedded default",
            "listen": listeners,
            "toward_backends": toward,
            "backend": proxy.backends.backend.uri if proxy is not None else None,
            "control": control.path if control is not None and control.port else None,
            "up_since": int(self.started_wall),
        }

    @rpc("core.memory", help="Memory of the process: rss_kb and peak_rss_kb (VmRSS, VmHWM), "
                             "python_blocks, the objects Python's allocator holds after a "
                             "full garbage collection, and gc_full: what the last full "
                             "collection found and how long it took.")
    def rpc_memory(self) -> dict[str, Any]:
        # RSS rarely shrinks (freed memory stays with the allocator); python_blocks does,
        # so it is what shows whether something accumulates (Kamailio's pkg.stats).
        full_collection()  # garbage in reference cycles is not held, just not yet freed
        trim()  # and what is freed goes back to the system, as it would within a minute
        out: dict[str, Any] = {"rss_kb": None, "peak_rss_kb": None,
                               "python_blocks": sys.getallocatedblocks(),
                               "gc_full": dict(last_full)}
        try:
            with open(f"/proc/{os.getpid()}/status") as f:
                for line in f:
                    name, _, value = line.partition(":")
                    if name in ("VmRSS", "VmHWM"):
                        out["rss_kb" if name == "VmRSS" else "peak_rss_kb"] = int(value.split()[0])
        except OSError:
            pass  # no /proc: the RSS fields stay null
        if tracemalloc.is_tracing():
            # Started with PYTHONTRACEMALLOC=N: where the live memory was allocated.
            stats = tracemalloc.take_snapshot().statistics("lineno")[:15]
            out["top_allocations"] = [
                {"where": str(s.traceback[0]), "kb": s.size // 1024, "blocks": s.count}
                for s in stats]
        return out

    @rpc("core.connections", help="Open connections by transport (tcp, tls, ws, wss; both "
                                  "clients' and sipgw's own to backends) and listeners by "
                                  "transport; udp has listeners, never connections.")
    def rpc_connections(self) -> dict[str, Any]:
        svc = self.service
        listeners = dict.fromkeys(TRANSPORTS, 0)
        if svc.proxy is not None:
            for lst in svc.proxy.identity.listeners:
                listeners[lst.transport] = listeners.get(lst.transport, 0) + 1
        connections = dict.fromkeys(TRANSPORTS[1:], 0)
        for flow in svc.flows.by_id.values():
            name = flow.transport_name
            connections[name] = connections.get(name, 0) + 1
        return {"connections": connections, "listeners": listeners,
                "total": sum(connections.values())}

    @rpc("cfg.get", help="The running config (secrets masked); with SECTION or SECTION.KEY "
                         "(or SECTION KEY), just that. Kamailio's 'core debug' is the log "
                         "level now in effect, as a number.")
    def rpc_get(self, section: str | None = None, key: str | None = None) -> Any:
        data = config_to_dict(self.service.loaded.config)
        if section is None:
            return data
        if key is None and "." in section:
            section, key = section.split(".", 1)
        if section == "core" and "core" not in data:
            # Kamailio's cfg group of that name; its debug is what log.level sets.
            data["core"] = {"debug": current_level()}
        if section not in data:
            raise RpcError(f"no config section {section!r}; sections: {', '.join(data)}")
        if key is None:
            return data[section]
        if key not in data[section]:
            raise RpcError(f"no key {section}.{key}; keys: {', '.join(data[section])}")
        return data[section][key]

    @rpc("cfg.reload", help="Read the config file again (as SIGHUP); a bad file is refused "
                            "with its error and the running config kept.")
    def rpc_reload(self) -> dict[str, Any]:
        path = self.service.loaded.path
        if path is None:
            raise RpcError("running on the embedded default config: there is no file to read")
        try:
            load_config(path)
        except ConfigError as e:
            raise RpcError(f"reload refused, running config kept: {e}") from None
        before = self.service.loaded
        self.service.reload()
        if self.service.loaded is before:
            raise RpcError("reload refused, running config kept; the log says why")
        return {"reloaded": path, "not_in_effect": list(self.service.loaded.not_in_effect)}
