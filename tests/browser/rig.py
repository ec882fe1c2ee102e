"""The browser rig, Python side: real browsers (Debian's Chromium) running JsSIP and SIP.js.

:class:`BrowserRig` runs ``driver.mjs`` (Node.js, playwright-core) as a subprocess and talks
to it in JSON lines: requests with an id and their replies, and events that the pages send
("registered", "incoming", "confirmed", "ended", ...). Every wait is bounded and fails with
what the page said last (its events and console). :meth:`BrowserRig.close` always ends
Chromium: the driver closes it, and whatever is left of its process group is killed.

:class:`PageServer` serves the pages on a free loopback port, from a thread:

- ``/pages/``: the rig's test pages (``pages/jssip.html``, ``pages/sipjs.html``), whose
  ``window.phone`` has the same methods and events for both libraries;
- ``/phone/``: the phone page shipped in the package, through
  :func:`sipgw.proxy.transport.ws.phone.phone_asset`, as sipgw's WS listener serves it on ``/``;
- ``/build/``: the SIP.js bundle (``build/sip.js``).

A :class:`Page` is one browser tab in its own browser context: one phone.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sipgw.proxy.transport.ws.phone import phone_asset

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DRIVER = HERE / "driver.mjs"
PAGES = HERE / "pages"
BUILD = HERE / "build"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
LOOPBACK = "127.0.0.1"

# The files the rig needs that ./scripts/setup makes (npm ci, then build.mjs).
SETUP_OUTPUTS = (
    HERE / "node_modules" / "playwright-core" / "package.json",
    ROOT / "sipgw" / "data" / "phone" / "vendor" / "jssip.js",
    BUILD / "sip.js",
)

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


class RigError(Exception):
    """The driver failed, a request was refused, or a wait ran out of time."""


def missing_setup_outputs() -> list[Path]:
    return [path for path in SETUP_OUTPUTS if not path.is_file()]


def self_signed_certificate(directory: Path, host: str = LOOPBACK) -> tuple[Path, Path]:
    """A throwaway certificate for ``host`` (an IP address or a name), valid for a day:
    ``(cert.pem, key.pem)`` in ``directory``. For WSS and HTTPS in tests, with a
    ``BrowserRig(ignore_certificate_errors=True)``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


