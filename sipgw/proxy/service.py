"""The only wiring: config → the core, the listeners, signals. Everything else takes
arguments.

``build_core`` assembles the SIP core bottom-up (the relay before the dispatcher that
probes through it, both before the AUTH step that answers through the relay, the route
script last), each component given what it needs in its constructor; ``reconfigure_core``
hands each its new config sections on SIGHUP. ``ProxyService`` is a Twisted ``Service``:
``startService`` builds the core and opens the listeners, ``stopService`` drains and
closes them (SIGTERM). ``reload`` (SIGHUP) re-reads the config file and keeps the running
one when the new one is bad.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from sipgw.config import Config, ConfigError, LoadedConfig, load_config
from sipgw.proxy import log as sipgw_log
from sipgw.proxy.acl import Acl
from sipgw.proxy.auth import Authenticator, nonce_secret, open_subscribers
from sipgw.proxy.backends import Backend, Backends
from sipgw.proxy.control import ControlServer, start_control
from sipgw.proxy.core import Proxy
from sipgw.proxy.dialogs import Dialogs
from sipgw.proxy.dispatcher.build import build_dispatcher, reconfigure_dispatcher, resolve_uri
from sipgw.proxy.identity import Identity, Listener
from sipgw.proxy.memtrim import start_trimming
from sipgw.proxy.metrics import start_metrics
from sipgw.proxy.nat import Nat
from sipgw.proxy.pike import Pike
from sipgw.proxy.registrar import Registrar
from sipgw.proxy.relay import Relay
from sipgw.proxy.replies import Replies, SendFunction
from sipgw.proxy.router import Router
from sipgw.proxy.signing import RouteSigner, route_key
from sipgw.proxy.stats import Stats
from sipgw.proxy.trace import Tap
from sipgw.proxy.transport import Destination, FlowTable, Source, is_ip, transport_address
from sipgw.proxy.transport.stream import StreamTransport
from sipgw.proxy.transport.udp import UdpListener
from sipgw.proxy.transport.tls import ServerTls, TlsTransport
from sipgw.proxy.transport.ws import WsTransport
from sipgw.sip.nat import NatTest
from sipgw.store import SubscriberStore

log = Logger(namespace="sipgw.service")

WILDCARDS = ("0.0.0.0", "::", "")
FLOW_ONLY = frozenset({"ws", "wss"})


class ProxyService(service.Service):
    name = "sipgw"

    def __init__(self, loaded: LoadedConfig, reactor, *,
                 send: SendFunction | None = None) -> None:
        """``send``: where the core's messages go instead of the listeners (tests that
        run the service on a memory reactor)."""
        self.loaded = loaded
        self.reactor = reactor
        self._core_send = send or self.send
        self.stats = Stats()
        sipgw_log.count_dropped_lines_in(self.stats)
        self.flows = FlowTable()
        self.udp: list[UdpListener] = []
        self.ports: list = []
        self.proxy: Proxy | None = None
        self.stream: StreamTransport | None = None
        self.ws: WsTransport | None = None
        self.tls: ServerTls | None = None  # certificate for the tls and wss listeners
        self.tls_stream: TlsTransport | None = None
        self._resolved: dict[str, str] = {}
        self.control: ControlServer | None = None
        self.tap = Tap()  # the live trace's taps (sipgw trace), on while somebody listens
        self._udp_ports: list = []  # kept open while draining: answers arrive on them

    # -- start and stop -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        config = self.loaded.config
        for key in self.loaded.not_in_effect:
            log.warn("{key}: not in effect yet (set in {path})", key=key, path=self.loaded.path)
        if config.listen.tls or config.listen.wss:
            # Before any listener opens: a bad certificate is a start-up error (TlsError).
            self.tls = ServerTls(config.tls)
        self.proxy = build_core(config, clock=self.reactor, send=self._core_send, stats=self.stats,
                                flows=self.flows, tap=self.tap,
                                store=open_subscribers(config, self.reactor))
        self.stream = StreamTransport(
            self.reactor,
            self.reactor,
            self.flows,
            self.proxy.receive,
            limits=self.proxy.limits,
            settings=config.limits,
            stats=self.stats,
            on_send_failed=self._send_failed,
            refuse=self.proxy.refuse,
            on_closed=self.proxy.registrar.flow_closed,
            screen=self.proxy.screen,
        )
        for addr in config.listen.udp:
            lst = UdpListener(addr.host, addr.port, self.proxy.receive)
            port = self.reactor.listenUDP(addr.port, lst, interface=addr.host,
                                          maxPacketSize=65535)
            self.ports.append(port)
            self._udp_ports.append(port)
            self.udp.append(lst)
        self.proxy.dispatcher.start()  # probes, now that there is a socket to send them
        self.proxy.pike.start()
        for addr in config.listen.tcp:
            self.ports.append(self.stream.listen(addr.host, addr.port))
            log.info("listening on {a}", a=transport_address("tcp", addr.host, addr.port))
        if config.listen.tls:
            self.tls_stream = TlsTransport(
                self.reactor, self.reactor, self.flows, self.proxy.receive,
                limits=self.proxy.limits, settings=config.limits, stats=self.stats,
                on_send_failed=self._send_failed, refuse=self.proxy.refuse,
                on_closed=self.proxy.registrar.flow_closed,
                caps=self.stream.caps,  # the caps count TCP and TLS together
                screen=self.proxy.screen,
            )
            for addr in config.listen.tls:
                self.ports.append(self.tls_stream.listen_tls(addr.host, addr.port, self.tls))
        if config.listen.ws or config.listen.wss:
            self.ws = WsTransport(self.reactor, self.reactor, self.flows, self.proxy.receive,
                                  self.stats, config.websocket, config.limits,
                                  on_closed=self.proxy.registrar.flow_closed,
                                  users_of=self.proxy.registrar.users_on,
                                  flows_of=self.proxy.registrar.flows_of,
                                  screen=self.proxy.screen)
            for addr in config.listen.ws:
                self.ports.append(self.ws.listen(addr.host, addr.port))
            for addr in config.listen.wss:
                self.ports.append(self.ws.listen(addr.host, addr.port, tls=self.tls))
        log.info("relaying to {uri}", uri=self.proxy.backends.backend.uri)
        self.control = start_control(self)
        self.metrics_port = start_metrics(self)
        self._trimmer = start_trimming(self.reactor)

    def stopService(self):
        """SIGTERM: drain, then close. Twisted waits for the Deferred before exiting."""
        super().stopService()
        d = self._drain()
        d.addCallback(lambda _: self._close())
        return d

    def _drain(self) -> defer.Deferred:
        """Stop accepting (new connections refused, new requests 503) and give requests
        already received ``proxy.drain_timeout`` seconds to get their final answer.

        Datagram sockets stay open meanwhile: the answers arrive on them.
        """
        proxy = self.proxy
        if proxy is None or proxy.pending_requests() == 0:
            return defer.succeed(None)
        proxy.router.drain()
        stream_ports = [p for p in self.ports if p not in self._udp_ports]
        for port in stream_ports:
            defer.maybeDeferred(port.stopListening)
        self.ports = [p for p in self.ports if p not in stream_ports]
        deadline = self.reactor.seconds() + self.loaded.config.proxy.drain_timeout
        log.info("draining {n} request(s) before stopping", n=proxy.pending_requests())
        done: defer.Deferred = defer.Deferred()

        def poll() -> None:
            left = proxy.pending_requests()
            if left == 0 or self.reactor.seconds() >= deadline:
                if left:
                    log.warn("stopping with {n} request(s) unanswered", n=left)
                done.callback(None)
            else:
                self.reactor.callLater(0.05, poll)

        poll()
        return done

    def _close(self):
        trimmer, self._trimmer = getattr(self, "_trimmer", None), None
        if trimmer is not None and trimmer.running:
            trimmer.stop()
        control, self.control = self.control, None
        if control is not None:
            control.stop()
        metrics, self.metrics_port = getattr(self, "metrics_port", None), None
        if metrics is not None:
            metrics.stopListening()
        if self.proxy is not None and self.proxy.dispatcher is not None:
            self.proxy.dispatcher.stop()
        if self.proxy is not None and self.proxy.pike is not None:
            self.proxy.pike.stop()
        if self.stream is not None:
            self.stream.close_all()
        if self.ws is not None:
            self.ws.close_all()
        if self.tls_stream is not None:
            self.tls_stream.close_all()
        if self.proxy is not None and self.proxy.auth is not None:
            self.proxy.auth.store.close()
        ports, self.ports = self.ports, []
        self.udp = []
        return defer.DeferredList(
            [defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True
        )

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    # -- building the proxy from a config -----------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the file again; a bad file changes nothing."""
        path = self.loaded.path
        if path is None:
            log.info("reload: running on the embedded default config; nothing to read")
            return
        try:
            new = load_config(path)
            backend = _backend(new.config)
        except (ConfigError, ValueError) as e:
            log.error("reload refused, keeping the running config: {err}", err=e)
            return
        old = self.loaded.config
        if new.config.listen != old.listen:
            log.warn("reload: listen changes need a restart; listeners kept as they are")
        if new.config.subscribers != old.subscribers:
            log.warn("reload: [subscribers] changes need a restart; the running subscriber "
                     "store is kept")
        if new.config.proxy.route_secret != old.proxy.route_secret:
            log.warn("reload: proxy.route_secret changes need a restart; Record-Routes "
                     "are still signed with the running key")
        if new.config.auth.nonce_secret != old.auth.nonce_secret:
            log.warn("reload: auth.nonce_secret changes need a restart; nonces are still "
                     "signed with the running secret")
        self.loaded = new
        assert self.proxy is not None
        reconfigure_core(self.proxy, new.config, backend)
        sipgw_log.set_level(new.config.log.level)
        if self.ws is not None:
            self.ws.reconfigure(new.config.websocket, new.config.limits)
        for stream in (self.stream, self.tls_stream):
            if stream is not None:
                # New connections frame with the new sizes.
                stream.reconfigure(new.config.limits, self.proxy.limits)
        if self.tls is not None:
            # New connections get the re-read certificate; live ones keep theirs.
            self.tls.reload(new.config.tls)
        for key in new.not_in_effect:
            log.warn("{key}: not in effect yet", key=key)
        log.info("reloaded {path}", path=path)

    # -- sending ------------------------------------------------------------------------

    def send(self, data: bytes, dest: Destination) -> None:
        trace = self.tap.outbound
        if trace is not None:
            trace(data, dest)
        if dest.transport in FLOW_ONLY:
            # A browser cannot be connected to: its flow, or the flow from that address.
            flow = self.flows.get(dest.flow_id) or self.flows.find(dest.transport, dest.host,
                                                                   dest.port)
            if flow is None:
                self._send_failed(dest.host, dest.port, dest.transport)
            else:
                flow.send(data)
            return
        host = dest.host
        if not is_ip(host):
            ip = self._resolved.get(host)
            if ip is None:
                self._resolve_then_send(data, dest)
                return
            host = ip
        if dest.transport == "udp":
            lst = self._udp_for(host)
            if lst is None or not lst.send(data, host, dest.port):
                self._send_failed(host, dest.port, "udp")
        elif dest.transport == "tcp" and self.stream is not None:
            self.stream.send(data, host, dest.port, dest.flow_id)
        elif dest.transport == "tls" and self.tls_stream is not None:
            self.tls_stream.send(data, host, dest.port, dest.flow_id)
        else:
            log.warn("cannot send to {t}:{h}:{p}: transport not available",
                     t=dest.transport, h=host, p=dest.port)
            self._send_failed(host, dest.port, dest.transport)

    def _udp_for(self, host: str) -> UdpListener | None:
        v6 = ":" in host
        for lst in self.udp:
            if (":" in lst.host) == v6:
                return lst
        return self.udp[0] if self.udp else None

    def _resolve_then_send(self, data: bytes, dest: Destination) -> None:
        def ok(ip: str) -> None:
            if len(self._resolved) > 1024:
                self._resolved.clear()
            self._resolved[dest.host] = ip
            self.send(data, Destination(transport=dest.transport, host=ip, port=dest.port,
                                        flow_id=dest.flow_id))

        def failed(f) -> None:
            log.warn("cannot resolve {h}: {err}", h=dest.host, err=f.getErrorMessage())
            self._send_failed(dest.host, dest.port, dest.transport)

        self.reactor.resolve(dest.host).addCallbacks(ok, failed)

    def _send_failed(self, host: str, port: int, transport: str) -> None:
        if self.proxy is not None:
            self.proxy.relay.transport_failed(host, port, transport)
            if self.proxy.dispatcher is not None:
                self.proxy.dispatcher.transport_error(host, port)

    # for tests and tools: feed a message as if it came from a listener
    def inject(self, data: bytes, source: Source) -> None:
        assert self.proxy is not None
        self.proxy.receive(data, source)


