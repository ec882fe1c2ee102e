"""A small blocking JSON-RPC client for the command line, and where the socket lives.

``sipgw serve`` and every command that talks to it find the control socket from the same
config with :func:`socket_candidates`: the configured ``control.socket``, or, when the
server could not create that one (not root and ``/run/sipgw`` not writable), the file of
the same name under ``state.directory`` (DESIGN.md §6). Standard library only.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from sipgw.rpc import codec
from sipgw.rpc.codec import ProtocolError, RemoteError

__all__ = ["Client", "ProtocolError", "RemoteError", "Unreachable", "server_socket_path",
           "socket_candidates", "find_socket"]

MAX_LINE = 64 * 1024 * 1024


class Unreachable(Exception):
    """No proxy answers at the control socket; ``hint`` says what to check."""

    def __init__(self, path: str, why: str, hint: str) -> None:
        super().__init__(f"cannot reach sipgw at {path}: {why}")
        self.path = path
        self.why = why
        self.hint = hint


def socket_candidates(configured: str, state_directory: str) -> list[str]:
    """Where the socket may be, in the order a client looks: configured, then fallback."""
    fallback = os.path.join(state_directory, os.path.basename(configured) or "sipgw.ctl")
    return [configured] if fallback == configured else [configured, fallback]


def _writable_dir(path: str) -> bool:
    """Could we create a file in ``path`` (making it, if its parent allows)?"""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    return os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)


def server_socket_path(configured: str, state_directory: str, *,
                       is_root: bool | None = None) -> str:
    """Where ``sipgw serve`` puts its socket: the configured path, unless we are not root
    and cannot write its directory; then under ``state.directory``."""
    root = (os.geteuid() == 0) if is_root is None else is_root
    if root or _writable_dir(os.path.dirname(configured) or "."):
        return configured
    return socket_candidates(configured, state_directory)[-1]


def find_socket(configured: str, state_directory: str) -> str:
    """The first candidate that exists (a client's choice); else the configured one."""
    for path in socket_candidates(configured, state_directory):
        if os.path.exists(path):
            return path
    return configured


class Client:
    """One connection to the control socket; ``call`` is one request, one answer."""

    def __init__(self, path: str, *, timeout: float | None = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buffer = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise _unreachable(path, e) from None

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        rid = next(self._ids)
        self.send(codec.request(method, params, rid))
        while True:
            message = self.read_message()
            if message.get("id") == rid and ("result" in message or "error" in message):
                return codec.unwrap(message)
            # anything else (a notification of a stream) is not ours to answer

    def send(self, message: Any) -> None:
        try:
            self._sock.sendall(codec.encode(message))
        except OSError as e:
            raise _unreachable(self.path, e) from None

    def read_message(self, timeout: float | None | bool = False) -> dict[str, Any]:
        """The next line from the server, decoded; ``timeout`` overrides the client's
        (``None`` waits for ever). TimeoutError when nothing came in time."""
        line = self.read_line(timeout)
        return codec.decode_message(line)

    def read_line(self, timeout: float | None | bool = False) -> bytes:
        if timeout is not False:
            self._sock.settimeout(timeout)
        deadline = None if self._sock.gettimeout() is None else (
            time.monotonic() + (self._sock.gettimeout() or 0.0))
        try:
            while b"\n" not in self._buffer:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("no answer from sipgw in time")
                    self._sock.settimeout(left)
                try:
                    data = self._sock.recv(65536)
                except TimeoutError:
                    raise TimeoutError("no answer from sipgw in time") from None
                if not data:
                    raise Unreachable(self.path, "the proxy closed the connection",
                                      "it may have stopped or restarted")
                self._buffer += data
                if len(self._buffer) > MAX_LINE:
                    raise ProtocolError("answer too long")
        finally:
            self._sock.settimeout(self.timeout)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def stream(self, method: str, params: Any = None) -> Iterator[dict[str, Any]]:
        """Call a streaming method; the params of each notification that follows.

        The call is answered before this returns (not at the first ``next``, as a
        generator would), so the stream is open once it does: ``sipgw trace`` says
        "tracing" then, and nothing sent after that line is missed."""
        self.call(method, params)
        return self._notifications()

    def _notifications(self) -> Iterator[dict[str, Any]]:
        while True:
            message = self.read_message(timeout=None)
            if "method" in message and "id" not in message:
                yield message.get("params") or {}

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unreachable(path: str, e: OSError) -> Unreachable:
    if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return Unreachable(path, os.strerror(e.errno), "is sipgw serve running with this config?")
    if e.errno in (errno.EACCES, errno.EPERM):
        return Unreachable(path, "permission denied",
                           "run as root or as a member of the socket's group (control.group)")
    return Unreachable(path, str(e.strerror or e), "is sipgw serve running with this config?")
