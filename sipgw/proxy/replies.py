"""Replies sipgw makes itself (Kamailio's ``sl``), and where any reply goes.

RFC 3261 §18.2.2 with RFC 3581: over a connection, back down it; over UDP, to the source
address, at the port of the top Via (or the source port with ``rport``). A response that
no transaction remembers goes by its top Via.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sipgw.proxy.stats import Stats
from sipgw.proxy.transport import Destination, Source
from sipgw.sip.errors import ParseError
from sipgw.sip.message import Request, Response, make_response
from sipgw.sip.uri import parse_port

SendFunction = Callable[[bytes, Destination], None]


class Replies:
    def __init__(self, *, stats: Stats, send: SendFunction, server_header: str = "sipgw") -> None:
        self.stats = stats
        self.send = send
        self.server_header = server_header

    def configure(self, server_header: str) -> None:
        self.server_header = server_header

    def local_response(self, request: Request, status: int, reason: str,
                       extra=None) -> Response:
        tag = local_tag(request) if status > 100 else None
        headers = list(extra or ())
        if self.server_header:
            headers.append(("Server", self.server_header))
        resp = make_response(request, status, reason, to_tag=tag, extra=headers)
        self.stats.inc("sl:sent_replies")
        cls = f"sl:{status // 100}xx_replies"
        if cls in self.stats.values:
            self.stats.inc(cls)
        return resp

    def reply(self, request: Request, source: Source, status: int, reason: str,
              extra=None) -> None:
        """A stateless reply (Kamailio's ``sl_send_reply``); an ACK never gets one."""
        if request.method == "ACK":
            return
        self.send_to(request, status, reason, extra, response_destination(request, source))

    def reply_to_source(self, request: Request, source: Source, status: int,
                        reason: str) -> None:
        """Straight back to where the request came from: its Via may be what was broken."""
        dest = Destination(transport=source.transport, host=source.host, port=source.port,
                           flow_id=source.flow_id)
        self.send_to(request, status, reason, None, dest)

    def send_to(self, request: Request, status: int, reason: str, extra,
                dest: Destination) -> None:
        self.send(self.local_response(request, status, reason, extra).to_bytes(), dest)


def local_tag(request: Request) -> str:
    """The To tag of sipgw's own replies to ``request``: deterministic, so that its
    retransmissions get the same reply, and the ACK of a non-2xx one (same Via, §17.1.1.3)
    carries it back."""
    seed = f"{request.call_id}|{request.from_tag}|{request.header('via')}"
    return hashlib.blake2s(seed.encode("latin-1"), digest_size=8).hexdigest()


def response_destination(request: Request, source: Source) -> Destination:
    if source.reliable:
        return Destination(
            transport=source.transport, host=source.host, port=source.port,
            flow_id=source.flow_id,
        )
    via = request.top_via
    port = source.port if via.rport is not None else (via.port or 5060)
    return Destination(transport="udp", host=source.host, port=port)


def via_destination(response: Response) -> Destination | None:
    """Where a response goes when no transaction remembers: by its top Via."""
    try:
        via = response.top_via
        # RFC 3581 §4: rport is a port number; a reply naming anything else is dropped.
        rport = parse_port(via.rport) if via.rport else None
    except ParseError:
        return None
    transport = via.transport.lower()
    host = via.received or via.host
    if rport:
        port = rport
    else:
        port = via.port or (5061 if transport == "tls" else 5060)
    return Destination(transport=transport, host=host.strip("[]"), port=port)