# --- the pages -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "sipgw-rig"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        found = self._lookup(self.path.split("?", 1)[0])
        if found is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        body, content_type = found
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    @staticmethod
    def _lookup(path: str) -> tuple[bytes, str] | None:
        if path == "/phone" or path.startswith("/phone/"):
            return phone_asset(path[len("/phone") :])
        for prefix, directory in (("/pages/", PAGES), ("/build/", BUILD)):
            if path.startswith(prefix):
                name = path[len(prefix) :]
                # Plain names in one directory only.
                if "/" in name or name.startswith(".") or Path(name).suffix not in _STATIC_TYPES:
                    return None
                file = directory / name
                if file.is_file():
                    return file.read_bytes(), _STATIC_TYPES[file.suffix]
        return None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that refuses our certificate, or drops a connection: not news.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class PageServer:
    """The pages over HTTP on ``http://127.0.0.1:PORT`` (a free port), from a daemon thread;
    over HTTPS with ``tls=(certificate_file, key_file)``."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self._httpd = _Server((LOOPBACK, 0), _Handler)
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # The handshake in the request's thread: a silent client must not stall accept().
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True,
                                                     do_handshake_on_connect=False)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="rig-pages", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> PageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# --- the driver ------------------------------------------------------------------------


@dataclass
class Event:
    """One event from a page (or the driver, with ``page`` None)."""

    kind: str
    page: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    claimed: bool = False


class BrowserRig:
    """One Chromium, driven by ``driver.mjs``; pages opened with :meth:`open`.

    ``workdir`` keeps the driver's log (``driver.log``: its stderr) and Chromium's temporary
    profile. ``timeout`` bounds every request unless a call gives its own.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        chromium: str = CHROMIUM,
        node: str = "node",
        timeout: float = 15.0,
        ignore_certificate_errors: bool = False,
    ):
        self.workdir = workdir
        # For WSS (and HTTPS pages) with a test certificate: Chromium accepts any.
        self.ignore_certificate_errors = ignore_certificate_errors
        self.chromium = chromium
        self.node = shutil.which(node) or node
        self.timeout = timeout
        self.browser_pid: int | None = None
        self.version: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ids = iter(range(1, 1 << 62))
        self._replies: dict[int, queue.SimpleQueue[dict[str, Any]]] = {}
        self._events: list[Event] = []
        self._lock = threading.Condition()
        self._reader: threading.Thread | None = None
        self._gone = False
        self._send_lock = threading.Lock()
        self._tmp: Path | None = None
        self.pages: list[str] = []

    # life cycle

    def start(self, timeout: float = 30.0) -> BrowserRig:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # playwright makes Chromium's fresh --user-data-dir under TMPDIR, and Chromium puts
        # a unix socket there: a short path of our own (a socket path has 107 bytes at most,
        # pytest's tmp_path can be longer), removed by close().
        self._tmp = Path(tempfile.mkdtemp(prefix="sipgw-rig-"))
        env = dict(os.environ, CHROMIUM=self.chromium, TMPDIR=str(self._tmp),
                   RIG_IGNORE_CERTIFICATE_ERRORS="1" if self.ignore_certificate_errors else "0")
        with open(self.workdir / "driver.log", "wb") as log:
            self._process = subprocess.Popen(
                [self.node, str(DRIVER)], cwd=HERE, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, name="rig-driver", daemon=True)
        self._reader.start()
        ready = self.wait_event("ready", page=None, timeout=timeout)
        self.browser_pid = ready.detail["browser_pid"]
        self.version = ready.detail.get("version")
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Ask the driver to close Chromium and exit; then kill whatever is left."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                self._send({"id": next(self._ids), "op": "quit"})
                process.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait(timeout)
        _kill_group(process.pid)
        if self.browser_pid is not None:
            # playwright starts Chromium in a process group of its own. A signal is
            # delivered after kill() returns: wait (bounded) until Chromium has exited.
            _kill_group_and_wait(self.browser_pid, timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> BrowserRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def driver_pid(self) -> int | None:
        return self._process.pid if self._process else None

    # requests and events

    def request(self, op: str, *, timeout: float | None = None, **args: Any) -> Any:
        """Send one request and wait (bounded) for its reply; its result, or RigError."""
        request_id = next(self._ids)
        replies: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._lock:
            if self._gone:
                raise RigError(f"the driver is gone: {self.driver_log_tail()}")
            self._replies[request_id] = replies
        self._send({"id": request_id, "op": op, **args})
        wait = self.timeout if timeout is None else timeout
        try:
            reply = replies.get(timeout=wait)
        except queue.Empty:
            raise RigError(f"{op} {args}: no reply from the driver within {wait:.0f} s") from None
        finally:
            with self._lock:
                self._replies.pop(request_id, None)
        if reply.get("gone"):
            raise RigError(f"{op} {args}: the driver exited: {self.driver_log_tail()}")
        if not reply.get("ok"):
            raise RigError(f"{op} {args}: {reply.get('error')}")
        return reply.get("result")

    def events(self, page: str | None = None, kind: str | None = None) -> list[Event]:
        with self._lock:
            return [
                e
                for e in self._events
                if (page is None or e.page == page) and (kind is None or e.kind == kind)
            ]

    def wait_event(
        self,
        kind: str,
        *,
        page: str | None,
        timeout: float = 10.0,
        where: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The first event ``kind`` of ``page`` not claimed by an earlier wait, waiting at most
        ``timeout`` seconds for it; it is claimed. RigError says what the page did instead."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for event in self._events:
                    if (
                        not event.claimed and event.kind == kind and event.page == page
                        and (where is None or where(event))
                    ):
                        event.claimed = True
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self._gone:
                    break
                self._lock.wait(left)
        if self._gone:
            raise RigError(f"page {page!r}: no {kind!r} event: the driver exited; its log ends:\n"
                           f"{self.driver_log_tail()}")
        raise RigError(
            f"page {page!r}: no {kind!r} event within {timeout:.1f} s; "
            f"it said:\n{self.describe(page)}"
        )

    def describe(self, page: str | None, last: int = 25) -> str:
        """The page's last events and console lines, for failure messages."""
        lines = []
        for event in self.events(page)[-last:]:
            if event.kind == "console":
                lines.append(f"  console.{event.detail.get('type')}: {event.detail.get('text')}")
            else:
                lines.append(f"  {event.kind} {json.dumps(event.detail)}")
        return "\n".join(lines) or "  (nothing)"

    def driver_log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / "driver.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no driver log)"
        return "\n".join(text.splitlines()[-lines:])

    def open(
        self, name: str, url: str, *, block: Sequence[str] = (), timeout: float | None = None
    ) -> Page:
        """A new tab, in a browser context of its own, at ``url``. URLs matching a ``block``
        pattern (playwright's globs: ``"**/vendor/jssip.js"``) get a 404, as if missing."""
        self.request("open", page=name, url=url, block=list(block), timeout=timeout)
        self.pages.append(name)
        return Page(self, name)

    def keep_evidence(self, directory: Path) -> list[Path]:
        """After a failure: a screenshot of every open page and the driver's log, in
        ``directory``. Best effort (the browser may be the thing that failed)."""
        directory.mkdir(parents=True, exist_ok=True)
        kept = []
        for name in self.pages:
            try:
                kept.append(Page(self, name).screenshot(directory / f"{name}.png"))
            except RigError:
                pass
        log = self.workdir / "driver.log"
        if log.is_file():
            shutil.copyfile(log, directory / "driver.log")
            kept.append(directory / "driver.log")
        return kept

    # plumbing

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None, "start() first"
        with self._send_lock:
            self._process.stdin.write(json.dumps(message).encode() + b"\n")
            self._process.stdin.flush()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                if "event" in message:
                    self._events.append(
                        Event(message["event"], message.get("page"), message.get("detail") or {})
                    )
                    self._lock.notify_all()
                elif message.get("id") in self._replies:
                    self._replies[message["id"]].put(message)
        with self._lock:
            self._gone = True
            for replies in self._replies.values():
                replies.put({"gone": True})
            self._lock.notify_all()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group_and_wait(pid: int, timeout: float) -> bool:
    """SIGKILL the group that ``pid`` leads and wait until ``pid`` has exited (a pidfd turns
    readable then; opened first, so a reused pid cannot fool it). False if it outlived
    ``timeout``."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        _kill_group(pid)
        return True
    try:
        _kill_group(pid)
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)


class Page:
    """One tab: a phone. The SIP methods call the page's ``window.phone`` (the test pages);
    the DOM methods work on any page (the phone page is driven through them)."""

    def __init__(self, rig: BrowserRig, name: str):
        self.rig = rig
        self.name = name

    def __repr__(self) -> str:
        return f"<Page {self.name}>"

    # window.phone on the test pages

    def phone(self, fn: str, *args: Any, timeout: float | None = None) -> Any:
        return self.rig.request("eval", page=self.name, fn=fn, args=list(args), timeout=timeout)

    def register(
        self,
        ws_url: str,
        uri: str,
        password: str | None = None,
        display_name: str | None = None,
        **extra: Any,
    ) -> None:
        """Connect to ``ws_url`` and register ``uri``; wait for it with :meth:`wait`."""
        self.phone("register", {"wsUrl": ws_url, "uri": uri, "password": password,
                                "displayName": display_name, **extra})

    def unregister(self) -> None:
        self.phone("unregister")

    def call(self, target: str) -> None:
        self.phone("call", target)

    def answer(self) -> None:
        self.phone("answer")

    def hangup(self) -> None:
        self.phone("hangup")

    def library(self) -> str:
        """The SIP library and its version, e.g. ``"JsSIP 3.13.8"``."""
        return str(self.rig.request("library", page=self.name))

    def inbound_bytes(self, api: str = "phone") -> int:
        """Bytes of audio received so far (getStats inbound-rtp bytesReceived)."""
        return int(self.rig.request("inbound_bytes", page=self.name, api=api))

    def wait_inbound_bytes(
        self, above: int = 0, *, timeout: float = 10.0, api: str = "phone"
    ) -> int:
        """Poll (in the driver, every 50 ms, bounded) until more than ``above`` bytes of audio
        have arrived; the count. RigError if they do not come in ``timeout`` seconds."""
        bytes_ = int(self.rig.request("wait_inbound", page=self.name, api=api, above=above,
                                      timeout_ms=timeout * 1000, timeout=timeout + 5))
        if bytes_ <= above:
            raise RigError(
                f"page {self.name!r}: {bytes_} bytes of audio after {timeout:.0f} s, wanted more "
                f"than {above}; it said:\n{self.rig.describe(self.name)}"
            )
        return bytes_

    # events

    def wait(
        self, kind: str, timeout: float = 10.0, where: Callable[[Event], bool] | None = None
    ) -> Event:
        return self.rig.wait_event(kind, page=self.name, timeout=timeout, where=where)

    def events(self, kind: str | None = None) -> list[Event]:
        return self.rig.events(self.name, kind)

    # the DOM, as a person uses it

    def fill(self, selector: str, value: str) -> None:
        self.rig.request("fill", page=self.name, selector=selector, value=value)

    def click(self, selector: str) -> None:
        self.rig.request("click", page=self.name, selector=selector)

    def text(self, selector: str) -> str:
        return str(self.rig.request("text", page=self.name, selector=selector))

    def value(self, selector: str) -> str:
        """What an input field holds."""
        return str(self.rig.request("value", page=self.name, selector=selector))

    def wait_text(self, selector: str, text: str, timeout: float = 10.0) -> str:
        """Wait (bounded) until ``selector``'s text contains ``text``; the whole text."""
        try:
            return str(self.rig.request("wait_text", page=self.name, selector=selector, text=text,
                                        timeout_ms=timeout * 1000, timeout=timeout + 5))
        except RigError as error:
            raise RigError(
                f"{error}\npage {self.name!r} said:\n{self.rig.describe(self.name)}"
            ) from None

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rig.request("screenshot", page=self.name, path=str(path))
        return path

    def close(self) -> None:
        self.rig.request("close", page=self.name)
        self.rig.pages.remove(self.name)
