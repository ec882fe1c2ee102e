"""A real Debian ``redis-server`` on a free loopback port, for tests.

Started with no persistence (``--save '' --appendonly no``) in its own directory; ready
when it answers ``PING`` (a bounded poll, never a sleep). ``stop()`` and ``start()`` again
on the same port simulate an outage. ``redis_fixture`` makes a pytest fixture that always
stops it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
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


def command(port: int, *args: str, db: int | None = None, timeout: float = 1.0) -> bytes:
    """One RESP command over a fresh connection (after ``SELECT db``); its raw reply."""
    payload = _encode(args)
    if db is not None:
        payload = _encode(["SELECT", str(db)]) + payload
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data += s.recv(65536)
            if db is None or data.count(b"\r\n") >= 2:
                break
    return data.split(b"\r\n", 1)[1] if db is not None else data


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (Debian package redis-server): "
                        "run ./scripts/setup")
        self.executable = executable
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/2"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if command(self.port, "PING") == b"+PONG\r\n":
                    return self
            except OSError:
                pass
            try:  # the pause between polls, which also notices an early exit
                self.process.wait(POLL)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()}")
        raise RuntimeError(f"redis-server on {self.port} not ready after {READY_TIMEOUT}s")

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
        return command(self.port, *args, db=2)


def redis_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