def build_core(config: Config, *, clock, send: SendFunction, stats: Stats, flows: FlowTable,
               tap: Tap, store: SubscriberStore | None, identity: Identity | None = None,
               route_secret_key: bytes | None = None, dispatch: bool = True,
               icmp: bool = True) -> Proxy:
    """The SIP core, bottom-up, each component built with what it needs.

    ``store`` None: no AUTH step (unit tests of the relay); ``dispatch`` False: every
    request goes to the first destination, with no dispatcher (the same); ``icmp`` False:
    the dispatcher opens no sockets of its own. ``identity`` and ``route_secret_key``
    replace what the config would give (tests).
    """
    backend = _backend(config)
    if identity is None:
        identity = Identity(listeners=_listeners(config, backend.destination.host),
                            aliases=_aliases(config))
    if route_secret_key is None:
        route_secret_key = route_key(config.proxy.route_secret, config.auth.nonce_secret,
                                     config.state.directory)
    signer = RouteSigner(route_secret_key)
    replies = Replies(stats=stats, send=send, server_header=config.proxy.server_header)
    dialogs = Dialogs(clock, stats, max_dialogs=config.limits.max_dialogs)
    relay = Relay(clock=clock, stats=stats, send=send, identity=identity, signer=signer,
                  replies=replies, dialogs=dialogs, timers=config.timers, proxy=config.proxy,
                  limits=config.limits)
    dispatcher = build_dispatcher(clock, stats, relay, config, icmp=icmp) if dispatch else None
    backends = Backends(backend, dispatcher)

    def is_client(host: str, port: int) -> bool:
        """May a contact alias send us there? Anywhere but ourselves and our backends."""
        return not identity.is_us(host, port) and not backends.is_backend(
            Destination(transport="udp", host=host, port=port))

    nat = Nat(signer, flows, NatTest(config.proxy.nat_uac_test), is_client)
    registrar = Registrar(clock, identity, boot=os.urandom(3).hex(), flows=flows)
    auth = None
    if store is not None:
        auth = Authenticator(clock=clock, stats=stats, identity=identity, relay=relay,
                             replies=replies, store=store, settings=config.auth,
                             proxy=config.proxy, limits=config.limits,
                             secret=nonce_secret(config))

    def pike_exempt(host: str) -> bool:
        """Never blocked by pike: auth.trusted (as now configured) and the backends."""
        return (auth is not None and auth.trusts(host)) or backends.is_backend_host(host)

    pike = Pike(clock, stats, config.pike, exempt=pike_exempt)
    acl = Acl(stats, config.acl, now=clock.seconds,
              is_backend_host=backends.is_backend_host)
    router = Router(clock=clock, stats=stats, relay=relay, replies=replies, identity=identity,
                    signer=signer, nat=nat, registrar=registrar, backends=backends, auth=auth,
                    acl=acl, proxy=config.proxy, limits=config.limits)
    return Proxy(clock=clock, stats=stats, identity=identity, signer=signer, replies=replies, relay=relay,
                 router=router, nat=nat, registrar=registrar, backends=backends, flows=flows,
                 tap=tap, limits=config.limits, dialogs=dialogs, auth=auth, pike=pike, acl=acl)


