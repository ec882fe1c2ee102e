"""Run sipgw itself as a process on loopback, and talk to it over raw sockets.

A :class:`SipgwProcess` is one ``python -m sipgw serve -c FILE`` in a work directory:

- ``sipgw.toml``: the configuration it was started with (UDP and TCP on one free loopback
  port, WebSocket off, one backend), which a test may rewrite before a SIGHUP;
- ``sipgw.log``: everything the process wrote (stdout and stderr), read by
  :meth:`SipgwProcess.log_text`.

Nothing here sleeps to wait. Readiness is a bounded poll: an ``OPTIONS`` to sipgw itself
every 50 ms until its 200 comes back. Ends are ``Popen.wait`` with a timeout, and sockets
read with a deadline.

:class:`UdpPeer` and :class:`TcpPeer` are hand-driven SIP peers (a caller, a silent
backend, a fuzzer): they send bytes and collect what comes back, each read bounded by a
deadline. :func:`exchange` is the one-shot form.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.integration.sipp import LOOPBACK, SippMessage, free_port

READY_TIMEOUT = 10.0
READY_POLL = 0.05
STOP_TIMEOUT = 15.0  # above proxy.drain_timeout (10 s): SIGTERM may wait for answers

_ids = itertools.count(1)


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
    auth: bool = False, dispatcher: str | None = None,
) -> str:
    """The configuration of one test sipgw: UDP and TCP on ``port``, ws off, one backend.

    ``extra_toml`` is appended as it is: it may add sections (``[timers]``, ``[proxy]``)
    but not repeat ``[listen]``, ``[dispatcher]`` or ``[log]``. Without ``auth``, loopback
    is trusted (``[auth] trusted``: tests of relaying are not about passwords); with it,
    ``extra_toml`` brings ``[auth]`` and ``[subscribers]``.

    ``dispatcher`` replaces the body of ``[dispatcher]``. By default it is the one backend
    with probes off: SIPp scenarios do not answer OPTIONS, and a backend that never
    answers its probes is rightly taken out of service after ``ping_timeout``.
    """
    if dispatcher is None:
        dispatcher = f'destinations = ["{backend}"]\nping_interval = 0\n'

    text = (
        "# Written by tests/integration/sipgw_process.py\n"
        "[listen]\n"
        f'udp = ["{LOOPBACK}:{port}"]\n'
        f'tcp = ["{LOOPBACK}:{port}"]\n'
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
    if extra_toml:
        text += "\n" + extra_toml.strip("\n") + "\n"
    return text


class SipgwProcess:
    """One sipgw on 127.0.0.1, UDP and TCP on the same free port, relaying to ``backend``.

    ``backend`` is a "host:port" (made a URI with ``transport``) or a full SIP URI.
    ``output`` is where its stdout and stderr go instead of ``sipgw.log`` (``/dev/full``).
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
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
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

    # -- addresses ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """Where callers send: ``127.0.0.1:PORT`` (UDP and TCP)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def hostport(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

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
        )

    def write_config(self, text: str) -> Path:
        """Replace the file sipgw reads on SIGHUP (written whole, then renamed in place)."""
        partial = self.config_path.with_suffix(".toml.new")
        partial.write_text(text)
        partial.replace(self.config_path)
        return self.config_path

    # -- life cycle ---------------------------------------------------------------------

    def command(self) -> list[str]:
        return [self.python, "-m", "sipgw", "serve", "-c", str(self.config_path)]

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
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
            )
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> SipgwProcess:
        """Bounded poll: an OPTIONS to sipgw itself every 50 ms until its 200 arrives."""
        process = self._require_started()
        deadline = time.monotonic() + timeout
        call_id = f"ready-{os.getpid()}-{next(_ids)}@{LOOPBACK}"
        with UdpPeer(self.address) as peer:
            attempt = 0
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise SipgwError(f"sipgw exited before it was ready\n{self.describe()}")
                attempt += 1
                peer.send(
                    build_request(
                        "OPTIONS", f"sip:{self.address}", peer=peer, call_id=call_id,
                        cseq=attempt, branch=f"z9hG4bK-ready-{attempt}",
                    )
                )  # fmt: skip
                reply = peer.receive(READY_POLL)
                while reply is not None:
                    if reply.status == 200 and reply.header("Call-ID") == call_id:
                        return self
                    reply = peer.receive(0)
        raise SipgwError(f"sipgw not ready after {timeout:g}s\n{self.describe()}")

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
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)

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


