"""The usual SIP WebSocket connection, without autobahn's general machinery.

autobahn's server protocol serves every WebSocket application. Per connection it copies
some forty options from its factory through ``hasattr`` (each a caught AttributeError),
parses the handshake again after ``check_handshake`` did, answers it through a Deferred,
and passes every message through five layers of frame and message callbacks, each building
debug-log arguments, before firing an event nobody listens to. That was about a third of
sipgw's CPU per WebSocket registration (bench/wscore.py).

For what browsers and phones send, ``FastPaths`` does the same work directly:

* a connection starts with the factory's options copied in one dict update;
* an opening handshake that autobahn would accept as it stands (HTTP/1.1, one well-formed
  key, host, version and origin, ``sip`` offered exactly once, no fragment) gets the 101
  autobahn writes, byte for byte;
* a whole data frame (FIN, masked, no RSV bits, within the size limits) outside a
  fragmented message, and valid UTF-8 when it is text, goes straight to ``onMessage``;
* a message sent is one unmasked frame, as autobahn's ``sendMessage`` writes it;
* the 101 and the messages go to the socket at once when nothing waits (``write_now``).

Anything else is left to autobahn as it is, so its answers to a strange handshake or a bad
frame (400, 1002, 1007, 1009) stay its own; tests/proxy/transport/ws/test_wsfast.py holds both
paths to the same results.
"""

from __future__ import annotations

import re
from collections import deque
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib import parse

import txaio
from autobahn.twisted.util import create_transport_details
from autobahn.wamp.types import TransportDetails
from autobahn.websocket import protocol as _ab
from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol, WebSocketServerProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.tcp import Server as _TcpServer

from sipgw.wire.websocket import ProtocolError, accept_key, apply_mask, frame_head, parse_header

OPEN = WebSocketProtocol.STATE_OPEN
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==\Z")
# Headers autobahn refuses to see twice in a handshake.
_SINGLE = frozenset({"host", "sec-websocket-version", "sec-websocket-key", "origin",
                     "sec-websocket-extensions"})

# What autobahn's _connectionMade gives every connection before its handshake.
_FRESH = {
    "_perMessageCompress": None, "trackedTimings": None,
    "state": WebSocketProtocol.STATE_CONNECTING,
    "send_state": WebSocketProtocol.SEND_STATE_GROUND, "data": b"", "triggered": False,
    "wasMaxFramePayloadSizeExceeded": False, "wasMaxMessagePayloadSizeExceeded": False,
    "closedByMe": False, "failedByMe": False, "droppedByMe": False, "wasClean": False,
    "wasNotCleanReason": None, "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False, "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False, "localCloseCode": None,
    "localCloseReason": None, "remoteCloseCode": None, "remoteCloseReason": None,
    "openHandshakeTimeoutCall": None, "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None, "autoPingPending": None, "autoPingPendingCall": None,
    "autoPingPendingSeq": 0, "autoPingPendingSent": None,
}


def protocol_options(factory) -> dict:
    """The options a server connection copies from its factory when it starts."""
    return {name: getattr(factory, name) for name in WebSocketServerProtocol.CONFIG_ATTRS}


if TYPE_CHECKING:  # what FastPaths is mixed into, so that mypy knows what it uses of it
    from autobahn.twisted.websocket import WebSocketServerProtocol as _Mixin
else:
    _Mixin = object


