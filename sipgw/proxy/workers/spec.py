"""What a worker is told when the supervisor starts it: its place, its sockets, its peers.

It travels in the environment (``SIPGW_WORKER``, JSON), and the descriptors it names are
the worker's own numbers: the supervisor maps its sockets onto them when it spawns it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from sipgw.proxy.workers.sockets import Inherited

ENVIRONMENT = "SIPGW_WORKER"
CHANNEL_FD = 3  # the worker's end of its channel to the supervisor
FIRST_SOCKET_FD = 4


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    count: int
    sockets: tuple[Inherited, ...]  # with the worker's descriptor numbers
    peers: tuple[tuple[str, int], ...]  # every worker's backend address, ours included
    control_socket: str  # the worker's own control socket (the supervisor's fans out)
    channel_fd: int = CHANNEL_FD
    route_key: str = ""  # hex: the service's signing key, the same in every worker

    @property
    def backend(self) -> Inherited:
        return next(s for s in self.sockets if s.kind == "backend")

    def public(self, kind: str) -> list[Inherited]:
        return [s for s in self.sockets if s.kind == kind]

    def to_json(self) -> str:
        return json.dumps({
            "index": self.index, "count": self.count, "channel": self.channel_fd,
            "sockets": [[s.kind, s.host, s.port, s.fd] for s in self.sockets],
            "peers": [list(p) for p in self.peers], "control": self.control_socket,
            "route_key": self.route_key,
        })

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        raw = json.loads(text)
        return cls(index=raw["index"], count=raw["count"], channel_fd=raw["channel"],
                   sockets=tuple(Inherited(k, h, p, fd) for k, h, p, fd in raw["sockets"]),
                   peers=tuple((h, p) for h, p in raw["peers"]),
                   control_socket=raw["control"], route_key=raw.get("route_key", ""))


def spec_from_environment(environ=None) -> WorkerSpec | None:
    text = (environ if environ is not None else os.environ).get(ENVIRONMENT)
    return WorkerSpec.from_json(text) if text else None


def worker_control_path(path: str, index: int) -> str:
    """Worker ``index``'s own control socket, beside the service's (``sipgw ctl -w N`` can
    talk to one worker there)."""
    return f"{path}.w{index}"
