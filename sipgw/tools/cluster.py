"""Several ``sipgw serve`` nodes behind one nginx on loopback: a cluster on one machine, for
the node-failure tests (``tests/helpers/cluster.py``) and ``bench/cluster.py``.

Each :class:`Node` is a whole service (a supervisor and its workers, in a process group of
its own so that :meth:`Node.kill` ends it as a machine's death would) on its own loopback
address (127.0.0.2, 127.0.0.3, ...: all of 127/8 is the loopback interface), with UDP, TCP
and a WebSocket listener, the same subscriber store, secrets and backend as the others.
Its workers' own ports are fixed (``proxy.worker_ports``), so that a node restarted in
place is the same hop in the Record-Route of the dialogs it carried.

In front of them, ``sipgw.tools.nginx.Nginx``: the shipped ``etc/nginx/sipgw.conf`` with
every node's WebSocket listener in its upstream.
"""

from __future__ import annotations

from pathlib import Path

from sipgw.tools.loopback import LOOPBACK, free_ports
from sipgw.tools.process import SipgwProcess


class Node(SipgwProcess):
    """One node: ``sipgw serve --workers N`` on ``host``, its WebSocket listener at
    ``ws_port``, the cluster's shared settings (``shared_toml``, ``route_secret``) in its
    config."""

    def __init__(self, workdir: Path, *, host: str, backend: str, shared_toml: str,
                 route_secret: str, control_dir: Path, workers: int = 2,
                 log_level: str = "info") -> None:
        self.ws_port = free_ports(1, host)
        self.control_socket = control_dir / f"{host}.ctl"
        self.state = workdir / "state"
        extra = (f"{shared_toml.strip()}\n\n[proxy]\nroute_secret = \"{route_secret}\"\n"
                 f'\n[control]\nsocket = "{self.control_socket}"\n'
                 f'\n[state]\ndirectory = "{self.state}"\n')
        super().__init__(workdir, backend=backend, auth=True, extra_toml=extra,
                         log_level=log_level, port=free_ports(1, host), workers=workers,
                         host=host, own_group=True)

    @property
    def ws_address(self) -> str:
        return f"{self.host}:{self.ws_port}"

    def config_text(self, **kw) -> str:
        return super().config_text(**kw).replace("ws = []\n", f'ws = ["{self.ws_address}"]\n', 1)

    def restart(self, ready_timeout: float = 30.0) -> Node:
        """SIGTERM, its exit awaited (0), then the same node started again on the same
        addresses and ports."""
        self.stop()
        self._process = None
        self._stopped = False
        self.start(ready_timeout)
        return self

    def kill(self) -> None:
        """``kill -9`` of the whole node: supervisor and workers at once."""
        self.kill_group()


def shared_toml(*, subscribers: str, realm: str, nonce_secret: str) -> str:
    """What every node of a cluster has alike besides the route secret: the store, the
    realm and the nonce secret;
    nginx's address believed for the browser's; neither the per-address connection limit
    nor pike (every test browser comes from 127.0.0.1 through nginx, where real ones come
    from as many addresses)."""
    return (f"[subscribers]\n{subscribers.strip()}\n\n"
            f'[auth]\nrealm = "{realm}"\nnonce_secret = "{nonce_secret}"\n\n'
            f'[websocket]\ntrusted_proxies = ["{LOOPBACK}/32"]\n\n'
            "[limits]\nws_max_connections_per_address = 100000\n\n"
            "[pike]\nenabled = false\n")
