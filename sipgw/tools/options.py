"""``sipgw tools options URI``: a SIP OPTIONS ping over UDP or TCP, with its latency.

Blocking sockets, one request, the first final reply (provisional ones are skipped), all
bounded by ``timeout``. What any reply means is the caller's business: for a health check a
404 still proves a SIP stack is listening.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from sipgw.sip.uri import SipURI, parse_uri


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    status: int
    reason: str
    latency_ms: float
    server: str | None  # the Server or User-Agent header


class NoAnswer(Exception):
    """Nothing (or nothing SIP) came back in time; ``why`` says what happened."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def target_of(uri_text: str) -> tuple[str, str, int]:
    """``sip:host[:port][;transport=tcp]`` → (transport, host, port)."""
    text = uri_text if uri_text.startswith(("sip:", "sips:")) else f"sip:{uri_text}"
    uri = parse_uri(text)
    if not isinstance(uri, SipURI):
        raise ValueError(f"not a SIP URI: {uri_text}")
    # RFC 3263 without DNS SRV, as the proxy does: transport param, else UDP (TLS for sips).
    transport = (uri.transport or ("tls" if uri.scheme == "sips" else "udp")).lower()
    host = (uri.param("maddr") or uri.host).strip("[]")
    return transport, host, uri.port or (5061 if transport == "tls" else 5060)


def build_options(uri: str, transport: str, local: tuple[str, int], branch: str,
                  call_id: str) -> bytes:
    host, port = local
    shown = f"[{host}]" if ":" in host else host
    lines = [
        f"OPTIONS {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {shown}:{port};branch=z9hG4bK{branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:doctor@{shown}>;tag={branch[:10]}",
        f"To: <{uri}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        f"Contact: <sip:doctor@{shown}:{port};transport={transport}>",
        "User-Agent: sipgw-doctor",
        "Accept: application/sdp",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ping(uri_text: str, *, transport: str | None = None, timeout: float = 2.0) -> Pong:
    """Send OPTIONS to ``uri_text`` and wait for a final reply."""
    proto, host, port = target_of(uri_text)
    proto = (transport or proto).lower()
    if proto not in ("udp", "tcp"):
        raise NoAnswer(f"{proto}: only udp and tcp can be pinged")
    uri = uri_text if uri_text.startswith(("sip:", "sips:")) else f"sip:{uri_text}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    branch = os.urandom(8).hex()
    deadline = time.monotonic() + timeout
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        start = time.monotonic()
        try:
            s.connect((host, port))
            data = build_options(uri, proto, s.getsockname()[:2], branch, f"{branch}@doctor")
            s.sendall(data)
            buffer = b""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoAnswer(f"no answer within {timeout:g}s")
                s.settimeout(left)
                chunk = s.recv(65535)
                if not chunk:
                    raise NoAnswer("the connection was closed without an answer")
                buffer = chunk if proto == "udp" else buffer + chunk
                pong = _final_reply(buffer, branch, start)
                if pong is not None:
                    return pong
                if proto == "udp":
                    buffer = b""
                else:
                    buffer = _after_first_message(buffer)
        except TimeoutError:
            raise NoAnswer(f"no answer within {timeout:g}s") from None
        except ConnectionRefusedError:
            raise NoAnswer("connection refused (nothing listens there)") from None
        except OSError as e:
            raise NoAnswer(e.strerror or str(e)) from None


def _headers(head: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out.setdefault(name.strip().lower(), value.strip())
    return out


def _final_reply(data: bytes, branch: str, start: float) -> Pong | None:
    if b"\r\n\r\n" not in data:
        return None
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    first = head.split("\r\n", 1)[0].split(" ", 2)
    if len(first) < 2 or not first[0].startswith("SIP/2.0") or not first[1].isdigit():
        return None
    status = int(first[1])
    headers = _headers(head)
    if branch not in headers.get("via", "") or status < 200:
        return None
    return Pong(status=status, reason=first[2] if len(first) > 2 else "",
                latency_ms=(time.monotonic() - start) * 1000,
                server=headers.get("server") or headers.get("user-agent"))


def _after_first_message(buffer: bytes) -> bytes:
    head, sep, rest = buffer.partition(b"\r\n\r\n")
    if not sep:
        return buffer
    length = int(_headers(head.decode("latin-1")).get("content-length", "0") or 0)
    return rest[length:]