class FastPaths(_Mixin):
    """Mixed in before autobahn's ``WebSocketServerProtocol``; see the module's text.

    The class using it calls ``accept_handshake`` once its own checks passed, with the
    parsed request, and falls back to autobahn's ``processHandshake`` when it says no.
    """

    # For mypy: a TCP connection, and the options autobahn copies from its factory onto each
    # connection (CONFIG_ATTRS), which it sets by name.
    transport: ITCPTransport
    tcpNoDelay: bool
    openHandshakeTimeout: float
    allowedOriginsPatterns: list[Any]
    maxConnections: int
    trustXForwardedFor: int
    logOctets: bool
    logFrames: bool
    maskServerFrames: bool
    maxMessagePayloadSize: int
    autoFragmentSize: int

    # autobahn creates one per connection for its incremental check; only text messages
    # that leave the fast path need it.
    utf8validator = cached_property(lambda self: Utf8Validator())

    # -- a new connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        # autobahn's adapter connectionMade and both _connectionMade, without the
        # per-option hasattr and the debug lines.
        details = create_transport_details(self.transport, True)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        self._transport_details = details
        self.peer = details.peer
        state = self.__dict__
        state.update(self.factory.protocol_options)
        state.update(_FRESH)
        try:
            self.transport.setTcpNoDelay(self.tcpNoDelay)
        except Exception:  # noqa: BLE001 - not a TCP socket: as autobahn, carry on
            pass
        if self.trackTimings:
            self.setTrackTimings(True)
        self.trafficStats = TrafficStats()
        self.send_queue = deque()
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = self.factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout)
        self.factory.countConnections += 1

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)  # autobahn's adapter logs every read at debug first

    # -- the opening handshake ----------------------------------------------------------

    def accept_handshake(self, end: int, request) -> bool:
        """Answer the handshake in ``self.data[:end]`` (``request``: its parsed form, see
        ``ws.parse_head``) with 101 if autobahn would accept it unchanged; False, with
        nothing done, to leave it to autobahn."""
        headers = request.headers
        if (request.version != "HTTP/1.1" or "#" in request.target or not request.clean_lines
                or request.repeated & _SINGLE):
            return False
        key = headers["sec-websocket-key"]
        if not _KEY.match(key):
            return False
        host = headers["host"]
        if ":" in host and not host.endswith("]"):
            name, _, port = host.rpartition(":")
            if not (port.isascii() and port.isdigit()):
                return False
            host = name
        protocols = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        if "sip" not in protocols or len(set(protocols)) != len(protocols):
            return False
        factory = self.factory
        origin = headers.get("origin", "")
        if origin:
            try:
                triple = _ab._url_to_origin(origin)
            except ValueError:
                return False
            if not (triple == "null" and factory.allowNullOrigin) and not _ab._is_same_origin(
                    triple, "https" if factory.isSecure else "http",
                    factory.externalPort or factory.port, self.allowedOriginsPatterns):
                return False
        if self.maxConnections > 0 or self.trustXForwardedFor or self.logOctets:
            return False
        extensions = []
        if "sec-websocket-extensions" in headers:
            extensions = self._parseExtensionsHeader(headers["sec-websocket-extensions"])
            if not _none_accepted(self, extensions):
                return False
        self._open(end, request, host, protocols, origin, key, extensions)
        return True

    def _open(self, end: int, request, host: str, protocols: list, origin: str,
              key: str, extensions: list) -> None:
        # What autobahn's processHandshake and succeedHandshake leave behind.
        self.http_request_data = self.data[:end + 4]
        self.data = self.data[end + 4:]
        self.http_status_line = request.line
        self.http_headers = request.headers
        self.http_request_uri = request.target
        _, _, self.http_request_path, _, query, _ = parse.urlparse(request.target)
        self.http_request_params = parse.parse_qs(query)
        self.http_request_host = host
        self.websocket_version = 13
        self.websocket_protocols = protocols
        self.websocket_origin = origin
        self.websocket_extensions = extensions
        self._wskey = key
        self.websocket_protocol_in_use = "sip"
        self.websocket_extensions_in_use = []
        factory = self.factory
        accept = accept_key(key)
        lines = ["HTTP/1.1 101 Switching Protocols"]
        if factory.server:
            lines.append(f"Server: {factory.server}")
        lines += ["Upgrade: WebSocket", "Connection: Upgrade"]
        for name, value in factory.headers.items():
            values = [value] if isinstance(value, str) else value
            lines += [f"{name}: {v}" for v in values]
        lines += ["Sec-WebSocket-Protocol: sip", f"Sec-WebSocket-Accept: {accept}", "", ""]
        response = "\r\n".join(lines)
        self.http_response_data = response
        write_now(self.transport, response.encode())
        self.trafficStats.preopenOutgoingOctetsWireLevel += len(response)
        self.state = OPEN
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        self.inside_message = False
        self.current_frame = None  # type: ignore[assignment]  # autobahn starts it None too
        # autobahn's _onOpen reads the TLS channel binding of a WSS connection first; SIP
        # has no use for it.
        self.onOpen()
        txaio.resolve(self.is_open, None)  # type: ignore[attr-defined]  # set at txaio.use_twisted()
        if self.data:
            self.consumeData()

    # -- frames in ----------------------------------------------------------------------

    def processData(self) -> bool:
        data = self.data
        if (self.current_frame is None and not self.inside_message and self.state == OPEN
                and len(data) > 6 and (data[0] == 0x81 or data[0] == 0x82)
                and data[1] & 0x80 and not self.logFrames):
            try:
                _, _, length, start = parse_header(data) or (0, 0, 0, 0)
            except ProtocolError:  # a length not in its shortest form: autobahn's 1002
                length = start = 0
            end = start + length
            # Not empty, in the 7- or 16-bit length form (the frames test_wsfast.py holds
            # to autobahn's results), whole, and within the size limits.
            if (0 < length < 65536 and len(data) >= end
                    and not 0 < self.maxFramePayloadSize < length
                    and not 0 < self.maxMessagePayloadSize < length):
                payload = apply_mask(data[start:end], data[start - 4:start])
                binary = data[0] == 0x82
                if binary or _utf8(payload):
                    self.data = data[end:]
                    stats = self.trafficStats
                    stats.incomingOctetsWebSocketLevel += length
                    stats.incomingOctetsAppLevel += length
                    stats.incomingWebSocketFrames += 1
                    stats.incomingWebSocketMessages += 1
                    self.onMessage(payload, binary)
                    return len(self.data) > 0
        return super().processData()

    # -- frames out ---------------------------------------------------------------------

    def send_message(self, payload: bytes, binary: bool) -> None:
        """``sendMessage(payload, isBinary=binary)``, written directly when nothing
        (compression, fragmenting, queued chopped writes, frame logging) needs autobahn."""
        n = len(payload)
        if (self.state != OPEN or self._perMessageCompress is not None or self.send_queue
                or self.logFrames or self.maskServerFrames or self.trackedTimings
                or 0 < self.maxMessagePayloadSize < n or 0 < self.autoFragmentSize < n):
            self.sendMessage(payload, isBinary=binary)
            return
        stats = self.trafficStats
        stats.outgoingWebSocketMessages += 1
        stats.outgoingWebSocketFrames += 1
        stats.outgoingOctetsAppLevel += n
        stats.outgoingOctetsWebSocketLevel += n
        frame = frame_head(2 if binary else 1, n) + payload  # final, unmasked: a server's
        stats.outgoingOctetsWireLevel += len(frame)
        write_now(self.transport, frame)


