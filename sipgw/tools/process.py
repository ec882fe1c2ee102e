"""Run ``sipgw serve`` as a child process on loopback, for tests and benchmarks.

A :class:`SipgwProcess` is one ``python -m sipgw serve -c FILE`` in a work directory:

- ``sipgw.toml``: the configuration it was started with (UDP and TCP on one free loopback
  port, WebSocket off, one backend), which a test may rewrite before a SIGHUP;
- ``sipgw.log``: everything the process wrote (stdout and stderr), read by
  :meth:`SipgwProcess.log_text`; each start appends, after a line of its own (``--- start
  N at TIME ---``), so that a node restarted in place keeps what its earlier runs said.

Nothing here sleeps to wait. Readiness is what sipgw tells systemd: ``READY=1`` on a
``NOTIFY_SOCKET`` of our own (with workers the supervisor says it once every worker
listens), then an ``OPTIONS`` to sipgw itself (``sipgw.tools.options``) answered 200; both
bounded polls. Ends are ``Popen.wait`` with a timeout. :func:`run_cli` runs one
``python -m sipgw`` command to its end.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sipgw.tools.loopback import LOOPBACK, free_port, free_ports
from sipgw.tools.options import NoAnswer, ping

READY_TIMEOUT = 10.0
READY_POLL = 0.05
STOP_TIMEOUT = 15.0  # above proxy.drain_timeout (10 s): SIGTERM may wait for answers



class SipgwError(Exception):
    """sipgw could not be started, did not become ready, or did not stop cleanly."""


def backend_uri(backend: str, transport: str = "udp") -> str:
    """``"127.0.0.1:5080"`` → ``"sip:127.0.0.1:5080"`` (``;transport=tcp`` for TCP).

    A value that is already a URI (``"sip:..."``) is taken as it is.
    """
    if backend.startswith(("sip:", "sips:")):
        return backend
    if transport not in ("udp", "tcp"):
        raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}")
    return f"sip:{backend}" + ("" if transport == "udp" else f";transport={transport}")


def config_toml(
    *, port: int, backend: str, extra_toml: str = "", log_level: str = "debug",
    auth: bool = False, dispatcher: str | None = None, host: str = LOOPBACK,
    worker_ports: int = 0,
) -> str:
    """The configuration of one test sipgw: UDP and TCP on ``host:port``, ws off, one
    backend.

    ``extra_toml`` is appended as it is: it may add sections (``[timers]``, ``[proxy]``)
    but not repeat ``[listen]``, ``[dispatcher]`` or ``[log]``. Without ``auth``, loopback
    is trusted (``[auth] trusted``: tests of relaying are not about passwords); with it,
    ``extra_toml`` brings ``[auth]`` and ``[subscribers]``.

    ``worker_ports``: ``proxy.worker_ports`` (in ``extra_toml``'s ``[proxy]`` if it has one,
    unless it sets them itself), so that a test knows the address sipgw writes toward its
    backends (:attr:`SipgwProcess.backend_address`).

    ``dispatcher`` replaces the body of ``[dispatcher]``. By default it is the one backend
    with probes off: SIPp scenarios do not answer OPTIONS, and a backend that never
    answers its probes is rightly taken out of service after ``ping_timeout``.
    """
    if dispatcher is None:
        dispatcher = f'destinations = ["{backend}"]\nping_interval = 0\n'

    text = (
        "# Written by sipgw.tools.process\n"
        "[listen]\n"
        f'udp = ["{host}:{port}"]\n'
        f'tcp = ["{host}:{port}"]\n'
        "ws = []\n"
        "\n"
        "[dispatcher]\n"
        f"{dispatcher.strip()}\n"
        "\n"
        "[log]\n"
        f'level = "{log_level}"\n'
    )
    if not auth:
        text += '\n[auth]\ntrusted = ["127.0.0.0/8"]\n'
    if worker_ports and "worker_ports" not in extra_toml:
        line = f"worker_ports = {worker_ports}\n"
        extra_toml, found = re.subn(r"(?m)^\[proxy\][ \t]*\n", lambda m: m[0] + line,
                                    extra_toml, count=1)
        if not found:
            extra_toml += f"\n[proxy]\n{line}"
    if extra_toml:
        text += "\n" + extra_toml.strip("\n") + "\n"
    return text


class SipgwProcess:
    """One sipgw on 127.0.0.1, UDP and TCP on the same free port, relaying to ``backend``.

    ``backend`` is a "host:port" (made a URI with ``transport``) or a full SIP URI.
    ``output`` is where its stdout and stderr go instead of ``sipgw.log`` (``/dev/full``).
    ``workers``: ``sipgw serve --workers`` (1, a single process, unless a test is about
    several). ``host``: another loopback address (a second node of a cluster on one
    machine). ``own_group``: the service in a process group of its own (supervisor and
    workers), which :meth:`kill_group` ends at once, as a machine that dies would.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        backend: str,
        transport: str = "udp",
        extra_toml: str = "",
        log_level: str = "debug",
        port: int | None = None,
        python: str = sys.executable,
        auth: bool = False,
        dispatcher: str | None = None,
        output: str | os.PathLike[str] | None = None,
        workers: int = 1,
        host: str = LOOPBACK,
        own_group: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.own_group = own_group
        self.workers = workers
        self.port = port if port is not None else free_port()
        # Each worker's own ports toward the backends: UDP and TCP, then TLS.
        self.worker_ports = free_ports(2 * workers, host)
        self.backend = backend_uri(backend, transport)
        self.extra_toml = extra_toml
        self.log_level = log_level
        self.auth = auth
        self.dispatcher = dispatcher
        self.python = python
        self.config_path = self.workdir / "sipgw.toml"
        self.log_path = Path(output) if output is not None else self.workdir / "sipgw.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._notify: socket.socket | None = None  # where READY=1 comes, until it came
        self._starts = 0  # of this object: a restart in place (Node.restart) is the second

    # -- addresses ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """Where callers send: ``HOST:PORT`` (UDP and TCP)."""
        return f"{self.host}:{self.port}"

    @property
    def backend_address(self) -> str:
        """What sipgw (its first worker) writes in Via, Record-Route and Path toward its
        backends: ``HOST:PORT`` of its own socket, not the listener's."""
        return f"{self.host}:{self.worker_ports}"

    @property
    def hostport(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def cpu_seconds(self) -> float:
        """CPU time the service has used so far, user and system: the process and, with
        workers, the workers it runs now (Linux /proc)."""
        pid = self._require_started().pid
        try:
            children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text()
                        .split()]
        except OSError:
            children = []
        return sum((_cpu_seconds(p) for p in [pid, *children]), 0.0)

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- configuration ------------------------------------------------------------------

    def config_text(self, *, backend: str | None = None, extra_toml: str | None = None) -> str:
        return config_toml(
            port=self.port,
            backend=self.backend if backend is None else backend,
            extra_toml=self.extra_toml if extra_toml is None else extra_toml,
            log_level=self.log_level,
            auth=self.auth,
            dispatcher=self.dispatcher,
            host=self.host,
            worker_ports=self.worker_ports,
        )

    def write_config(self, text: str) -> Path:
        """Replace the file sipgw reads on SIGHUP (written whole, then renamed in place)."""
        partial = self.config_path.with_suffix(".toml.new")
        partial.write_text(text)
        partial.replace(self.config_path)
        return self.config_path

    # -- life cycle ---------------------------------------------------------------------

    def command(self) -> list[str]:
        return [self.python, "-m", "sipgw", "serve", "-c", str(self.config_path),
                "--workers", str(self.workers)]

    def start(self, ready_timeout: float = READY_TIMEOUT) -> SipgwProcess:
        """Write the config, start the process, and return once it answers OPTIONS."""
        if self._process is not None:
            raise SipgwError("this sipgw was already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config(self.config_text())
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)  # plain timestamped lines, not journald's
        env.pop("SIPGW_CONFIG", None)
        env["PYTHONUNBUFFERED"] = "1"
        if "NOTIFY_SOCKET" not in env:  # else a test is systemd, and reads them itself
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            name = f"sipgw-ready-{uuid.uuid4().hex}"
            self._notify.bind("\0" + name)  # the abstract namespace: no file to remove
            env["NOTIFY_SOCKET"] = "@" + name
        self._starts += 1
        with open(self.log_path, "ab") as log:
            if self.log_path.is_file():  # not an output such as /dev/full
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                log.write(f"--- start {self._starts} at {stamp} ---\n".encode())
                log.flush()  # before the child's lines, which share the file
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=self.own_group,
            )
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> SipgwProcess:
        """Bounded polls: READY=1 from the service, the first time (with workers: all of
        them listen); then an OPTIONS to sipgw itself every 50 ms until its 200 arrives."""
        process = self._require_started()
        deadline = time.monotonic() + timeout
        if self._notify is not None:
            self._wait_notified_ready(process, deadline, timeout)
        while True:
            if process.poll() is not None:
                raise SipgwError(f"sipgw exited before it was ready\n{self.describe()}")
            asked = time.monotonic()
            try:
                if ping(f"sip:{self.address}", timeout=READY_POLL).status == 200:
                    return self
            except (NoAnswer, OSError):
                pass  # not listening yet: refused, or no answer in time
            if time.monotonic() > deadline:
                raise SipgwError(f"sipgw not ready after {timeout:g}s\n{self.describe()}")
            try:  # the rest of the 50 ms (a refusal comes at once); returns early if it exits
                process.wait(max(0.0, READY_POLL - (time.monotonic() - asked)))
            except subprocess.TimeoutExpired:
                pass

    def _wait_notified_ready(self, process: subprocess.Popen[bytes], deadline: float,
                             timeout: float) -> None:
        assert self._notify is not None
        notify = self._notify
        try:
            while True:
                if process.poll() is not None:
                    raise SipgwError(f"sipgw exited before it was ready\n{self.describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SipgwError(f"sipgw did not say READY=1 within {timeout:g}s\n"
                                     f"{self.describe()}")
                notify.settimeout(min(left, READY_POLL))
                try:
                    fields = notify.recv(4096).decode(errors="replace").splitlines()
                except TimeoutError:
                    continue
                if "READY=1" in fields:
                    return
        finally:
            # What sipgw says from now on is refused at once: nothing fills a queue here.
            notify.close()
            self._notify = None

    def reload(self) -> None:
        """SIGHUP: sipgw reads its config file again."""
        self._require_started().send_signal(signal.SIGHUP)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; asserts the process had run until now
        and exited 0 on the SIGTERM."""
        process = self._require_started()
        if self._stopped:
            return process.returncode if process.returncode is not None else process.wait()
        self._stopped = True
        code = process.poll()
        if code is not None:
            raise AssertionError(f"sipgw had already exited ({code})\n{self.describe()}")
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
            raise AssertionError(
                f"sipgw still running {timeout:g}s after SIGTERM; killed\n{self.describe()}"
            ) from None
        assert code == 0, f"sipgw exited {code} on SIGTERM\n{self.describe()}"
        return code

    def kill(self) -> None:
        """End the process at once, without judging how (a start that went wrong)."""
        process = self._process
        self._stopped = True
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def kill_group(self) -> None:
        """SIGKILL to the whole service at once (``own_group``): the supervisor and every
        worker, none of them able to say goodbye; reaped before this returns."""
        process = self._require_started()
        assert self.own_group, "kill_group needs SipgwProcess(own_group=True)"
        self._stopped = True
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(STOP_TIMEOUT)

    def rpc(self, method: str, *params: object) -> Any:
        """One control call (``sipgw ctl METHOD PARAMS``) on the socket its config names."""
        from sipgw.config import load_config
        from sipgw.rpc.client import Client, server_socket_path

        config = load_config(self.config_path).config
        client = Client(server_socket_path(config.control.socket, config.state.directory))
        try:
            return client.call(method, list(params))
        finally:
            client.close()

    # -- what it said -------------------------------------------------------------------

    def log_text(self) -> str:
        if not self.log_path.is_file():
            return ""  # an output such as /dev/full: reading it never ends
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str, *, after: int = 0, timeout: float = 5.0) -> str:
        """The first log line matching regex ``pattern`` at or after character ``after``;
        a bounded poll of the log file every 50 ms."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()[after:]
            for line in text.splitlines():
                if regex.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no log line matching {pattern!r} within {timeout:g}s\n{self.describe()}"
                )
            try:
                self._require_started().wait(READY_POLL)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"sipgw exited while waiting for {pattern!r}\n{self.describe()}")

    def describe(self) -> str:
        code = self.returncode
        state = "not started" if self._process is None else (
            "running" if code is None else f"exit {code}"
        )
        tail = self.log_text()[-4000:]
        return f"sipgw: {' '.join(self.command())} ({state})\n--- sipgw.log (end) ---\n{tail}"

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise SipgwError("sipgw was not started")
        return self._process

    def __enter__(self) -> SipgwProcess:
        return self.start() if self._process is None else self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self.stop()

    def __repr__(self) -> str:
        return f"<SipgwProcess {self.address} -> {self.backend} pid={self.pid}>"


def _cpu_seconds(pid: int) -> float:
    """One process's CPU time, user and system; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    user, system = fields.rsplit(")", 1)[1].split()[11:13]
    return (int(user) + int(system)) / os.sysconf("SC_CLK_TCK")


def run_cli(*args: str, timeout: float = 20.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m sipgw ARGS``: its exit code, stdout and stderr; ``input`` is its stdin
    (else none, so that a command waiting for a password fails instead of hanging)."""
    return subprocess.run(
        [sys.executable, "-m", "sipgw", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        env={k: v for k, v in os.environ.items() if k not in ("SIPGW_CONFIG", "JOURNAL_STREAM")},
    )