def reconfigure_core(proxy: Proxy, config: Config, backend: Backend) -> None:
    """SIGHUP: each component of the core gets its new sections; state survives."""
    proxy.backends.configure(backend)
    proxy.identity.aliases = _aliases(config)
    proxy.identity.refresh()
    proxy.replies.configure(config.proxy.server_header)
    proxy.relay.configure(config.timers, config.proxy, config.limits)
    proxy.router.configure(config.proxy, config.limits)
    proxy.nat.configure(NatTest(config.proxy.nat_uac_test))
    if proxy.dialogs is not None:
        proxy.dialogs.configure(config.limits.max_dialogs)
    if proxy.auth is not None:
        proxy.auth.configure(config.auth, config.proxy, config.limits)
    if proxy.dispatcher is not None:
        reconfigure_dispatcher(proxy.dispatcher, config)
    if proxy.pike is not None:
        proxy.pike.configure(config.pike)
    if proxy.acl is not None:
        proxy.acl.configure(config.acl)
    proxy.configure(config.limits)


def _backend(config: Config) -> Backend:
    """The first destination: where sipgw guesses its own address from (the dispatcher
    picks the backend of each request)."""
    uri_text = config.dispatcher.destinations[0]
    return Backend(uri=uri_text, destination=resolve_uri(uri_text))


