"""The browser tests' Kamailio processes (``sipgw.tools.kamailio``), with the configurations
in ``kamailio/``:

- ``registrar.cfg``: the Asterisk stand-in behind sipgw. A plain registrar on UDP that keeps
  registrations with their Path (RFC 3327) and routes requests for registered users by it,
  the way Asterisk does with ``support_path=yes``.
- ``ws-proxy.cfg``: a WebSocket SIP proxy and registrar in one, for browsers that register
  over WS straight to it. It proves the rig against a WebSocket SIP server that exists today.
"""

from __future__ import annotations

import re
from pathlib import Path

from sipgw.tools.kamailio import KamailioProcess

CONFIGS = Path(__file__).with_name("kamailio")

# registrar.cfg's log line for a call it sends to a registered user by its Path: the
# Path's host and port are where the INVITE went, i.e. which sipgw (node, worker) holds
# the callee's WebSocket.
_ROUTED_BY_PATH = re.compile(r"INVITE \S+\} <script>: to \S+ at <[^>]*> "
                             r"via <sip:[0-9a-z]+-\d+@([\d.]+):(\d+);lr;ob>")


def invite_path(log: str) -> tuple[str, int]:
    """The Path ``(host, port)`` by which the registrar sent the first INVITE in ``log``."""
    routed = _ROUTED_BY_PATH.search(log)
    assert routed, f"the registrar sent no INVITE by a Path:\n{log}"
    return routed[1], int(routed[2])


class KamailioRunner:
    """Starts Kamailio processes for one test and stops every one of them at the end."""

    def __init__(self, workdir: Path, executable: str = "kamailio"):
        self.workdir = workdir
        self.executable = executable
        self.processes: list[KamailioProcess] = []

    def __call__(self, config: str, *, ws: bool = False, timeout: float = 10.0) -> KamailioProcess:
        """Start ``config`` (a name in ``kamailio/``) and wait until it answers."""
        process = KamailioProcess(CONFIGS / config, self.workdir, ws=ws,
                                  executable=self.executable)
        self.processes.append(process)
        return process.start().wait_ready(timeout)

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()
