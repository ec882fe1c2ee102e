"""Run Debian's Kamailio 5.6 as a real SIP peer on loopback, for tests and benchmarks.

The browser tests run it as the registrar behind sipgw and as a WebSocket SIP server
(``tests/browser/kamailio/``); ``bench/ws.py``, ``register.py`` and ``calls.py`` measure it
beside sipgw as the equivalent gateway (``bench/kamailio/``). A configuration has no listen
lines: the listeners are given on the command line, on free loopback ports.

Kamailio runs in the foreground (``-DD -E``), logging to ``NAME.log`` in its work directory,
with its own pid file, runtime directory and small memory pools. Readiness is a bounded
poll: an OPTIONS over UDP until any reply comes. :meth:`KamailioProcess.stop` ends the whole
process group (the main process and the workers it forked).
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from sipgw.tools.loopback import LOOPBACK, free_port

_names = itertools.count(1)


class KamailioError(Exception):
    """Kamailio could not be started or did not become ready; the message has its log."""


def kamailio_executable() -> str | None:
    """Debian installs ``kamailio`` in ``/usr/sbin``, which a user's PATH may lack."""
    return shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/usr/local/sbin")


class KamailioProcess:
    """One Kamailio on loopback: ``config`` (a file), a UDP port,
    and with ``ws=True`` a TCP port for HTTP and WebSocket (``ws_url``). ``defines`` are
    the config's ``#!define``s given with ``-A``; ``shm_mb``/``pkg_mb`` its memory pools
    (small for tests, large enough for the benchmark's thousands of connections)."""

    def __init__(self, config: str | Path, workdir: Path, *, ws: bool = False,
                 executable: str = "kamailio", defines: dict[str, str] | None = None,
                 shm_mb: int = 32, pkg_mb: int = 4):
        self.config = Path(config)
        if not self.config.is_file():
            raise KamailioError(f"no Kamailio configuration at {self.config}")
        self.name = f"kamailio{next(_names)}-{self.config.stem}"
        self.workdir = workdir / self.name
        self.executable = executable
        self.defines = dict(defines or {})
        self.shm_mb, self.pkg_mb = shm_mb, pkg_mb
        self.udp_port = free_port("udp")
        self.ws_port = free_port("tcp") if ws else None
        self.log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def sip_uri(self) -> str:
        """Where to send SIP over UDP: ``sip:127.0.0.1:PORT``."""
        return f"sip:{LOOPBACK}:{self.udp_port}"

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.udp_port)

    @property
    def ws_url(self) -> str:
        if self.ws_port is None:
            raise KamailioError(f"{self.name} has no WebSocket listener (ws=False)")
        return f"ws://{LOOPBACK}:{self.ws_port}/ws"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        command = [
            self.executable,
            "-f", str(self.config),
            "-DD", "-E",
            "-w", str(self.workdir),
            "-Y", str(self.workdir),
            "-P", str(self.workdir / "kamailio.pid"),
            "-m", str(self.shm_mb), "-M", str(self.pkg_mb),
            "-l", f"udp:{LOOPBACK}:{self.udp_port}",
        ]
        for name, value in self.defines.items():
            command += ["-A", f"{name}={value}"]
        if self.ws_port is not None:
            command += ["-l", f"tcp:{LOOPBACK}:{self.ws_port}"]
        return command

    def start(self) -> KamailioProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # Its own session: stop() signals the group, workers included.
            self._process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, start_new_session=True,
            )
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _failure(self, what: str) -> KamailioError:
        tail = "\n".join(self.log().splitlines()[-40:])
        return KamailioError(f"{self.name}: {what}\n$ {' '.join(self.command())}\n{tail}")

    def wait_ready(self, timeout: float = 10.0) -> KamailioProcess:
        """Send OPTIONS over UDP until any reply comes (each wait bounded by the socket's
        timeout), or fail with the log when the time is up or Kamailio exits."""
        assert self._process is not None, "start() first"
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOOPBACK, 0))
            probe.settimeout(0.2)
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise self._failure(
                        f"exited with {self._process.returncode} before it was ready"
                    )
                probe.sendto(options_request(probe.getsockname(), self.address), self.address)
                try:
                    reply, _ = probe.recvfrom(65535)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                if reply.startswith(b"SIP/2.0 "):
                    return self
        raise self._failure(f"no reply to OPTIONS on {self.sip_uri} within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it if it has not exited within ``timeout``."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            _signal_group(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout)
        # Workers that outlived the main process.
        _signal_group(self._process.pid, signal.SIGKILL)
        return self._process.returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def options_request(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    """An OPTIONS to the server itself (no user part), as the readiness probe."""
    host, port = local
    tag = uuid.uuid4().hex[:8]
    return (
        f"OPTIONS sip:{remote[0]}:{remote[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{host}>;tag={tag}\r\n"
        f"To: <sip:{remote[0]}:{remote[1]}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}@{host}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