class SipgwRunner:
    """Starts the sipgw processes of one test; stops every one of them at the end."""

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = Path(workdir)
        self.processes: list[SipgwProcess] = []

    def __call__(
        self, *, backend: str, transport: str = "udp", extra_toml: str = "", **options: object
    ) -> SipgwProcess:
        process = SipgwProcess(
            self.workdir / f"sipgw-{len(self.processes) + 1}",
            backend=backend,
            transport=transport,
            extra_toml=extra_toml,
            **options,  # type: ignore[arg-type]
        )
        self.processes.append(process)
        return process.start()

    def stop_all(self) -> None:
        """Stop each process (SIGTERM, asserted exit 0); the first failure is raised after
        every process was stopped."""
        errors: list[BaseException] = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as exc:  # noqa: BLE001 - the others must still be stopped
                errors.append(exc)
        if errors:
            raise errors[0]


# --- raw SIP peers ----------------------------------------------------------------------


def _split_hostport(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def _decode(data: bytes) -> SippMessage:
    return SippMessage("received", data.decode("utf-8", errors="replace"))


class _Peer:
    """What UDP and TCP peers share: an inbox, bounded receives, matching replies."""

    transport = "udp"
    socket: socket.socket
    port: int

    def __init__(self) -> None:
        self.inbox: list[SippMessage] = []  # received, not yet taken by expect/receive
        self.raw: list[bytes] = []  # everything ever received, in order

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _read(self, timeout: float) -> list[bytes]:
        raise NotImplementedError

    def _fill(self, timeout: float) -> bool:
        """Wait at most ``timeout`` for more messages; whether any came."""
        chunks = self._read(timeout)
        self.raw += chunks
        self.inbox += [_decode(chunk) for chunk in chunks]
        return bool(chunks)

    def receive(self, timeout: float) -> SippMessage | None:
        """The next message, or None when nothing comes within ``timeout`` seconds."""
        if not self.inbox:
            self._fill(timeout)
        return self.inbox.pop(0) if self.inbox else None

    def collect(self, duration: float) -> list[SippMessage]:
        """Every message that is waiting or arrives within ``duration`` seconds."""
        deadline = time.monotonic() + duration
        while True:
            left = deadline - time.monotonic()
            self._fill(max(left, 0.0))  # at 0: what is already queued, without waiting
            if left <= 0:
                break
        taken, self.inbox = self.inbox, []
        return taken

    def expect(
        self, kind: str, *, method: str | None = None, timeout: float = 3.0
    ) -> SippMessage:
        """The first message that is ``kind`` (a method, or a status code as a string,
        for ``method`` if given); others stay in the inbox."""

        def wanted(message: SippMessage) -> bool:
            return message.kind == kind and (method is None or message.method == method)

        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.inbox):
                if wanted(message):
                    return self.inbox.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [m.start_line for m in self.inbox]
                raise AssertionError(
                    f"{self.address}: no {kind} {method or ''} within {timeout:g}s; "
                    f"waiting: {seen}"
                )
            self._fill(left)

    def close(self) -> None:
        self.socket.close()

    def __enter__(self):  # noqa: ANN204 - the subclass
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class UdpPeer(_Peer):
    """A UDP socket on 127.0.0.1 (``port``, or any free one) sending to ``remote``."""

    transport = "udp"

    def __init__(self, remote: str | None = None, *, port: int = 0) -> None:
        super().__init__()
        self.remote = _split_hostport(remote) if remote else None
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((LOOPBACK, port))
        self.port = self.socket.getsockname()[1]

    def send(self, data: bytes | str, to: str | None = None) -> None:
        target = _split_hostport(to) if to else self.remote
        if target is None:
            raise ValueError("no remote address to send to")
        self.socket.sendto(data.encode() if isinstance(data, str) else data, target)

    def _read(self, timeout: float) -> list[bytes]:
        chunks = []
        self.socket.settimeout(timeout if timeout > 0 else 0.0)
        try:
            chunks.append(self.socket.recv(65535))
            # Whatever else is already queued, without waiting.
            self.socket.settimeout(0.0)
            while True:
                chunks.append(self.socket.recv(65535))
        except (BlockingIOError, TimeoutError, ConnectionRefusedError):
            pass
        return chunks


