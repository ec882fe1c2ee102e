"""The route script: what happens to a request, in the order Kamailio users know.

REQINIT → retransmissions and ACK → OVERLOAD → NATDETECT → CANCEL → WITHINDLG → AUTH →
REGISTRAR → DISPATCH → RELAY (with RECORD-ROUTE). Each step is a method that either answers
the request or lets it through; ARCHITECTURE.md walks through them. A client's in-dialog
request is relayed only along a Record-Route sipgw signed for that dialog
(``sipgw.proxy.signing``), and only to a backend or a client sipgw holds.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipgw.config import LimitsConfig, ProxyConfig
from sipgw.proxy.acl import Acl
from sipgw.proxy.auth import Authenticator
from sipgw.proxy.backends import Backends
from sipgw.proxy.identity import Identity, branch_loop_part, loop_hash
from sipgw.proxy.limits import CapLog
from sipgw.proxy.nat import WEBSOCKET, FlowGone, ForgedAlias, Nat
from sipgw.proxy.overload import Overload
from sipgw.proxy.registrar import FlowFailed, Registrar
from sipgw.proxy.relay import Relay
from sipgw.proxy.replies import Replies
from sipgw.proxy.runtime.log import debugging
from sipgw.proxy.signing import PARAM as SIGNATURE
from sipgw.proxy.signing import RouteSigner
from sipgw.proxy.stats import StatDef, Stats
from sipgw.proxy.transport import Destination, Source, transport_address, uri_destination
from sipgw.sip.address import parse_name_addr
from sipgw.sip.errors import ParseError
from sipgw.sip.message import Request
from sipgw.sip.uri import SipURI
from sipgw.sip.via import parse_via

log = Logger(namespace="sipgw.router")

# Requests that may create a dialog and so get our Record-Route (RFC 3261 §16.6 step 4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
ALLOW = ("INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, PRACK, SUBSCRIBE, NOTIFY, PUBLISH, INFO, "
         "REFER, MESSAGE, UPDATE")


ROUTER_STATS = (
    StatDef(group="core", name="forbidden_relays", help="in-dialog requests from clients refused (403; an ACK dropped) because their Route was not one sipgw wrote for that dialog, or they would go neither to a backend nor to a client"),  # noqa: E501
)


class NotRelaying(Exception):
    """A client's request that would make sipgw relay where it must not; says why."""


