"""Run real SIPp processes (3.6.1, Debian ``sip-tester``) as callers and backends in tests.

A :class:`SippProcess` is one ``sipp`` run on loopback: one scenario from ``scenarios/``,
its own SIP port and control port (two SIPps on the default control port 8888 collide),
and its own trace files in a work directory:

- ``NAME.out``: SIPp's screen output (stdout and stderr);
- ``NAME_messages.log``: every message sent and received (``-trace_msg``), read back by
  :meth:`SippProcess.messages`;
- ``NAME_stats.csv``: the statistics (``-trace_stat``), read back by :meth:`SippProcess.stats`;
- ``NAME_errors.log``: unexpected messages and scenario errors (``-trace_err``).

SIPp's exit code is the verdict: 0 means every call of the scenario succeeded.

Nothing here sleeps to wait: readiness is a bounded poll of the kernel's socket tables,
and ends are ``Popen.wait`` with a timeout. :class:`SippRunner` starts processes for one test
and stops every one of them at the end, whatever happened (the ``sipp`` fixture in
``conftest.py``).
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sipgw.tools.loopback import LOOPBACK, free_port

SCENARIOS = Path(__file__).with_name("scenarios")

# SIPp's documented exit codes.
EXIT_CODES = {
    0: "all calls succeeded",
    1: "at least one call failed",
    97: "exit on internal command (calls may have been processed)",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}

_TRANSPORTS = {"udp": "u1", "tcp": "t1"}
_names = itertools.count(1)


class SippError(Exception):
    """SIPp could not be run, did not become ready, or left no readable trace."""


def scenario_path(scenario: str | os.PathLike[str]) -> Path:
    """A bare name (``"uac_call.xml"`` or ``"uac_call"``) means a file in ``scenarios/``;
    anything with a directory (``"./mine.xml"``) is taken as it is."""
    path = Path(scenario)
    if path.parent == Path("."):
        path = SCENARIOS / (path.name if path.suffix == ".xml" else f"{path.name}.xml")
    if not path.is_file():
        raise SippError(f"no SIPp scenario at {path}")
    return path


class SippMessage(NamedTuple):
    """One message from SIPp's ``-trace_msg`` file: ``(direction, text)``.

    ``direction`` is ``"sent"`` or ``"received"``; ``text`` is the message exactly as it
    went over the wire (CRLF line ends, body included).
    """

    direction: str
    text: str

    @property
    def start_line(self) -> str:
        return self.text.split("\r\n", 1)[0]

    @property
    def is_response(self) -> bool:
        return self.text.startswith("SIP/2.0 ")

    @property
    def method(self) -> str | None:
        """The request's method, or for a response the method of its CSeq."""
        if not self.is_response:
            return self.start_line.split(" ", 1)[0]
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None

    @property
    def status(self) -> int | None:
        return int(self.start_line.split()[1]) if self.is_response else None

    @property
    def kind(self) -> str:
        """What the message is in a flow: the method of a request, the code of a response."""
        return str(self.status) if self.is_response else self.start_line.split(" ", 1)[0]

    @property
    def head(self) -> str:
        return self.text.split("\r\n\r\n", 1)[0]

    @property
    def body(self) -> str:
        parts = self.text.split("\r\n\r\n", 1)
        return parts[1] if len(parts) == 2 else ""

    def headers(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive, full names only), in order."""
        wanted = name.lower()
        values = []
        for line in self.head.split("\r\n")[1:]:
            field, sep, value = line.partition(":")
            if sep and field.strip().lower() == wanted:
                values.append(value.strip())
        return values

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        values = self.headers(name)
        return values[0] if values else None


# One record of the -trace_msg file, as SIPp 3.6.1 writes it:
#   ----------------------------------------------- 2026-11-26 14:26:33.493348
#   UDP message sent (597 bytes):
#   <blank line><the message, byte count as given><one newline>
# Received messages say "UDP message received [245] bytes :". Other records (losses,
# ignored provisionals) have other wording and are skipped.
_TRACE_RECORD = re.compile(
    rb"^(?P<transport>[A-Z]+) message (?P<direction>sent|received) "
    rb"(?:\((?P<sent>\d+) bytes\)|\[(?P<received>\d+)\] bytes) ?:\n\n",
    re.MULTILINE,
)
_TRACE_SEPARATOR = b"\n-----------------------------------------------"


def parse_message_trace(data: bytes) -> list[SippMessage]:
    """The messages of a SIPp ``-message_file``, in file order."""
    messages = []
    pos = 0
    while match := _TRACE_RECORD.search(data, pos):
        start = match.end()
        size = int(match["sent"] or match["received"])
        end = start + size
        if data[end : end + 1] != b"\n" or not (
            data.startswith(_TRACE_SEPARATOR, end) or end + 1 == len(data)
        ):
            # The byte count does not land on the record's end: take the text up to the
            # next record instead, less the newline SIPp adds.
            end = data.find(_TRACE_SEPARATOR, start)
            end = len(data) - 1 if end < 0 else end
        text = data[start:end].decode("utf-8", errors="replace")
        messages.append(SippMessage(match["direction"].decode(), text))
        pos = end
    return messages


@dataclass(frozen=True, slots=True, kw_only=True)
class SippStats:
    """The last row of SIPp's ``-trace_stat`` CSV; ``(C)`` columns are run totals."""

    values: Mapping[str, str]

    def count(self, column: str) -> int:
        return int(self.values[column])

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return self.count("FailedCall(C)")

    @property
    def retransmissions(self) -> int:
        return self.count("Retransmissions(C)")

    @property
    def failures(self) -> dict[str, int]:
        """Non-zero ``Failed...(C)`` columns: why calls failed."""
        return {
            column: int(value)
            for column, value in self.values.items()
            if column.startswith("Failed")
            and column.endswith("(C)")
            and value.strip() not in ("", "0")
        }


