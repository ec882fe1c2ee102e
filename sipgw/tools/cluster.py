"""Several ``sipgw serve`` nodes behind one nginx on loopback: a cluster on one machine, for
the node-failure tests (``tests/helpers/cluster.py``) and ``bench/cluster.py``.

Each :class:`Node` is a whole service (a supervisor and its workers, in a process group of
its own so that :meth:`Node.kill` ends it as a machine's death would) on its own loopback
address (127.0.0.2, 127.0.0.3, ...: all of 127/8 is the loopback interface), with UDP, TCP
and a WebSocket listener, the same subscriber store, secrets and backend as the others.
Its workers' own ports are fixed (``proxy.worker_ports``), so that a node restarted in
place is the same hop in the Record-Route of the dialogs it carried.

:class:`Nginx` is Debian's nginx in the foreground whose upstream lists every node's
WebSocket listener (round robin; or the later ones as ``backup``, so that every browser
starts on the first node). Its config here is the minimum a WebSocket upstream needs.
nginx holds two descriptors per browser (its side and the upstream's): give it ``workers``
when the browsers are more than half the hard limit on open files.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sipgw.tools.loopback import LOOPBACK, free_port
from sipgw.tools.process import SipgwProcess

NGINX_READY_TIMEOUT = 10.0


def free_pair(host: str, count: int) -> int:
    """The first of ``count`` consecutive ports free for UDP and TCP on ``host``."""
    for _ in range(100):
        base = free_port()
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    held.append(sock)
                    sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise OSError(f"no {count} consecutive free ports on {host}")


class Node(SipgwProcess):
    """One node: ``sipgw serve --workers N`` on ``host``, its WebSocket listener at
    ``ws_port``, the cluster's shared settings (``shared_toml``, ``route_secret``) in its
    config."""

    def __init__(self, workdir: Path, *, host: str, backend: str, shared_toml: str,
                 route_secret: str, control_dir: Path, workers: int = 2,
                 log_level: str = "info") -> None:
        self.ws_port = free_pair(host, 1)
        self.control_socket = control_dir / f"{host}.ctl"
        self.state = workdir / "state"
        extra = (f"{shared_toml.strip()}\n\n[proxy]\nworker_ports = {free_pair(host, workers)}\n"
                 f'route_secret = "{route_secret}"\n'
                 f'\n[control]\nsocket = "{self.control_socket}"\n'
                 f'\n[state]\ndirectory = "{self.state}"\n')
        super().__init__(workdir, backend=backend, auth=True, extra_toml=extra,
                         log_level=log_level, port=free_pair(host, 1), workers=workers,
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


class Nginx:
    """nginx on ``127.0.0.1:port`` passing ``/ws`` to the nodes' WebSocket listeners."""

    def __init__(self, workdir: Path, upstreams: list[str], *, backup: bool = False,
                 workers: int = 1) -> None:
        self.workdir = workdir
        self.upstreams = upstreams
        self.backup = backup
        self.workers = workers
        self.port = free_port("tcp")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/ws"

    def config(self) -> str:
        servers = "".join(f"    server {address}{' backup' if self.backup and i else ''};\n"
                          for i, address in enumerate(self.upstreams))
        temp = "".join(f"  {kind}_temp_path {self.workdir}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # Each worker process has the descriptor limit to itself: several carry more
        # browsers than one can where the hard limit is low.
        master = "on" if self.workers > 1 else "off"
        return (
            f"daemon off;\nmaster_process {master};\nworker_processes {self.workers};\n"
            f"pid {self.workdir}/nginx.pid;\nerror_log {self.workdir}/error.log warn;\n"
            f"events {{ worker_connections {_files() // 2}; }}\n"
            f"http {{\n  access_log off;\n{temp}"
            "  map $http_upgrade $upgrade_connection { default upgrade; '' close; }\n"
            f"  upstream sipgw {{\n{servers}  }}\n"
            f"  server {{\n    listen {LOOPBACK}:{self.port};\n"
            "    location /ws {\n"
            "      proxy_pass http://sipgw;\n"
            "      proxy_http_version 1.1;\n"
            "      proxy_set_header Upgrade $http_upgrade;\n"
            "      proxy_set_header Connection $upgrade_connection;\n"
            "      proxy_set_header Host $host;\n"
            "      proxy_set_header X-Real-IP $remote_addr;\n"
            "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "      proxy_read_timeout 3600s;\n"
            "      proxy_send_timeout 3600s;\n"
            "      proxy_buffering off;\n"
            "    }\n  }\n}\n"
        )

    def start(self) -> Nginx:
        executable = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if executable is None:
            raise RuntimeError("nginx is not installed (Debian package nginx)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "nginx.conf").write_text(self.config())
        with open(self.workdir / "stderr.log", "wb") as log:
            self._process = subprocess.Popen(
                [executable, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_more_files)
        deadline = time.monotonic() + NGINX_READY_TIMEOUT
        while True:  # bounded poll until it accepts
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited {self._process.returncode}:\n{self.describe()}")
            with contextlib.suppress(OSError):
                socket.create_connection((LOOPBACK, self.port), timeout=0.2).close()
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx not listening on {self.port}:\n{self.describe()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(0.05)

    def describe(self) -> str:
        return "\n".join(f"--- {name}\n{(self.workdir / name).read_text(errors='replace')[-2000:]}"
                         for name in ("stderr.log", "error.log")
                         if (self.workdir / name).is_file())

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)


def _files() -> int:
    """The descriptors a process may open here: the hard limit."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _more_files() -> None:
    """nginx's descriptors: as many as the hard limit allows."""
    hard = _files()
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
