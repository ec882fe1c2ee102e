"""REGISTRAR: registrations pass through to the backend, with a Path back to the client's flow.

RFC 3327: when the client says ``Supported: path``, the REGISTER we relay carries
``Path: <sip:TOKEN@sipgw;lr;ob>``. The backend (Asterisk with ``support_path=yes``) stores
it and puts it as a Route on every request it later sends to that contact, so the request
comes back through sipgw, and TOKEN names the flow (connection) the client registered on.
A token is ``<boot>-<flow id>``: the boot id is random per process, so a token from before
a restart never lands on an unrelated connection that happens to reuse the id.

We keep, in memory, which address-of-record holds which contacts on which flow (for
``ws.dump``, ``ws.close`` and routing). When a request arrives for a flow that is gone:
430 Flow Failed if the client registered with outbound (RFC 5626: ``reg-id`` and
``+sip.instance`` on its Contact), else 480.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipgw.proxy.identity import Identity
from sipgw.proxy.limits import CapLog
from sipgw.proxy.transport import RELIABLE, Destination, FlowTable, Source
from sipgw.sip.address import STAR, message_address_list, parse_name_addr
from sipgw.sip.errors import ParseError
from sipgw.sip.message import Request
from sipgw.sip.uri import SipURI

log = Logger(namespace="sipgw.registrar")

DEFAULT_EXPIRES = 3600
MAX_GONE = 100_000  # closed flows remembered for 430/480, at most
# Bindings remembered per flow: a PBX or a gateway may register hundreds of users over one
# connection, but not a million. Beyond it the REGISTER still goes to the backend and its
# Path still routes back; only ws.dump and ws.close by user miss the binding.
MAX_BINDINGS_PER_FLOW = 10_000


class FlowFailed(Exception):
    """A request for a client whose flow is gone; ``status`` is 430 or 480."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def flow_failed(outbound: bool) -> FlowFailed:
    # RFC 5626 §5.3: 430 tells an outbound client to register its flow again.
    if outbound:
        return FlowFailed(430, "Flow Failed")
    return FlowFailed(480, "Temporarily Unavailable")


@dataclass(slots=True, kw_only=True)
class FlowRecord:
    """The registrations made over one flow."""

    flow_id: int
    transport: str
    host: str
    port: int
    outbound: bool = False
    open: bool = True
    bindings: dict[tuple[str, str], float] = field(default_factory=dict)  # (aor, contact) → expiry


