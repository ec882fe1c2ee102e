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

Runs on asyncio with a small hand-written client (no per-connection framework objects),
so one process can hold tens of thousands of connections.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import sys
import time
from dataclasses import dataclass
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


class _Client(asyncio.Protocol):
    """One connection: handshake → REGISTER (→ digest) → 200 → open until closed."""

    def __init__(self, host: str, port: int, path: str, account: _Account, index: int,
                 expires: int, done: asyncio.Future) -> None:
        self.host, self.port, self.path = host, port, path
        self.account = account
        self.index = index
        self.expires = expires
        self.done = done  # resolves with None (registered) or a failure reason
        self.key = ws.new_key()
        self.buffer = b""  # the 101 until it is whole
        self.frames = ws.FrameDecoder(masked=False)
        self.upgraded = False
        self.transport: asyncio.Transport | None = None  # None until connected
        self.cseq = 0
        self.call_id = f"wsload-{os.getpid()}-{index}-{os.urandom(4).hex()}"
        self.tag = os.urandom(4).hex()
        self.closed = False

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(ws.handshake_request(host=f"{self.host}:{self.port}", key=self.key,
                                             path=self.path))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._finish("closed before 200")

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
        a = self.account
        self.cseq += 1
        contact_host = f"{os.urandom(6).hex()}.invalid"
        lines = [
            f"REGISTER sip:{a.domain} SIP/2.0",
            f"Via: SIP/2.0/WS {contact_host};branch=z9hG4bK{os.urandom(8).hex()}",
            "Max-Forwards: 70",
            f"To: <sip:{a.user}@{a.domain}>",
            f"From: <sip:{a.user}@{a.domain}>;tag={self.tag}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{a.user}@{contact_host};transport=ws>;expires={self.expires}",
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
            return  # a request for us (OPTIONS, NOTIFY...): a load client ignores it
        status = int(parts[1])
        if status < 200:
            return
        if status == 200:
            self._finish(None)
        elif status in (401, 407) and self.cseq == 1:
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

    def _fail(self, why: str) -> None:
        self._finish(why)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, outcome: str | None) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


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
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError("only ws:// URLs (put nginx or stunnel in front for wss)")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    domain = domain or host
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    failures: collections.Counter[str] = collections.Counter()
    clients: list[_Client] = []
    stamps: list[float] = []
    cpu0 = _cpu()
    start = time.monotonic()

    async def one(i: int) -> None:
        async with gate:
            done = loop.create_future()
            account = _Account(user.format(first + i), password, domain)
            try:
                _, client = await asyncio.wait_for(loop.create_connection(
                    lambda: _Client(host, port, path, account, i, expires, done), host, port),
                    timeout)
            except (TimeoutError, OSError) as e:
                failures[f"connect: {type(e).__name__}"] += 1
                return
            clients.append(client)
            try:
                outcome = await asyncio.wait_for(done, timeout)
            except TimeoutError:
                outcome = "timeout"
            if outcome is None:
                stamps.append(time.monotonic())
            else:
                failures[outcome] += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    seconds = (max(stamps) - start) if stamps else time.monotonic() - start
    cpu = _cpu() - cpu0
    if while_held is not None:
        while_held()
    if hold > 0:
        await asyncio.sleep(hold)
    held = sum(not c.closed for c in clients)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    return LoadResult(attempted=count, registered=len(stamps), failures=dict(failures),
                      seconds=seconds, cpu_seconds=cpu, held=held)


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
