"""Run Debian's baresip 1.0 (package ``baresip-core``) headless, as a phone in tests.

A :class:`Baresip` is one ``baresip -f DIR`` whose configuration directory the test writes:

- ``config``: SIP on loopback ports the kernel picks, on the loopback address only; audio from and
  to an ``aubridge`` device (no sound card needed) with PCMU/PCMA (``g711``); the ``menu``
  commands (``dial``, ``hangup``, ``reginfo``, ``quit``) and ``ctrl_tcp`` on another free
  loopback port;
- ``accounts``: one account, its password and sipgw as its outbound proxy;
- ``baresip.log``: what baresip writes (``-v``).

It is driven through ``ctrl_tcp``: netstrings (``LEN:JSON,``) both ways, a command
``{"command", "params", "token"}`` answered by ``{"response": true, "ok", "data",
"token"}``, and events (``{"event": true, "type": "CALL_ESTABLISHED", ...}``) sent as they
happen to the connection. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.sipp import LOOPBACK, free_port

CONNECT_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BaresipError(Exception):
    """baresip could not be started or did not answer; the message has its log."""


class Baresip:
    """One baresip on 127.0.0.1 with account ``aor`` (``sip:USER@DOMAIN``), its
    ``password``, registering and calling through ``outbound`` (``sip:HOST:PORT``)."""

    def __init__(self, workdir: Path, *, aor: str, password: str, outbound: str,
                 executable: str = "baresip") -> None:
        self.workdir = workdir
        self.aor = aor
        self.password = password
        self.outbound = outbound
        self.executable = executable
        self.control_port = free_port("tcp")
        self.log_path = workdir / "baresip.log"
        self.events: list[dict] = []  # every event, in order
        self._unread: list[dict] = []  # those wait_event has not returned yet
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._buffer = b""
        self._tokens = 0

    def config_text(self) -> str:
        return (
            "# Written by tests/integration/baresip.py\n"
            "poll_method epoll\n"
            # Port 0: UDP, TCP and TLS each on a port of the kernel's choosing (with a
            # port P, TLS would take P + 1, which nobody checked was free).
            f"sip_listen {LOOPBACK}:0\n"
            f"net_interface {LOOPBACK}\n"
            "audio_player aubridge,test\n"
            "audio_source aubridge,test\n"
            "audio_alert aubridge,test\n"
            "module_path /usr/lib/baresip/modules\n"
            "module g711.so\n"
            "module aubridge.so\n"
            "module_tmp account.so\n"
            "module_app menu.so\n"
            "module_app ctrl_tcp.so\n"
            f"ctrl_tcp_listen {LOOPBACK}:{self.control_port}\n"
        )

    def accounts_text(self) -> str:
        return f'<{self.aor}>;auth_pass={self.password};outbound="{self.outbound}";regint=600\n'

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Baresip:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config").write_text(self.config_text())
        (self.workdir / "accounts").write_text(self.accounts_text())
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [self.executable, "-f", str(self.workdir), "-v"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while self._control is None:
            if self._process.poll() is not None:
                raise BaresipError(f"baresip exited ({self._process.returncode})\n"
                                   f"{self.describe()}")
            try:
                self._control = socket.create_connection((LOOPBACK, self.control_port),
                                                         timeout=0.2)
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise BaresipError(f"ctrl_tcp not listening\n{self.describe()}") from None
                try:
                    self._process.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass
        return self

    def quit(self, timeout: float = STOP_TIMEOUT) -> int:
        """The ``quit`` command (baresip unregisters, then exits); its exit code."""
        assert self._process is not None
        self._send({"command": "quit", "token": "quit"})
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"baresip still running {timeout:g}s after quit\n"
                                 f"{self.describe()}") from None

    def kill(self) -> None:
        if self._control is not None:
            self._control.close()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)

    # -- ctrl_tcp -----------------------------------------------------------------------

    def command(self, name: str, params: str | None = None, timeout: float = 5.0) -> dict:
        """Run one command; its response (``data`` is the text it printed)."""
        self._tokens += 1
        token = str(self._tokens)
        request = {"command": name, "token": token}
        if params is not None:
            request["params"] = params
        self._send(request)
        return self._read_until(lambda m: m.get("response") and m.get("token") == token,
                                timeout, f"an answer to {name!r}")

    def wait_event(self, *types: str, timeout: float = 10.0) -> dict:
        """The first event of one of ``types`` not yet waited for (it may have come while
        a command was answered)."""
        for event in self._unread:
            if event.get("type") in types:
                break
        else:
            event = self._read_until(lambda m: m.get("event") and m.get("type") in types,
                                     timeout, f"an event {types}")
        self._unread.remove(event)
        return event

    def registration(self, timeout: float = 10.0) -> str:
        """``OK`` or ``ERR``: how the account's registration ended (``reginfo``, polled)."""
        deadline = time.monotonic() + timeout
        while True:
            data = _ANSI.sub("", self.command("reginfo")["data"])
            state = re.search(rf"{re.escape(self.aor)}\s+(OK|ERR)\b", data)
            if state:
                return state.group(1)
            if time.monotonic() > deadline:
                raise AssertionError(f"no registration outcome within {timeout:g}s: {data!r}\n"
                                     f"{self.describe()}")
            assert self._process is not None
            try:
                self._process.wait(0.05)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"baresip exited\n{self.describe()}")

    def _send(self, request: dict) -> None:
        assert self._control is not None, "baresip was not started"
        data = json.dumps(request).encode()
        self._control.sendall(b"%d:%s," % (len(data), data))

    def _read_until(self, wanted, timeout: float, what: str) -> dict:
        assert self._control is not None, "baresip was not started"
        deadline = time.monotonic() + timeout
        while True:
            while (message := self._take()) is not None:
                if message.get("event"):
                    self.events.append(message)
                    self._unread.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout:g}s; events: "
                                     f"{[e.get('type') for e in self.events]}\n{self.describe()}")
            self._control.settimeout(left)
            try:
                data = self._control.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"baresip closed its control connection\n{self.describe()}")
            self._buffer += data

    def _take(self) -> dict | None:
        """One whole netstring from the buffer, decoded, or None."""
        length, colon, rest = self._buffer.partition(b":")
        if not colon or len(rest) < int(length) + 1:
            return None
        self._buffer = rest[int(length) + 1:]
        return json.loads(rest[:int(length)])

    # -- what it said -------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def describe(self) -> str:
        code = self._process.poll() if self._process else None
        state = "not started" if self._process is None else (
            "running" if code is None else f"exit {code}")
        return (f"baresip in {self.workdir} ({state})\n--- baresip.log (end) ---\n"
                f"{self.log_text()[-4000:]}")

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()