class Registrar:
    def __init__(self, clock: IReactorTime, identity: Identity, *, boot: str,
                 flows: FlowTable | None = None) -> None:
        self.clock = clock
        self.identity = identity
        self.boot = boot
        self.flows = flows
        self.records: dict[int, FlowRecord] = {}
        self.by_address: dict[tuple[str, str, int], int] = {}
        self.gone = 0  # records of closed flows still remembered
        self.cap_log = CapLog(log, clock.seconds)

    # -- REGISTER from a client ---------------------------------------------------------

    def on_register(self, req: Request, source: Source, backend_transport: str) -> None:
        """Add our Path (if the client supports it) and remember the bindings."""
        if source.flow_id is None or source.transport not in RELIABLE:
            return  # a UDP client is reached by its (aliased) Contact, not by a flow
        if _supports_path(req):
            lst = self.identity.facing(backend_transport, backend=True)
            host = f"[{lst.host}]" if ":" in lst.host else lst.host
            tparam = "" if backend_transport == "udp" else f";transport={backend_transport}"
            req.prepend("path",
                        f"<sip:{self.token(source.flow_id)}@{host}:{lst.port}{tparam};lr;ob>")
        try:
            self._remember(req, source)
        except ParseError:
            pass  # the backend will refuse what we cannot read; nothing to remember

    def token(self, flow_id: int) -> str:
        return f"{self.boot}-{flow_id}"

    def _remember(self, req: Request, source: Source) -> None:
        to = parse_name_addr(req.header("to") or "", what="To header").uri
        if not isinstance(to, SipURI):
            return
        aor = f"{to.scheme}:{to.user}@{to.host}" if to.user else f"{to.scheme}:{to.host}"
        default = _int(req.header("expires"), DEFAULT_EXPIRES)
        now = self.clock.seconds()
        record = self.records.get(source.flow_id)  # type: ignore[arg-type]
        if record is None:
            record = FlowRecord(flow_id=source.flow_id, transport=source.transport,  # type: ignore[arg-type]
                                host=source.host, port=source.port)
        for value in req.headers("contact"):
            contacts = message_address_list(req, value)
            if contacts is STAR:
                for key in [k for k in record.bindings if k[0] == aor]:
                    del record.bindings[key]
                continue
            for contact in contacts:  # type: ignore[union-attr]
                uri = contact.uri.without_param("alias") if isinstance(contact.uri, SipURI) \
                    else contact.uri
                key = (aor, str(uri))
                expires = _int(contact.param("expires"), default)
                if expires <= 0:
                    record.bindings.pop(key, None)
                    continue
                full = len(record.bindings) >= MAX_BINDINGS_PER_FLOW
                if full and key not in record.bindings:
                    self.cap_log.reached("registrar bindings per flow",
                                         "flow {id} holds {n} bindings; {aor} not remembered",
                                         id=record.flow_id, n=MAX_BINDINGS_PER_FLOW,
                                         aor=key[0])
                    continue
                record.bindings[key] = now + expires
                if contact.param("reg-id") is not None and contact.param("+sip.instance"):
                    record.outbound = True
        if record.bindings:
            self.records[record.flow_id] = record
            self.by_address[(record.transport, record.host, record.port)] = record.flow_id
        else:
            self._forget(record)

    # -- requests towards clients -------------------------------------------------------

    def route_target(self, req: Request) -> Destination | None:
        """The flow named by a Path token in our first Route, or None if there is none.

        Raises ``FlowFailed`` when the token names a flow that is gone.
        """
        first = req.values("route")[:1]
        if not first or "@" not in first[0]:
            return None
        try:
            uri = parse_name_addr(first[0]).uri
        except ParseError:
            return None
        if not isinstance(uri, SipURI) or uri.user is None or not uri.user.startswith(
                self.boot + "-"):
            return None
        if not self.identity.is_us(uri.host.strip("[]"), uri.port):
            return None
        fid = uri.user[len(self.boot) + 1:]
        record = self.records.get(int(fid)) if fid.isdigit() else None
        flow = self.flows.get(record.flow_id) if (record and self.flows is not None) else None
        if record is None:
            raise flow_failed(False)
        if flow is None or not record.open:
            raise flow_failed(record.outbound)
        return Destination(transport=record.transport, host=record.host, port=record.port,
                           flow_id=record.flow_id)

    def failure_for(self, transport: str, host: str, port: int) -> FlowFailed:
        """What a request for a closed flow from that address gets (430 with outbound)."""
        fid = self.by_address.get((transport, host, port))
        record = self.records.get(fid) if fid is not None else None
        return flow_failed(bool(record and record.outbound))

    # -- flows come and go --------------------------------------------------------------

    def flow_closed(self, flow_id: int, source: Source) -> None:
        record = self.records.get(flow_id)
        if record is None:
            return
        record.open = False
        self.gone += 1
        # Kept until its registrations would have expired, so the backend's requests in
        # the meantime get 430/480 instead of silence.
        latest = max(record.bindings.values(), default=0.0)
        delay = max(latest - self.clock.seconds(), 0.0)
        if self.gone > MAX_GONE:
            self._forget(record)
            return
        self.clock.callLater(delay, self._expire, flow_id, record)

    def _expire(self, flow_id: int, record: FlowRecord) -> None:
        if self.records.get(flow_id) is record and not record.open:
            self._forget(record)

    def _forget(self, record: FlowRecord) -> None:
        if self.records.pop(record.flow_id, None) is record and not record.open:
            self.gone -= 1
        key = (record.transport, record.host, record.port)
        if self.by_address.get(key) == record.flow_id:
            del self.by_address[key]

    # -- for ws.dump and ws.close -------------------------------------------------------

    def users_on(self, flow_id: int) -> list[str]:
        record = self.records.get(flow_id)
        if record is None:
            return []
        now = self.clock.seconds()
        return sorted({aor for (aor, _), exp in record.bindings.items() if exp > now})

    def flows_of(self, aor: str) -> list[int]:
        wanted = aor if ":" in aor else None
        out = []
        for record in self.records.values():
            for a, _ in record.bindings:
                if a == wanted or (wanted is None and a.split(":", 1)[1].split("@")[0] == aor):
                    out.append(record.flow_id)
                    break
        return sorted(out)


def _supports_path(req: Request) -> bool:
    return any(t.strip().lower() == "path" for v in req.values("supported") for t in v.split(","))


def _int(text: str | None, default: int) -> int:
    if text is None:
        return default
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else default
