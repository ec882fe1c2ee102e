"""Talk to a sipgw on loopback over raw sockets, and start the sipgw processes of a test.

:class:`SipgwRunner` starts ``sipgw.tools.process.SipgwProcess`` instances for one test and
stops them all at its end (the ``sipgw`` fixture).

:class:`UdpPeer` and :class:`TcpPeer` are hand-driven SIP peers (a caller, a silent
backend, a fuzzer): they send bytes and collect what comes back, each read bounded by a
deadline. :func:`exchange` is the one-shot form. Nothing here sleeps to wait.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sipgw.tools.process import SipgwProcess, run_cli
from tests.integration.sipp import LOOPBACK, SippMessage


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

    @classmethod
    def adopt(cls, sock: socket.socket) -> TcpPeer:
        """A peer on a connection made otherwise: from a chosen source, or accepted."""
        peer = cls.__new__(cls)
        _Peer.__init__(peer)
        peer.remote = sock.getpeername()[:2]
        peer.socket = sock
        peer.port = sock.getsockname()[1]
        peer._buffer = b""
        peer.closed_by_peer = False
        return peer

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