class Router:
    def __init__(self, *, clock: IReactorTime, stats: Stats, relay: Relay, replies: Replies,
                 identity: Identity, signer: RouteSigner, nat: Nat, registrar: Registrar,
                 backends: Backends, overload: Overload,
                 auth: Authenticator | None = None, acl: Acl | None = None,
                 proxy: ProxyConfig, limits: LimitsConfig) -> None:
        self.stats = stats
        self.relay = relay
        self.replies = replies
        self.identity = identity
        self.signer = signer
        self.nat = nat
        self.registrar = registrar
        self.backends = backends
        self.dispatcher = backends.dispatcher
        self.overload = overload
        self.auth = auth
        self.acl = acl
        self.draining = False  # SIGTERM: new initial requests get 503 (``drain``)
        self.configure(proxy, limits)
        stats.declare(ROUTER_STATS)
        self.refusals = CapLog(log, clock.seconds)

    def configure(self, proxy: ProxyConfig, limits: LimitsConfig) -> None:
        self.record_route = proxy.record_route
        self.max_ruri_length = limits.max_ruri_length

    def drain(self) -> None:
        """SIGTERM: requests already here finish, new ones go to another node."""
        self.draining = True

    def on_request(self, req: Request, source: Source) -> None:
        method = req.method
        # Retransmission of a request we are already handling (§17.2.3), or the ACK of a
        # non-2xx, which belongs to our INVITE server transaction (hop by hop).
        if self.relay.absorb(req, source):
            return
        overload = self.overload
        if method == "ACK" and overload.shedding and overload.absorbs_ack(req):
            return  # the ACK of a 503 refusing a new INVITE
        ruri = self._reqinit(req, source)
        if ruri is None:
            return
        if method == "ACK":
            self._ack(req, source)
            return
        if (overload.shedding and method != "CANCEL" and req.to_tag is None
                and overload.refuses(req, source)):
            return  # OVERLOAD: a new request refused, stateless, before anything costly
        nat = self.nat
        if source.transport in WEBSOCKET or (nat.tests and not self.backends.is_backend(source)):
            nat.from_client(req, source)  # NATDETECT (browsers are always NATed)
        if method == "CANCEL":
            self._call_ended(req)
            self.relay.cancel(req, source)
            return
        if req.to_tag is not None:
            self._within_dialog(req, source)
            return
        self._initial(req, source, ruri)

    # -- REQINIT ------------------------------------------------------------------------

    def _reqinit(self, req: Request, source: Source) -> SipURI | None:
        if self.acl is not None and self.acl.denied_agent(req, source):
            return None  # a scanner: dropped without an answer, so it learns nothing
        if len(req.uri) > self.max_ruri_length:
            self.relay.cap_log.reached("limits.max_ruri_length", "{m} from {h}:{port}: "
                                       "Request-URI of {n} bytes refused with 414",
                                       m=req.method, h=source.host, port=source.port,
                                       n=len(req.uri))
            self.replies.reply(req, source, 414, "Request-URI Too Long")
            return None
        mf = req.header("max-forwards")
        if mf is not None and int(mf) == 0:
            self.replies.reply(req, source, 483, "Too Many Hops")
            return None
        try:
            ruri = req.parsed_uri()
        except ParseError:
            self.replies.reply(req, source, 400, "Bad Request-URI")
            return None
        if not isinstance(ruri, SipURI):
            self.replies.reply(req, source, 416, "Unsupported URI Scheme")
            return None
        if ruri.headers:
            # RFC 4475 §3.1.2.11: headers in a Request-URI must never become real headers,
            # nor be forwarded; refusing is the safe choice.
            self.replies.reply(req, source, 400, "Bad Request-URI: headers not allowed")
            return None
        # We support no extension a client may require of proxies (§16.3 step 5).
        required = [t for t in req.values("proxy-require") if t]
        if required and req.method != "CANCEL":
            self.replies.reply(req, source, 420, "Bad Extension",
                               [("Unsupported", ", ".join(required))])
            return None
        if self._looped(req):
            self.replies.reply(req, source, 482, "Loop Detected")
            return None
        if (
            req.method == "OPTIONS"
            and ruri.user is None
            and not req.has("route")
            and self.identity.is_us(ruri.host.strip("[]"), ruri.port)
        ):
            # A keepalive addressed to sipgw itself.
            self.replies.reply(req, source, 200, "OK", [("Allow", ALLOW),
                                                        ("Accept", "application/sdp"),
                                                        ("Supported", "path, outbound")])
            return None
        return ruri

    def _looped(self, req: Request) -> bool:
        """§16.3 step 4: our own Via with the same loop hash means the request came back."""
        vias = req.headers("via")
        if not any("z9hG4bKsg" in v for v in vias):
            return False
        mine = loop_hash(req)
        for value in vias:
            for via in parse_via(value):
                part = branch_loop_part(via.branch or "")
                if part == mine and self.identity.is_us(via.host.strip("[]"), via.port):
                    return True
        return False

    # -- ACK ----------------------------------------------------------------------------

    def _ack(self, req: Request, source: Source) -> None:
        # The ACK of a 2xx is a request of its own, routed end to end (§16.11). From a client
        # it must name a Record-Route we wrote for its dialog like any in-dialog request: an
        # ACK that matches no transaction would otherwise be relayed, unauthenticated and
        # with any body, to whatever its Request-URI names.
        client = not self._trusted(source)
        try:
            target = self._loose_route(req, require_ours=client, signed=client)
            if target is not None and not req.has("route"):  # handle_ruri_alias, as below
                target = self._client_target(req, target, client)
        except NotRelaying as refused:
            self._not_relayed(req, source, refused)
            target = None
        except (FlowGone, ParseError):
            target = None  # an ACK is never answered
        if target is None:
            self.stats.inc("core:drop_requests")
            return
        self.relay.forward_stateless(req, target)

    # -- WITHINDLG ----------------------------------------------------------------------

    def _within_dialog(self, req: Request, source: Source) -> None:
        client = not self._trusted(source)
        try:
            target = self._loose_route(req, require_ours=True, signed=client)
            if target is None:
                self.replies.reply(req, source, 404, "Not Here")
                return
            target = self._toward_client(req, source, target, client)
        except NotRelaying as refused:
            self._not_relayed(req, source, refused)
            self.replies.reply(req, source, 403, "Not relaying")
            return
        if target is None:
            return
        if req.method == "BYE":
            self._call_ended(req)
        ctx = self.relay.new_server(req, source)
        if ctx is None:
            return
        if req.method == "INVITE":
            self.relay.respond(ctx, 100, "Trying")
        self.relay.forward(ctx, req, target, inbound=source.transport, record_route=False,
                           from_backend=self._from_backend(source))

    def _call_ended(self, req: Request) -> None:
        """The dispatcher counts calls per backend (algorithm 10) until BYE or CANCEL."""
        if self.dispatcher is not None:
            self.dispatcher.call_ended(req)

    def _loose_route(self, req: Request, *, require_ours: bool = False,
                     signed: bool = False) -> Destination | None:
        """RFC 3261 §16.4 and §16.6 step 6-7: consume our Route entries, find the next hop.

        With ``require_ours``, a request that names no Route of ours is refused: we do not
        relay in-dialog requests for dialogs we never record-routed. With ``signed`` (a
        client's request), the first URI of ours must carry the MAC we wrote for this
        dialog (``sipgw.proxy.signing``), or ``NotRelaying`` is raised: anybody can write
        our address in a Route.
        """
        ours: SipURI | None = None
        try:
            ruri = req.parsed_uri()
        except ParseError:
            return None
        routes = req.values("route")
        if isinstance(ruri, SipURI) and routes and self.identity.is_us(
            ruri.host.strip("[]"), ruri.port
        ):
            # The previous hop was a strict router: the real Request-URI is the last Route.
            last = _route_uri(routes[-1])
            self._remove_last_route(req)
            req.uri = str(last)
            ours = ruri
        while True:
            first = req.values("route")[:1]
            if not first:
                break
            uri = _route_uri(first[0])
            if isinstance(uri, SipURI) and self.identity.is_us(uri.host.strip("[]"), uri.port):
                req.pop_first("route")
                ours = ours or uri
                continue
            break
        if ours is None:
            if require_ours:
                return None
        elif signed and not self.signer.dialog_ok(
                ours.param(SIGNATURE), req.call_id, (req.from_tag, req.to_tag)):
            raise NotRelaying("its Route is not one sipgw wrote for this dialog")
        remaining = req.values("route")
        if remaining:
            next_hop = _route_uri(remaining[0])
            if isinstance(next_hop, SipURI) and next_hop.param("lr") is None:
                # §16.6 step 6: a strict router next: it gets the route in the R-URI.
                req.pop_first("route")
                req.append("route", f"<{req.uri}>")
                req.uri = str(next_hop)
        else:
            next_hop = req.parsed_uri()
        if not isinstance(next_hop, SipURI):
            return None
        dest = uri_destination(next_hop)
        if self.identity.is_us(dest.host, dest.port):
            return None  # it would come straight back to us
        return dest

    def _toward_client(self, req: Request, source: Source, target: Destination,
                       client: bool = False):
        """handle_ruri_alias: the connection a client's alias names, or an answer.

        Only when no Route is left to follow (Kamailio: ``if (!isdsturiset())
        handle_ruri_alias()`` after ``loose_route()``): a request whose route set goes on
        through the backend (a record-routing registrar or B2BUA) goes there, alias and all.
        A client's request must end up at a backend or a client (``_client_target``).
        """
        try:
            if req.has("route"):
                return self._checked_target(target, client)
            return self._client_target(req, target, client)
        except ParseError as e:
            self.replies.reply(req, source, 400, e.reason)
        except FlowGone as gone:
            failed = self.registrar.failure_for(gone.transport, gone.host, gone.port)
            self.replies.reply(req, source, failed.status, failed.reason)
        return None

    def _client_target(self, req: Request, target: Destination, client: bool) -> Destination:
        """handle_ruri_alias, and for a client's request the check of where it goes."""
        try:
            aimed = self.nat.toward_client(req, target, signed_only=client)
        except ForgedAlias:
            raise NotRelaying("its Request-URI names an alias sipgw did not write") from None
        if aimed is not target:
            return aimed  # a client's flow (or address) that a signed alias names
        return self._checked_target(target, client)

    def _checked_target(self, target: Destination, client: bool) -> Destination:
        """A client may reach a backend, or another client over a flow sipgw holds, and
        nothing else: not a local service, not a host its Request-URI makes up."""
        if not client or self.backends.is_backend_address(target.host, target.port):
            return target  # the backend's address, whatever transport its URI says
        flows = self.nat.flows
        if target.reliable and flows is not None:
            flow = flows.find(target.transport, target.host, target.port)
            if flow is not None:
                return Destination(transport=target.transport, host=target.host,
                                   port=target.port, flow_id=flow.flow_id)
        where = transport_address(target.transport, target.host, target.port)
        raise NotRelaying(f"it would go to {where}, which is neither a backend nor a client")

    def _trusted(self, source: Source) -> bool:
        """Backends and ``auth.trusted`` addresses may send in-dialog requests anywhere."""
        auth = self.auth
        return self.backends.is_backend(source) or (auth is not None and auth.trusts(source.host))

    def _not_relayed(self, req: Request, source: Source, refused: NotRelaying) -> None:
        self.stats.inc("core:forbidden_relays")
        self.refusals.once(
            "not relayed", "{m} from {t}:{h}:{p} not relayed: {why}",
            m=req.method, t=source.transport, h=source.host, p=source.port, why=refused)

    @staticmethod
    def _remove_last_route(req: Request) -> None:
        values = req.values("route")
        req.remove("route")
        for v in values[:-1]:
            req.append("route", v)

    # -- initial requests: RECORD-ROUTE → DISPATCH → RELAY -------------------------------

    def _initial(self, req: Request, source: Source, ruri: SipURI) -> None:
        if self.draining:
            # SIGTERM: requests already here finish, new ones go to another node. Dialogs
            # in progress keep working (in-dialog requests do not come through here).
            self.replies.reply(req, source, 503, "Service Unavailable", [("Retry-After", "10")])
            return
        if self.backends.is_backend(source):
            # Towards a client, by our Path token, Route or Request-URI and the alias.
            # Backends are trusted: no AUTH step.
            try:
                flow = self.registrar.route_target(req)
            except FlowFailed as e:
                self.replies.reply(req, source, e.status, e.reason)
                return
            target = self._loose_route(req)
            if target is None:
                self.replies.reply(req, source, 404, "Not Found")
                return
            target = self._toward_client(req, source, target)
            if target is None:
                return
            target = flow or target
            ctx = self._start(req, source)
            if ctx is not None:
                self._relay(ctx, req, source, target)
            return
        # A client's request goes to a backend, and nowhere else: a preloaded Route
        # naming us is consumed, one naming anybody else would make us an open relay.
        if req.has("route"):
            self._loose_route(req)
            if req.has("route"):
                self.refusals.once("preloaded route", "{m} from {t}:{h}:{p}: 403 Not "
                                   "relaying: its Route {r} names another host than sipgw",
                                   m=req.method, t=source.transport, h=source.host,
                                   p=source.port, r=req.values("route")[0])
                self.replies.reply(req, source, 403, "Not relaying")
                return
        self._auth(req, source)

    def _start(self, req: Request, source: Source):
        """The server transaction, before anything slow: retransmissions are absorbed."""
        ctx = self.relay.new_server(req, source)
        if ctx is not None and req.method == "INVITE":
            self.relay.respond(ctx, 100, "Trying")  # §16.2: at once, we are stateful
        return ctx

    # -- AUTH ---------------------------------------------------------------------------

    def _auth(self, req: Request, source: Source) -> None:
        """AUTH step (``sipgw.proxy.auth``): a challenge or refusal is stateless; a request
        that goes on gets its transaction (``_start``), and may finish later (a store
        lookup) with an answer through it or with ``_registrar``."""
        auth = self.auth
        if auth is None:  # a Proxy built without a store (unit tests of the relay)
            ctx = self._start(req, source)
            if ctx is not None:
                self._registrar(ctx, req, source)
            return
        auth.check(req, source, self._start, self._registrar)

    # -- REGISTRAR ----------------------------------------------------------------------

    def _registrar(self, ctx, req: Request, source: Source) -> None:
        """REGISTRAR step: a REGISTER gets our Path to its flow (``sipgw.proxy.registrar``)."""
        if req.method == "REGISTER":
            self.registrar.on_register(req, source, self.backends.backend.destination.transport)
        self._dispatch(ctx, req, source)

    # -- DISPATCH → RELAY -----------------------------------------------------------------

    def _dispatch(self, ctx, req: Request, source: Source) -> None:
        """DISPATCH step: a backend from the dispatcher set, failing over to the next one
        when a branch fails; none usable → 503 with Retry-After."""
        dispatcher = self.dispatcher
        if dispatcher is None:
            self._relay(ctx, req, source, self.backends.backend.destination)
            return
        attempt = dispatcher.begin(req)
        if attempt is None:
            self.relay.respond(ctx, 503, "Service Unavailable",
                               [("Retry-After", str(dispatcher.settings.retry_after))])
            return

        def branch_failed(dest: Destination, status: int, local: bool) -> bool:
            target = attempt.failed(status, local)
            if target is None:
                return False
            self._relay(ctx, req, source, target.address)
            return True

        ctx.on_branch_failed = branch_failed
        self._relay(ctx, req, source, attempt.target.address)

    def _relay(self, ctx, req: Request, source: Source, target: Destination) -> None:
        if debugging() and self.backends.is_backend_host(target.host):  # the guide's grep
            log.debug("Routing to Asterisk {d}: {m} {u} from {s}", d=transport_address(target.transport, target.host, target.port), m=req.method, u=req.uri, s=transport_address(source.transport, source.host, source.port))  # noqa: E501
        self.relay.forward(
            ctx,
            req,
            target,
            inbound=source.transport,
            record_route=self.record_route and req.method in DIALOG_CREATING,
            from_backend=self._from_backend(source),
        )

    def _from_backend(self, source: Source) -> bool:
        """Only a worker asks: it writes its own address on the side facing a backend."""
        return self.identity.backend is not None and self.backends.is_backend(source)


def _route_uri(value: str):
    """The URI of one Route entry."""
    return parse_name_addr(value, what="Route header").uri