def _primary_address(toward: str) -> str:
    """The local address the kernel would use to reach ``toward`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in toward else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((toward, 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1" if family == socket.AF_INET else "::1"


def _listeners(config: Config, backend_host: str) -> list[Listener]:
    adv = config.listen.advertise
    out: list[Listener] = []
    for transport in ("udp", "tcp", "ws", "tls", "wss"):
        for addr in getattr(config.listen, transport):
            host = addr.host
            port = addr.port
            if adv is not None:
                host, port = adv.host, adv.port or addr.port
            elif host in WILDCARDS:
                host = _primary_address(backend_host)
            out.append(Listener(transport=transport, host=host, port=port))
    if not out:
        out.append(Listener(transport="udp", host=_primary_address(backend_host), port=5060))
    return out


def _aliases(config: Config) -> set[str]:
    aliases = {a.lower() for a in config.proxy.aliases}
    wildcard = any(
        addr.host in WILDCARDS
        for addr in (*config.listen.udp, *config.listen.tcp, *config.listen.ws,
                     *config.listen.tls, *config.listen.wss)
    )
    if wildcard:
        # Bound to every address: any of ours names us.
        aliases |= {"127.0.0.1", "::1", "localhost", socket.gethostname().lower()}
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                aliases.add(str(ipaddress.ip_address(info[4][0].split("%")[0])))
        except OSError:
            pass
    return aliases
