"""Debian's nginx in the foreground with the shipped ``etc/nginx/sipgw.conf``, only its
addresses made the test's: each ``listen`` a free port on loopback, and the upstream's one
``server`` line one line per sipgw node given, with the shipped parameters."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sipgw.tools.loopback import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_SITE = ROOT / "etc" / "nginx" / "sipgw.conf"
# The upstream's node as shipped: "server 127.0.0.1:8080 PARAMETERS;".
SHIPPED_NODE = re.compile(r"(?m)^(\s*server\s+)127\.0\.0\.1:8080((?:\s[^;]*)?;.*)$")


class Nginx:
    """nginx with the shipped site in front of ``upstream``: one sipgw's WebSocket port on
    loopback, or a list of nodes' ``host:port``."""

    def __init__(self, workdir: Path, upstream: int | list[str]) -> None:
        self.workdir = workdir
        self.port = free_port("tcp")
        self.nodes = upstream if isinstance(upstream, list) else [f"{LOOPBACK}:{upstream}"]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def upstream_port(self) -> int:
        return int(self.nodes[0].rsplit(":", 1)[1])

    @staticmethod
    def executable() -> str | None:
        return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

    def site(self) -> str:
        """``etc/nginx/sipgw.conf`` as shipped, with only its addresses made ours: each
        server listens on our free port on loopback (IPv6 listens dropped), and the
        upstream has our nodes in place of ``127.0.0.1:8080``."""
        text, found = SHIPPED_NODE.subn(
            lambda m: "\n".join(f"{m.group(1)}{node}{m.group(2)}" for node in self.nodes),
            NGINX_SITE.read_text())
        assert found == 1, f"{NGINX_SITE.name}: no upstream line for 127.0.0.1:8080"
        out = []
        for line in text.splitlines():
            listen = re.match(r"(\s*)listen\s+([^\s;]+)(.*)$", line)
            if listen:
                if not listen.group(2).startswith("["):
                    out.append(f"{listen.group(1)}listen {LOOPBACK}:{self.port}{listen.group(3)}")
                continue
            out.append(line)
        return "\n".join(out) + "\n"

    def start(self) -> Nginx:
        executable = self.executable()
        assert executable, "nginx is not installed (Debian package nginx): run ./scripts/setup"
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "site.conf").write_text(self.site())
        (self.workdir / "nginx.conf").write_text(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n"
            f"pid {self.workdir}/nginx.pid;\nerror_log {self.workdir}/error.log info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  access_log {self.workdir}/access.log;\n"
            f"  client_body_temp_path {self.workdir}/body;\n"
            f"  proxy_temp_path {self.workdir}/proxy;\n"
            f"  fastcgi_temp_path {self.workdir}/fastcgi;\n"
            f"  uwsgi_temp_path {self.workdir}/uwsgi;\n"
            f"  scgi_temp_path {self.workdir}/scgi;\n"
            f"  include {self.workdir}/site.conf;\n"
            "}\n"
        )
        with open(self.workdir / "stderr.log", "wb") as log:
            self._process = subprocess.Popen(
                [executable, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded poll until it accepts connections
            if self._process.poll() is not None:
                raise AssertionError(f"nginx exited {self._process.returncode}:\n{self.describe()}")
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.2).close()
                return self
            except OSError:
                try:
                    self._process.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass
        raise AssertionError(f"nginx not answering on {self.port}:\n{self.describe()}")

    def wait_access_lines(self, pattern: str, count: int, timeout: float = 5.0) -> list[str]:
        """Poll (bounded) nginx's access log until ``count`` lines match ``pattern``."""
        deadline = time.monotonic() + timeout
        log = self.workdir / "access.log"
        while True:
            text = log.read_text() if log.is_file() else ""
            lines = [line for line in text.splitlines() if re.search(pattern, line)]
            if len(lines) >= count or time.monotonic() > deadline:
                assert len(lines) >= count, f"access.log:\n{text}"
                return lines
            assert self._process is not None
            try:
                self._process.wait(0.05)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"nginx exited:\n{self.describe()}")

    def describe(self) -> str:
        parts = []
        for name in ("site.conf", "stderr.log", "error.log"):
            path = self.workdir / name
            if path.is_file():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

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