def parse_stats(text: str) -> SippStats:
    rows = [row for row in csv.reader(text.splitlines(), delimiter=";") if row]
    if len(rows) < 2:
        raise SippError("SIPp statistics file has no data row")
    header, last = rows[0], rows[-1]
    return SippStats(
        values={name: value.strip() for name, value in zip(header, last, strict=False) if name}
    )


class SippProcess:
    """One SIPp process running one scenario on 127.0.0.1.

    ``remote`` ("host:port") makes it a client sending to that address; without it, it
    waits for calls (a UAS). ``port`` is its SIP port (a free one by default), ``transport``
    "udp" (``-t u1``) or "tcp" (``-t t1``, one connection). ``calls`` is ``-m`` (SIPp exits
    after that many calls), ``rate`` is ``-r`` (calls per second), ``pause_ms`` is ``-d``
    (the length of a ``<pause/>`` without its own duration; None leaves SIPp's 0),
    ``service`` is ``-s`` (the
    ``[service]`` keyword), ``keys`` become ``-key NAME VALUE``, ``inf`` is ``-inf FILE``.
    ``retransmissions=False`` is ``-nr``. ``timeout`` (seconds) is SIPp's own global
    ``-timeout`` with ``-timeout_error``: a safety bound, not a way to end a test.
    ``ip`` is the loopback address it binds and writes in Via and Contact (``-i``): one
    per SIPp makes them different sources, as phones behind different addresses are.
    ``trace_messages=False`` leaves out ``-trace_msg`` (a load generator sending thousands
    of messages a second would spend its time writing them); ``stats_period`` is
    ``-fd``, how often the statistics file gets a row (seconds; SIPp's default is 60, and
    the last row is always written when SIPp ends).
    """

    def __init__(
        self,
        scenario: str | os.PathLike[str],
        *,
        workdir: str | os.PathLike[str],
        remote: str | None = None,
        port: int | None = None,
        transport: str = "udp",
        calls: int = 1,
        rate: float | None = None,
        pause_ms: int | None = 200,
        service: str | None = None,
        keys: Mapping[str, str] | None = None,
        inf: str | os.PathLike[str] | None = None,
        retransmissions: bool = True,
        timeout: float = 15.0,
        name: str | None = None,
        extra_args: Sequence[str] = (),
        executable: str = "sipp",
        ip: str = LOOPBACK,
        trace_messages: bool = True,
        stats_period: int | None = None,
    ) -> None:
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(_TRANSPORTS)}, not {transport!r}")
        self.scenario = scenario_path(scenario)
        self.workdir = Path(workdir)
        self.remote = remote
        self.port = port if port is not None else free_port()
        self.control_port = free_port("udp")
        self.transport = transport
        self.calls = calls
        self.rate = rate
        self.pause_ms = pause_ms
        self.service = service
        self.keys = dict(keys or {})
        self.inf = Path(inf) if inf is not None else None
        self.retransmissions = retransmissions
        self.timeout = timeout
        self.name = name or f"{self.scenario.stem}-{next(_names)}"
        self.extra_args = list(extra_args)
        self.executable = executable
        self.ip = ip
        self.trace_messages = trace_messages
        self.stats_period = stats_period
        self.output_file = self.workdir / f"{self.name}.out"
        self.message_file = self.workdir / f"{self.name}_messages.log"
        self.stats_file = self.workdir / f"{self.name}_stats.csv"
        self.error_file = self.workdir / f"{self.name}_errors.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """Where to send to reach this SIPp: ``127.0.0.1:PORT``."""
        return f"{self.ip}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def command(self) -> list[str]:
        args = [
            self.executable,
            "-sf", str(self.scenario),
            "-i", self.ip, "-p", str(self.port), "-bind_local",
            "-ci", LOOPBACK, "-cp", str(self.control_port),
            "-t", _TRANSPORTS[self.transport],
            "-m", str(self.calls),
            "-nostdin",
            "-trace_stat", "-stf", str(self.stats_file),
            "-trace_err", "-error_file", str(self.error_file),
            "-timeout", f"{max(1, round(self.timeout))}s", "-timeout_error",
        ]  # fmt: skip
        if self.trace_messages:
            args += ["-trace_msg", "-message_file", str(self.message_file)]
        if self.stats_period is not None:
            args += ["-fd", str(self.stats_period)]
        if self.rate is not None:
            args += ["-r", f"{self.rate:g}"]
        if self.pause_ms is not None:
            args += ["-d", str(self.pause_ms)]
        if self.service is not None:
            args += ["-s", self.service]
        for key, value in self.keys.items():
            args += ["-key", key, str(value)]
        if self.inf is not None:
            args += ["-inf", str(self.inf)]
        if not self.retransmissions:
            args.append("-nr")
        args += self.extra_args
        if self.remote is not None:
            args.append(self.remote)
        return args

    def start(self) -> SippProcess:
        if self._process is not None:
            raise SippError(f"{self.name} was already started")
        if shutil.which(self.executable) is None:
            raise SippError(f"{self.executable!r} is not installed: run ./scripts/setup")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.output_file, "wb") as output:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        return self

    def wait_ready(self, timeout: float = 5.0) -> SippProcess:
        """Return once this process has bound its SIP port (listening, for TCP)."""
        process = self._require_started()
        deadline = time.monotonic() + timeout
        while not self._listening():
            if time.monotonic() > deadline:
                raise SippError(f"{self.name} not ready after {timeout:g}s\n{self.describe()}")
            try:
                # Between two looks, wait a little for the process to end: it tells a
                # SIPp that failed to start at once, and leaves the CPU to one starting.
                process.wait(0.01)
            except subprocess.TimeoutExpired:
                continue
            raise SippError(f"{self.name} exited before it was ready\n{self.describe()}")
        return self

    def wait(self, timeout: float | None = None) -> int:
        """SIPp's exit code once it ends (0: every call succeeded).

        Waits at most ``timeout`` seconds (default: SIPp's own timeout and a margin); a
        process still running then is stopped and :class:`SippError` raised.
        """
        process = self._require_started()
        bound = timeout if timeout is not None else self.timeout + 5.0
        try:
            return process.wait(bound)
        except subprocess.TimeoutExpired:
            self.stop()
            raise SippError(
                f"{self.name} still running after {bound:g}s\n{self.describe()}"
            ) from None

    def stop(self, timeout: float = 3.0) -> int | None:
        """End the process if it still runs (SIGTERM, then SIGKILL); its exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        return process.returncode

    def stats(self) -> SippStats:
        try:
            return parse_stats(self.stats_file.read_text(errors="replace"))
        except (OSError, SippError) as exc:
            raise SippError(f"{self.name}: no statistics ({exc})\n{self.describe()}") from exc

    def messages(self) -> list[SippMessage]:
        try:
            return parse_message_trace(self.message_file.read_bytes())
        except OSError as exc:
            raise SippError(f"{self.name}: no message trace ({exc})\n{self.describe()}") from exc

    def flow(self, *, retransmissions: bool = False) -> list[tuple[str, str]]:
        """``(direction, method or status code)`` for each message, in order.

        Retransmissions (a byte-identical copy of an earlier message in the same direction)
        are left out unless asked for: their number depends on timing, not on the scenario.
        """
        seen: set[SippMessage] = set()
        flow = []
        for message in self.messages():
            if not retransmissions and message in seen:
                continue
            seen.add(message)
            flow.append((message.direction, message.kind))
        return flow

    def describe(self) -> str:
        """What went on, for an assertion message: command, exit, errors, screen tail."""
        code = self.returncode
        if self._process is None:
            state = "not started"
        elif code is None:
            state = "running"
        else:
            state = f"exit {code} ({EXIT_CODES.get(code, 'unknown')})"
        lines = [f"{self.name}: {' '.join(self.command())}", state]
        for path in (self.error_file, self.output_file):
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                lines += [f"--- {path.name} (end) ---", text[-2000:]]
        return "\n".join(lines)

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise SippError(f"{self.name} was not started")
        return self._process

    def _listening(self) -> bool:
        """Whether one of this process's own sockets is bound to its SIP port."""
        table, state = (
            ("/proc/net/tcp", "0A") if self.transport == "tcp" else ("/proc/net/udp", "07")
        )
        ip = int.from_bytes(socket.inet_aton(self.ip), "big")
        wanted = f"{socket.htonl(ip):08X}:{self.port:04X}"
        inodes = {
            fields[9]
            for fields in _proc_net_rows(table)
            if fields[1] == wanted and fields[3] == state
        }
        return bool(inodes & _socket_inodes(self._require_started().pid))

    def __enter__(self) -> SippProcess:
        return self.start() if self._process is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SippProcess {self.name} {self.transport} {self.address} pid={self.pid}>"


def _proc_net_rows(table: str) -> Iterable[list[str]]:
    with open(table) as lines:
        next(lines)
        for line in lines:
            yield line.split()


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


class SippRunner:
    """Starts the SIPp processes of one test in one work directory; stops them all."""

    def __init__(self, workdir: str | os.PathLike[str], *, executable: str = "sipp") -> None:
        self.workdir = Path(workdir)
        self.executable = executable
        self.processes: list[SippProcess] = []

    def uas(
        self, scenario: str | os.PathLike[str], *, ready_timeout: float = 5.0, **options: object
    ) -> SippProcess:
        """Start a SIPp that waits for calls, and return once it listens."""
        return self._start(scenario, options).wait_ready(ready_timeout)

    def uac(
        self, scenario: str | os.PathLike[str], *, remote: str, **options: object
    ) -> SippProcess:
        """Start a SIPp that places calls to ``remote`` ("host:port")."""
        return self._start(scenario, {**options, "remote": remote})

    def stop_all(self) -> None:
        """Stop every process started here, even when stopping one of them fails."""
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as exc:  # noqa: BLE001 - the others must still be stopped
                errors.append(exc)
        if errors:
            raise errors[0]

    def _start(
        self, scenario: str | os.PathLike[str], options: Mapping[str, object]
    ) -> SippProcess:
        process = SippProcess(
            scenario,
            workdir=self.workdir,
            executable=self.executable,
            **options,  # type: ignore[arg-type]
        )
        self.processes.append(process)
        return process.start()


# -- assertions shared by the tests that drive SIPp -----------------------------------------


def assert_all_calls_succeeded(*processes: SippProcess, calls: int = 1) -> None:
    for process in processes:
        assert process.wait() == 0, process.describe()
        stats = process.stats()
        assert (stats.successful, stats.failed) == (calls, 0), (stats.failures, process.describe())


def all_of(messages: Iterable[SippMessage], direction: str, kind: str) -> list[SippMessage]:
    return [m for m in messages if m.direction == direction and m.kind == kind]


def first(messages: Iterable[SippMessage], direction: str, kind: str) -> SippMessage:
    found = all_of(messages, direction, kind)
    assert found, f"no {kind} {direction}"
    return found[0]


def uri_of(name_addr: str) -> str:
    return name_addr.split("<", 1)[1].split(">", 1)[0] if "<" in name_addr else name_addr
