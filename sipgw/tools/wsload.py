"""WebSocket load client for capacity tests: N concurrent SIP-over-WebSocket connections.

Each connection does what a browser's SIP client does: the RFC 6455 handshake with the
``sip`` subprotocol, a REGISTER (answered challenges with digest, RFC 2617/7616 MD5 or
SHA-256), then it stays open, answering sipgw's pings, until the run ends. At most
``concurrency`` connections are connecting or registering at once (100 is what a busy
contact center's shift start looks like). The report gives registrations per second,
failures by reason, and this client's own CPU time, so a client-bound number is not
mistaken for the proxy's.

    python -m sipgw.tools.wsload ws://127.0.0.1:8080 -n 1000 -c 100 --hold 5 \\
        --user 5{:04d} --password secret --domain example.com

With ``reconnect`` (a :class:`Backoff`), a :class:`Fleet` behaves as JsSIP does when its
WebSocket closes: it connects again after JsSIP's back-off and registers again, with the
same Call-ID, Contact and ``+sip.instance``, so the registrar updates the binding (and its
Path) in place. A call to a phone rings it (180) and is refused busy (486): a load client
answers with no media.

Runs on asyncio with a small hand-written client (no per-connection framework objects),
so one process can hold tens of thousands of connections.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import random
import resource
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sipgw.sip.digest import ha1, parse_challenge, response
from sipgw.wire import websocket as ws


@dataclass(slots=True, kw_only=True)
class LoadResult:
    attempted: int
    registered: int
    failures: dict[str, int]
    seconds: float  # from the first connect to the last registration
    cpu_seconds: float  # this client's user + system CPU during the run
    held: int  # connections still open at the end of the hold

    @property
    def rate(self) -> float:
        return self.registered / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> str:
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures.items())) or "none"
        return (f"{self.registered}/{self.attempted} registered in {self.seconds:.2f} s "
                f"({self.rate:.0f} registrations/s); failures: {fails}; "
                f"held open at the end: {self.held}; "
                f"client CPU {self.cpu_seconds:.2f} s "
                f"({100 * self.cpu_seconds / max(self.seconds, 1e-9):.0f} % of one core)")


@dataclass(slots=True)
class _Account:
    user: str
    password: str
    domain: str


@dataclass(frozen=True, slots=True)
class Backoff:
    """JsSIP's connection recovery (``Transport._reconnect``, JsSIP 3.10): before the n-th
    attempt in a row, wait floor(random × 2^n + 1) seconds, held between
    ``connection_recovery_min_interval`` and ``_max_interval`` (2 and 30 by default). The
    count goes back to 0 when a WebSocket opens. So a whole fleet whose node died comes
    back together 2 s later, and only those that fail again spread out."""

    min_interval: float = 2.0
    max_interval: float = 30.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        k = math.floor(rand() * 2 ** min(attempt, 30) + 1)
        return float(min(max(k, self.min_interval), self.max_interval))


@dataclass(slots=True)
class _Phone:
    """One account's SIP client across its connections, as a JsSIP UA keeps it: the same
    Call-ID, From tag, Contact and instance on every REGISTER, the CSeq counting on."""

    account: _Account
    index: int
    expires: int
    call_id: str = ""
    tag: str = field(default_factory=lambda: os.urandom(4).hex())
    contact_host: str = field(default_factory=lambda: f"{os.urandom(6).hex()}.invalid")
    instance: str = field(default_factory=lambda: str(uuid.uuid4()))
    cseq: int = 0
    attempts: int = 0  # connection attempts in a row since a WebSocket last opened
    registered: bool = False  # its connection is open and its last REGISTER got a 200
    registered_at: float = 0.0  # time.monotonic() of the last 200
    lost_at: float = 0.0  # ... of the last connection lost while registered
    rung: int = 0  # INVITEs received

    def __post_init__(self) -> None:
        if not self.call_id:
            self.call_id = f"wsload-{os.getpid()}-{self.index}-{os.urandom(4).hex()}"


class _Client(asyncio.Protocol):
    """One connection: handshake → REGISTER (→ digest) → 200 → open until closed."""

    def __init__(self, host: str, port: int, path: str, account: _Account, index: int,
                 expires: int, done: asyncio.Future, phone: _Phone | None = None,
                 on_lost: Callable[[_Client], None] | None = None) -> None:
        self.host, self.port, self.path = host, port, path
        self.phone = phone or _Phone(account, index, expires)
        self.account = account
        self.index = index
        self.expires = expires
        self.done = done  # resolves with None (registered) or a failure reason
        self.on_lost = on_lost
        self.key = ws.new_key()
        self.buffer = b""  # the 101 until it is whole
        self.frames = ws.FrameDecoder(masked=False)
        self.upgraded = False
        self.transport: asyncio.Transport | None = None  # None until connected
        self.challenged = False  # this connection's last REGISTER carried credentials
        self.closed = False

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(ws.handshake_request(host=f"{self.host}:{self.port}", key=self.key,
                                             path=self.path))

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.phone.registered:
            self.phone.registered = False
            self.phone.lost_at = time.monotonic()
        self._finish("closed before 200")
        if self.on_lost is not None:
            self.on_lost(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None  # data comes once connected
        if not self.upgraded:
            self.buffer += data
            try:
                answer = ws.parse_response(self.buffer)
            except ws.ProtocolError:
                self._fail("handshake ?")
                return
            if answer is None:
                return
            head, data = answer
            self.buffer = b""
            if head.status != 101:
                self._fail(f"handshake {head.status}")
                return
            if not head.accepts(self.key):
                self._fail("bad Sec-WebSocket-Accept")
                return
            self.upgraded = True
            self.phone.attempts = 0
            self._register(None)
        try:
            frames = self.frames.feed(data)
        except ws.ProtocolError as e:
            self._fail(f"bad frame: {e}")
            return
        for frame in frames:
            if frame.opcode in (ws.TEXT, ws.BINARY):
                self._sip(frame.payload)
            elif frame.opcode == ws.PING:
                self.transport.write(ws.encode_frame(ws.PONG, frame.payload, mask=True))
            elif frame.opcode == ws.CLOSE:
                self.transport.close()
                return

    # -- SIP ----------------------------------------------------------------------------

    def _register(self, authorization: str | None) -> None:
        assert self.transport is not None  # sent once upgraded
        a, phone = self.account, self.phone
        phone.cseq += 1
        self.challenged = authorization is not None
        lines = [
            f"REGISTER sip:{a.domain} SIP/2.0",
            f"Via: SIP/2.0/WS {phone.contact_host};branch=z9hG4bK{os.urandom(8).hex()}",
            "Max-Forwards: 70",
            f"To: <sip:{a.user}@{a.domain}>",
            f"From: <sip:{a.user}@{a.domain}>;tag={phone.tag}",
            f"Call-ID: {phone.call_id}",
            f"CSeq: {phone.cseq} REGISTER",
            f"Contact: <sip:{a.user}@{phone.contact_host};transport=ws>;reg-id=1;"
            f'+sip.instance="<urn:uuid:{phone.instance}>";expires={self.expires}',
            f"Expires: {self.expires}",
            "Supported: path, outbound",
            "User-Agent: sipgw-wsload",
        ]
        if authorization:
            lines.append(authorization)
        lines.append("Content-Length: 0")
        message = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.transport.write(ws.encode_frame(ws.TEXT, message, mask=True))

    def _sip(self, payload: bytes) -> None:
        head = payload.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if parts[0] != "SIP/2.0" or len(parts) < 2:
            if parts[0] == "INVITE":
                self._ring(lines[1:])
            return  # another request for us (OPTIONS, NOTIFY, ACK...): ignored
        status = int(parts[1])
        if status < 200:
            return
        if status == 200:
            self.phone.registered = True
            self.phone.registered_at = time.monotonic()
            self._finish(None)
        elif status in (401, 407) and not self.challenged:
            name = "www-authenticate" if status == 401 else "proxy-authenticate"
            challenge = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                              if ln.split(":", 1)[0].strip().lower() == name), None)
            if challenge is None:
                self._fail(f"{status} without a challenge")
                return
            header = "Authorization" if status == 401 else "Proxy-Authorization"
            self._register(f"{header}: {self._digest(challenge)}")
        else:
            self._fail(f"REGISTER {status}")

    def _digest(self, value: str) -> str:
        a = self.account
        c = parse_challenge(value).params
        realm, nonce = c["realm"].strip('"'), c["nonce"].strip('"')
        algorithm = c.get("algorithm", "MD5")
        uri = f"sip:{a.domain}"
        qop = "auth" if "auth" in c.get("qop", "").strip('"').split(",") else None
        nc, cnonce = ("00000001", os.urandom(8).hex()) if qop else (None, None)
        digest = response(ha1(a.user, realm, a.password, algorithm), "REGISTER", uri, nonce,
                          nc, cnonce, qop, algorithm)
        out = (f'Digest username="{a.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
               f'response="{digest}", algorithm={algorithm}')
        if qop:
            out += f', qop={qop}, nc={nc}, cnonce="{cnonce}"'
        if "opaque" in c:
            out += f", opaque={c['opaque']}"
        return out

    def _ring(self, headers: list[str]) -> None:
        """180 then 486 to an INVITE: it reached this phone, which is busy."""
        assert self.transport is not None
        self.phone.rung += 1
        copied = [ln for ln in headers if ln.split(":", 1)[0].strip().lower() in
                  ("via", "v", "from", "f", "call-id", "i", "cseq", "record-route")]
        to = next((ln for ln in headers if ln.split(":", 1)[0].strip().lower() in ("to", "t")),
                  "To: <sip:unknown>")
        to += f";tag={self.phone.tag}"
        for status in ("180 Ringing", "486 Busy Here"):
            reply = "\r\n".join([f"SIP/2.0 {status}", *copied, to, "Content-Length: 0"])
            self.transport.write(ws.encode_frame(ws.TEXT, (reply + "\r\n\r\n").encode(),
                                                 mask=True))

    def _fail(self, why: str) -> None:
        self._finish(why)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, outcome: str | None) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


class Fleet:
    """``count`` phones on ``url`` (``ws://`` only), account numbers from ``first`` in the
    ``user`` format. :meth:`connect` opens and registers them, ``concurrency`` at a time;
    with ``reconnect``, a phone whose connection closes connects and registers again after
    that back-off, at once with every other (a browser does not queue behind others). A
    phone whose REGISTER fails (a 503 while sipgw sheds load, a timeout) closes its
    connection and so starts again, as an application does that restarts its UA on
    ``registrationFailed``: JsSIP alone would stay connected and unregistered.
    Counters are plain attributes, safe to read from another thread (:class:`InThread`)."""

    def __init__(self, url: str, *, count: int, concurrency: int = 100, user: str = "{:d}",
                 password: str = "", domain: str | None = None, first: int = 1,
                 expires: int = 600, timeout: float = 10.0,
                 reconnect: Backoff | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError("only ws:// URLs (put nginx or stunnel in front for wss)")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        domain = domain or self.host
        self.concurrency, self.timeout, self.reconnect = concurrency, timeout, reconnect
        self.phones = [_Phone(_Account(user.format(first + i), password, domain), i, expires)
                       for i in range(count)]
        self.clients: dict[int, _Client] = {}  # a phone's index → its latest connection
        self.failures: collections.Counter[str] = collections.Counter()  # after the start
        self.closing = False
        self._timers: dict[int, asyncio.TimerHandle] = {}  # a phone's index → its next try

    def registered(self) -> int:
        """Phones whose connection is open and whose last REGISTER got its 200, now."""
        return sum(p.registered for p in self.phones)

    def held(self) -> int:
        return sum(not c.closed for c in self.clients.values())

    async def _open(self, phone: _Phone) -> str | None:
        """One connection through to its 200: None, or why not."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        account = phone.account
        try:
            _, client = await asyncio.wait_for(loop.create_connection(
                lambda: _Client(self.host, self.port, self.path, account, phone.index,
                                phone.expires, done, phone, self._lost),
                self.host, self.port), self.timeout)
        except (TimeoutError, OSError) as e:
            return f"connect: {type(e).__name__}"
        self.clients[phone.index] = client
        try:
            return await asyncio.wait_for(done, self.timeout)
        except TimeoutError:
            client._fail("timeout")  # closed: with ``reconnect``, it starts again
            return "timeout"

    async def connect(self) -> LoadResult:
        """Open and register every phone; what it took."""
        gate = asyncio.Semaphore(self.concurrency)
        failures: collections.Counter[str] = collections.Counter()
        stamps: list[float] = []
        cpu0 = _cpu()
        start = time.monotonic()

        async def one(phone: _Phone) -> None:
            async with gate:
                outcome = await self._open(phone)
            if outcome is None:
                stamps.append(time.monotonic())
            else:
                failures[outcome] += 1

        await asyncio.gather(*(one(phone) for phone in self.phones))
        seconds = (max(stamps) - start) if stamps else time.monotonic() - start
        return LoadResult(attempted=len(self.phones), registered=len(stamps),
                          failures=dict(failures), seconds=seconds, cpu_seconds=_cpu() - cpu0,
                          held=self.held())

    def _lost(self, client: _Client) -> None:
        if self.closing or self.reconnect is None or self.clients.get(client.index) is not client:
            return
        self._again_later(client.phone)

    def _again_later(self, phone: _Phone) -> None:
        assert self.reconnect is not None
        phone.attempts += 1
        loop = asyncio.get_running_loop()
        self._timers[phone.index] = loop.call_later(
            self.reconnect.delay(phone.attempts), lambda: loop.create_task(self._again(phone)))

    async def _again(self, phone: _Phone) -> None:
        self._timers.pop(phone.index, None)
        if self.closing:
            return
        outcome = await self._open(phone)
        if outcome is None:
            return
        self.failures[outcome] += 1
        if outcome.startswith("connect:"):  # no connection, so no connection_lost: try on
            self._again_later(phone)

    def close(self) -> None:
        """Stop reconnecting; close every connection."""
        self.closing = True
        for timer in self._timers.values():
            timer.cancel()
        for client in self.clients.values():
            if client.transport is not None:
                client.transport.close()


async def run_load(
    url: str,
    *,
    count: int,
    concurrency: int = 100,
    user: str = "{:d}",
    password: str = "",
    domain: str | None = None,
    first: int = 1,
    hold: float = 0.0,
    expires: int = 600,
    timeout: float = 10.0,
    while_held=None,
) -> LoadResult:
    """Open ``count`` connections, ``concurrency`` at a time, register each, hold them
    ``hold`` seconds, close them; ``user`` is a format for the account number.
    ``while_held`` (no arguments) is called once all are registered, before the hold."""
    fleet = Fleet(url, count=count, concurrency=concurrency, user=user, password=password,
                  domain=domain, first=first, expires=expires, timeout=timeout)
    result = await fleet.connect()
    if while_held is not None:
        while_held()
    if hold > 0:
        await asyncio.sleep(hold)
    result.held = fleet.held()
    fleet.close()
    return result


class InThread:
    """An asyncio loop in a daemon thread, for a caller that waits on other processes
    meanwhile (a test, a bench): :meth:`run` a coroutine there, :meth:`call` a function
    there; :meth:`stop` ends the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="wsload",
                                        daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, fn: Callable[[], object], timeout: float = 10.0):
        async def wrapped():
            return fn()
        return self.run(wrapped(), timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sipgw.tools.wsload",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="ws://HOST:PORT/PATH of sipgw's ws listener")
    p.add_argument("-n", "--count", type=int, default=100, help="connections to open")
    p.add_argument("-c", "--concurrency", type=int, default=100,
                   help="connections connecting/registering at once")
    p.add_argument("--user", default="{:d}", help="account name format, e.g. 5{:04d}")
    p.add_argument("--first", type=int, default=1, help="first account number")
    p.add_argument("--password", default="", help="password of every account")
    p.add_argument("--domain", default=None, help="SIP domain (default: the URL's host)")
    p.add_argument("--hold", type=float, default=0.0, help="seconds to keep them open")
    p.add_argument("--timeout", type=float, default=10.0, help="per connection, seconds")
    args = p.parse_args(argv)
    result = asyncio.run(run_load(
        args.url, count=args.count, concurrency=args.concurrency, user=args.user,
        password=args.password, domain=args.domain, first=args.first, hold=args.hold,
        timeout=args.timeout,
    ))  # fmt: skip
    print(result.report())
    return 0 if result.registered == result.attempted else 1


if __name__ == "__main__":
    sys.exit(main())
