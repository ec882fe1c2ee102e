"""A real Debian ``redis-server`` on a free loopback port, for tests.

Started with no persistence (``--save '' --appendonly no``) in its own directory; ready
when it answers ``PING`` (a bounded poll, never a sleep). ``stop()`` and ``start()`` again
on the same port simulate an outage. ``redis_fixture`` makes a pytest fixture that always
stops it. ``args`` adds to its command line (an ACL user, TLS, ``--replicaof``): the
Sentinel cluster of ``redis_sentinel`` is made of these. ``Monitor`` records what the
server runs and for whom, so that a test counts a client's round trips.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

READY_TIMEOUT = 5.0
POLL = 0.02


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _encode(args) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def command(port: int, *args: str, db: int | None = None, timeout: float = 1.0,
            auth: tuple[str, ...] = ()) -> bytes:
    """One RESP command over a fresh connection (after ``AUTH *auth`` and ``SELECT db``);
    its raw reply."""
    before = ([["AUTH", *auth]] if auth else []) + ([["SELECT", str(db)]] if db is not None
                                                     else [])
    payload = b"".join(_encode(c) for c in before) + _encode(args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or not before or data.count(b"\r\n") > len(before):
                break
    for _ in before:  # the +OK of each (or the error that says why not)
        first, _, data = data.partition(b"\r\n")
        if not first.startswith(b"+"):
            raise OSError(f"Redis refused {before[0][0]}: {first.decode()}")
    return data


class RedisServer:
    """``redis-server`` (or, with ``program="redis-sentinel"``, a Sentinel) with ``args``
    added to its command line; ``auth`` is what ``cli`` authenticates with."""

    def __init__(self, workdir: Path, port: int | None = None, *, args: Sequence[str] = (),
                 program: str = "redis-server", auth: tuple[str, ...] = ()) -> None:
        executable = shutil.which(program)
        if executable is None:
            pytest.fail(f"{program} is not installed (Debian package {program}): "
                        "run ./scripts/setup")
        self.executable = executable
        self.workdir = workdir
        self.port = port or free_port()
        self.args = list(args)
        self.auth = auth
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/2"

    def argv(self) -> list[str]:
        return [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.args]

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")
        self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                # Up, even if it wants a password first.
                if command(self.port, "PING").startswith((b"+PONG", b"-NOAUTH")):
                    return self
            except OSError:
                pass
            try:  # the pause between polls, which also notices an early exit
                self.process.wait(POLL)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"{self.executable} exited: "
                               f"{(self.workdir / 'redis.log').read_text()}")
        raise RuntimeError(f"{self.executable} on {self.port} not ready after {READY_TIMEOUT}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def cli(self, *args: str) -> bytes:
        """One command in database 2 (the one ``url`` names); the raw reply."""
        return command(self.port, *args, db=2, auth=self.auth)


def redis_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


class Monitor:
    """Redis's ``MONITOR`` on a connection of its own, read in a thread: every command the
    server runs, with who sent it (``lua`` for the commands of a script), so a test counts
    the round trips a client made. ``commands(client_ports)`` after ``stop()``."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.socket.sendall(_encode(["MONITOR"]))
        self.lines: list[str] = []
        self._buffer = b""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.socket.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                chunk = self.socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\r\n")
            self.lines.extend(line.decode(errors="replace") for line in lines)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self.socket.close()

    def commands(self) -> list[tuple[str, list[str]]]:
        """(who, [command, args...]) of each command seen: who is ``ADDRESS:PORT`` of the
        client, or ``lua``."""
        out = []
        for line in self.lines:
            found = re.match(r"\+[\d.]+ \[\d+ ([^\]]+)\] (.*)", line)
            if found:
                out.append((found.group(1), shlex.split(found.group(2))))
        return out
