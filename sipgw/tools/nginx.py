"""Debian's nginx in the foreground with the shipped ``etc/nginx/sipgw.conf``, for the tests
and ``bench/cluster.py``: what runs in front of the nodes is the file users deploy.

Only the site's addresses are made ours: each ``listen`` a free port on loopback (IPv6
listens dropped), and the upstream's one ``server 127.0.0.1:8080 ...;`` line one line per
node given, with the shipped parameters (``backup`` added to all but the first when asked,
so that every browser starts on the first node). What a real host sets in its own
``/etc/nginx/nginx.conf`` is the rendering's: as many connections per worker as the
descriptors allow (two per browser: its own and the node's), and the open-files limit
raised to the hard one. The site is read from the source tree (``etc/`` beside
``sipgw/``): these runners serve a checkout, not an installed package.
"""

from __future__ import annotations

import contextlib
import re
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sipgw.tools.loopback import LOOPBACK, free_port

NGINX_SITE = Path(__file__).resolve().parents[2] / "etc" / "nginx" / "sipgw.conf"
# The upstream's node as shipped: "server 127.0.0.1:8080 PARAMETERS; COMMENT".
SHIPPED_NODE = re.compile(r"(?m)^(\s*server\s+)127\.0\.0\.1:8080([^;\n]*);(.*)$")
SHIPPED_PORT = "80"  # the plain listener, ours as ``Nginx.port``
READY_TIMEOUT = 10.0
# worker_connections above the descriptors is pointless; past this, nginx's preallocated
# connection array costs memory (some 0.4 kB each) that no test or bench uses.
MAX_CONNECTIONS = 65536
RESERVED_FILES = 64  # logs, listeners, the upstream zone: descriptors that are not connections


class Nginx:
    """nginx with the shipped site in front of ``upstream``: one sipgw's WebSocket port on
    loopback, or a list of nodes' ``host:port``. ``backup``: the nodes after the first are
    the upstream's ``backup`` servers. ``workers``: nginx's worker processes, each with the
    open-files limit to itself (where the hard limit is low, several carry more browsers)."""

    def __init__(self, workdir: Path, upstream: int | list[str], *, backup: bool = False,
                 workers: int = 1) -> None:
        self.workdir = workdir
        self.port = free_port("tcp")
        self.nodes = upstream if isinstance(upstream, list) else [f"{LOOPBACK}:{upstream}"]
        self.backup = backup
        self.workers = workers
        # The shipped listen port → ours on loopback (a subclass adds 443 for TLS).
        self.listens: dict[str, int] = {SHIPPED_PORT: self.port}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def upstream_port(self) -> int:
        return int(self.nodes[0].rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/ws"

    @staticmethod
    def executable() -> str | None:
        return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

    def shipped(self) -> str:
        """The site as the operator installs it (a subclass may uncomment what the README
        tells the operator to)."""
        return NGINX_SITE.read_text()

    def site(self) -> str:
        """:meth:`shipped` with only its addresses made ours."""
        def nodes(match: re.Match[str]) -> str:
            return "\n".join(
                f"{match.group(1)}{node}{match.group(2)}{' backup' if self.backup and i else ''};"
                f"{match.group(3)}" for i, node in enumerate(self.nodes))

        text, found = SHIPPED_NODE.subn(nodes, self.shipped())
        if found != 1:
            raise RuntimeError(f"{NGINX_SITE}: no upstream line for 127.0.0.1:8080")
        out = []
        for line in text.splitlines():
            listen = re.match(r"(\s*)listen\s+([^\s;]+)(.*)$", line)
            if listen:
                if listen.group(2).startswith("["):
                    continue  # IPv6: loopback's ::1 may be missing where the tests run
                port = self.listens.get(listen.group(2))
                if port is None:
                    raise RuntimeError(f"{NGINX_SITE}: no port of ours for {line.strip()!r}")
                line = f"{listen.group(1)}listen {LOOPBACK}:{port}{listen.group(3)}"
            out.append(line)
        return "\n".join(out) + "\n"

    def config(self) -> str:
        """The main ``nginx.conf``: the site included in it, everything in ``workdir``."""
        temp = "".join(f"  {kind}_temp_path {self.workdir}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        connections = min(_files() - RESERVED_FILES, MAX_CONNECTIONS)
        # One process is simplest to stop; several need their master.
        master = "on" if self.workers > 1 else "off"
        return (
            f"daemon off;\nmaster_process {master};\nworker_processes {self.workers};\n"
            f"pid {self.workdir}/nginx.pid;\nerror_log {self.workdir}/error.log info;\n"
            f"events {{ worker_connections {connections}; }}\n"
            "http {\n"
            f"  access_log {self.workdir}/access.log;\n{temp}"
            f"  include {self.workdir}/site.conf;\n"
            "}\n"
        )

    def start(self) -> Nginx:
        executable = self.executable()
        if executable is None:
            raise RuntimeError("nginx is not installed (Debian package nginx): ./scripts/setup")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "site.conf").write_text(self.site())
        (self.workdir / "nginx.conf").write_text(self.config())
        with open(self.workdir / "stderr.log", "wb") as log:
            self._process = subprocess.Popen(
                [executable, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_more_files)
        deadline = time.monotonic() + READY_TIMEOUT
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

    def wait_access_lines(self, pattern: str, count: int, timeout: float = 5.0) -> list[str]:
        """Poll (bounded) nginx's access log until ``count`` lines match ``pattern``."""
        deadline = time.monotonic() + timeout
        log = self.workdir / "access.log"
        while True:
            text = log.read_text() if log.is_file() else ""
            lines = [line for line in text.splitlines() if re.search(pattern, line)]
            if len(lines) >= count or time.monotonic() > deadline:
                if len(lines) < count:
                    raise AssertionError(f"{len(lines)} of {count} lines matching {pattern!r} "
                                         f"in access.log:\n{text}")
                return lines
            assert self._process is not None
            try:
                self._process.wait(0.05)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"nginx exited:\n{self.describe()}")

    def describe(self) -> str:
        return "\n".join(f"--- {name}\n{(self.workdir / name).read_text(errors='replace')[-3000:]}"
                         for name in ("site.conf", "stderr.log", "error.log")
                         if (self.workdir / name).is_file())

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _files() -> int:
    """The descriptors a process may open here: the hard limit."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _more_files() -> None:
    """nginx's descriptors: as many as the hard limit allows."""
    hard = _files()
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