def split_stream(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Whole SIP messages at the front of a TCP byte stream, and the rest.

    RFC 3261 §18.3: Content-Length (or ``l``) frames the body; a missing one means no body.
    Leading CRLFs (keepalive pongs) are skipped.
    """
    messages = []
    while True:
        buffer = buffer.lstrip(b"\r\n")
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return messages, buffer
        length = 0
        for line in buffer[:end].split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() in (b"content-length", b"l"):
                length = int(value.strip() or b"0")
        total = end + 4 + length
        if len(buffer) < total:
            return messages, buffer
        messages.append(buffer[:total])
        buffer = buffer[total:]


class TcpPeer(_Peer):
    """One TCP connection from 127.0.0.1 to ``remote``."""

    transport = "tcp"

    def __init__(self, remote: str, *, connect_timeout: float = 3.0) -> None:
        super().__init__()
        self.remote = _split_hostport(remote)
        self.socket = socket.create_connection(self.remote, timeout=connect_timeout)
        self.port = self.socket.getsockname()[1]
        self._buffer = b""
        self.closed_by_peer = False

    def send(self, data: bytes | str) -> None:
        self.socket.sendall(data.encode() if isinstance(data, str) else data)

    def _read(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            messages, self._buffer = split_stream(self._buffer)
            if messages or self.closed_by_peer:
                return messages
            left = deadline - time.monotonic()
            self.socket.settimeout(left if left > 0 else 0.0)
            try:
                data = self.socket.recv(65535)
            except (TimeoutError, BlockingIOError):
                return []
            if not data:
                self.closed_by_peer = True
            self._buffer += data


def exchange(
    address: str, data: bytes | str, *, transport: str = "udp", wait: float = 0.5
) -> list[SippMessage]:
    """Send one message from a fresh socket and collect the replies for ``wait`` seconds."""
    peer: _Peer = UdpPeer(address) if transport == "udp" else TcpPeer(address)
    with peer:
        peer.send(data)  # type: ignore[attr-defined]
        return peer.collect(wait)


def collect_from_many(peers: Sequence[UdpPeer], *, quiet: float, limit: float) -> None:
    """Read into the inboxes of many UDP peers at once, until nothing has come for
    ``quiet`` seconds, or ``limit`` seconds have passed."""
    with selectors.DefaultSelector() as selector:
        for peer in peers:
            selector.register(peer.socket, selectors.EVENT_READ, peer)
        end = time.monotonic() + limit
        while (now := time.monotonic()) < end:
            ready = selector.select(min(quiet, end - now))
            if not ready:
                return
            for key, _ in ready:
                key.data._fill(0)


# --- building requests by hand ----------------------------------------------------------


def build_request(
    method: str,
    uri: str,
    *,
    peer: _Peer,
    call_id: str,
    branch: str,
    cseq: int = 1,
    cseq_method: str | None = None,
    from_tag: str = "raw-from",
    to: str | None = None,
    max_forwards: int | None = 70,
    headers: Iterable[str] = (),
    body: str = "",
    content_type: str = "application/sdp",
) -> bytes:
    """A request as a phone would send it from ``peer``: its Via, its Contact."""
    via = f"SIP/2.0/{peer.transport.upper()} {peer.address};branch={branch}"
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}"]
    lines += [
        f"From: <sip:raw@{peer.address}>;tag={from_tag}",
        f"To: {to or f'<{uri}>'}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        f"Contact: <sip:raw@{peer.address};transport={peer.transport}>",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += list(headers)
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def build_response(request: SippMessage, status: int, reason: str, *, to_tag: str = "",
                   headers: Iterable[str] = ()) -> bytes:
    """A response to ``request`` copying its Via, From, To, Call-ID and CSeq (§8.2.6.2),
    with ``headers`` after them."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {via}" for via in request.headers("Via")]
    to = request.header("To") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [
        f"From: {request.header('From')}",
        f"To: {to}",
        f"Call-ID: {request.header('Call-ID')}",
        f"CSeq: {request.header('CSeq')}",
        *headers,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


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


def control_toml(directory: str | os.PathLike[str]) -> str:
    """The ``[control]`` section of a sipgw whose socket is ``directory/sipgw.ctl``, for a
    test that asks it through ``sipgw ctl`` (the default path is shared by every sipgw)."""
    return f'[control]\nsocket = "{Path(directory) / "sipgw.ctl"}"\n'


def statistics(gw: SipgwProcess, *names: str) -> dict[str, int]:
    """``sipgw ctl --json stats.fetch NAMES`` (a gw configured with :func:`control_toml`):
    ``{"group:name": value}``."""
    done = run_cli("ctl", "-c", str(gw.config_path), "--json", "stats.fetch", *names)
    assert done.returncode == 0, done.stderr
    return {name.replace(".", ":", 1): value for name, value in json.loads(done.stdout).items()}


def kernel_udp_drops(gw: SipgwProcess) -> int:
    """Datagrams the kernel dropped for ``gw``'s UDP socket because its receive buffer was
    full (the last column of /proc/net/udp): on a busy machine part of a burst never
    reaches sipgw at all, and a test that counts what sipgw did with it must know."""
    host, port = gw.hostport
    local = f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"
    rows = [line.split() for line in Path("/proc/net/udp").read_text().splitlines()[1:]]
    bound = [int(row[-1]) for row in rows if row[1] == local]
    assert bound, f"no UDP socket on {host}:{port} in /proc/net/udp"
    return sum(bound)
