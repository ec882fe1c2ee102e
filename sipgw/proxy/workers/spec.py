"""What a worker is told when the supervisor starts it: its place, its sockets, its peers.

It travels in the environment (``SIPGW_WORKER``, JSON), and the descriptors it names are
the worker's own numbers: the supervisor maps its sockets onto them when it spawns it.
It carries the route signing key the supervisor settled once (``route_key``), so that every
worker, restarted or not, accepts what the others signed; a process's environment is
readable by its own user only, as ``route.key`` is. And it carries the text of the config
file the supervisor checked and runs (``config_text``): a worker started again after the
file was edited but not reloaded runs what the others run, not the file as it is now.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from sipgw.proxy.workers.sockets import BACKEND_TCP, BACKEND_TLS, Inherited, OwnSockets

ENVIRONMENT = "SIPGW_WORKER"
CHANNEL_FD = 3  # the worker's end of its channel to the supervisor
FIRST_SOCKET_FD = 4


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    count: int
    sockets: tuple[Inherited, ...]  # with the worker's descriptor numbers
    peers: tuple[tuple[str, int], ...]  # every worker's backend addresses, ours included
    control_socket: str  # the worker's own control socket (the supervisor's fans out)
    channel_fd: int = CHANNEL_FD
    route_key: str = ""  # hex: the service's signing key, the same in every worker
    config_text: str = ""  # "" (the embedded default config): nothing to read

    @property
    def backend(self) -> Inherited:
        return next(s for s in self.sockets if s.kind == "backend")

    @property
    def backend_stream(self) -> Inherited | None:
        """The worker's own TCP listener (on the port of its own UDP socket)."""
        return next((s for s in self.sockets if s.kind == BACKEND_TCP), None)

    @property
    def backend_tls(self) -> Inherited | None:
        """The worker's own TLS listener (with listen.tls only)."""
        return next((s for s in self.sockets if s.kind == BACKEND_TLS), None)

    @property
    def own(self) -> OwnSockets:
        return OwnSockets(self.backend, self.backend_stream, self.backend_tls, self.peers)

    def public(self, kind: str) -> list[Inherited]:
        return [s for s in self.sockets if s.kind == kind]

    def to_json(self) -> str:
        return json.dumps({
            "index": self.index, "count": self.count, "channel": self.channel_fd,
            "sockets": [[s.kind, s.host, s.port, s.fd] for s in self.sockets],
            "peers": [list(p) for p in self.peers], "control": self.control_socket,
            "route_key": self.route_key, "config": self.config_text,
        })

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        raw = json.loads(text)
        return cls(index=raw["index"], count=raw["count"], channel_fd=raw["channel"],
                   sockets=tuple(Inherited(k, h, p, fd) for k, h, p, fd in raw["sockets"]),
                   peers=tuple((h, p) for h, p in raw["peers"]),
                   control_socket=raw["control"], route_key=raw.get("route_key", ""),
                   config_text=raw.get("config", ""))


def spec_from_environment(environ=None) -> WorkerSpec | None:
    text = (environ if environ is not None else os.environ).get(ENVIRONMENT)
    return WorkerSpec.from_json(text) if text else None


def worker_control_path(path: str, index: int) -> str:
    """Worker ``index``'s own control socket, beside the service's (``sipgw ctl -w N`` can
    talk to one worker there)."""
    return f"{path}.w{index}"