def write_now(transport, data: bytes) -> None:
    """``transport.write(data)``, sent at once when nothing waits before it.

    Twisted keeps every write until the reactor's next turn finds the socket writable:
    two epoll_ctl calls and a pass through doWrite per message, for the few hundred bytes
    of a SIP message that an idle socket takes whole. A plain TCP connection with nothing
    queued sends them here instead; anything else (TLS, bytes already queued, a socket
    taking only part) goes through ``transport.write``, after what was sent, in order.
    """
    if (type(transport) is _TcpServer and transport.connected and not transport.disconnecting
            and not transport.dataBuffer and not transport._tempDataBuffer):
        try:
            sent = transport.socket.send(data)
        except OSError:  # full, or the connection failing: Twisted's write finds out
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _none_accepted(proto, extensions: list) -> bool:
    """True when autobahn would answer these extension offers by accepting none; False
    when it would accept one, or refuse a malformed permessage-deflate offer with 400."""
    offers = []
    for name, params in extensions:
        pmce = PERMESSAGE_COMPRESSION_EXTENSION.get(name)
        if pmce is not None:
            try:
                # The table's type says only "a class"; each Offer class has parse().
                offers.append(pmce["Offer"].parse(params))  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - what autobahn refuses, with its reason
                return False
    return not offers or proto.perMessageCompressionAccept(offers) is None


def _utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
