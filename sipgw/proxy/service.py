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

import dataclasses
import ipaddress
import os
import signal
import socket
from collections.abc import Callable, Mapping

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from sipgw.config import Config, ConfigError, LoadedConfig, load_config, parse_config
from sipgw.config.kinds import Address
from sipgw.proxy.acl import Acl
from sipgw.proxy.auth import Authenticator, nonce_secret, open_subscribers
from sipgw.proxy.backends import Backend, Backends
from sipgw.proxy.control import ControlServer, start_control
from sipgw.proxy.control.metrics import start_metrics
from sipgw.proxy.core import Proxy
from sipgw.proxy.dialogs import Dialogs
from sipgw.proxy.dispatcher.build import build_dispatcher, reconfigure_dispatcher, resolve_uri
from sipgw.proxy.identity import Identity, Listener
from sipgw.proxy.load import LoadMonitor
from sipgw.proxy.nat import Nat
from sipgw.proxy.outbound import Outbound
from sipgw.proxy.overload import Overload
from sipgw.proxy.pike import Pike
from sipgw.proxy.registrar import Registrar
from sipgw.proxy.relay import Relay
from sipgw.proxy.replies import Replies, SendFunction
from sipgw.proxy.router import Router
from sipgw.proxy.runtime import log as sipgw_log
from sipgw.proxy.runtime.memtrim import start_trimming
from sipgw.proxy.runtime.notify import Notifier
from sipgw.proxy.signing import RouteSigner, service_route_key
from sipgw.proxy.stats import Stats
from sipgw.proxy.trace import Tap
from sipgw.proxy.transport import Destination, FlowTable, route_source, transport_address
from sipgw.proxy.transport.stream import StreamTransport
from sipgw.proxy.transport.tls import BackendTls, ServerTls, TlsTransport
from sipgw.proxy.transport.udp import UdpListener, listen_udp
from sipgw.proxy.transport.ws import WsTransport
from sipgw.proxy.workers.channel import WorkerChannel
from sipgw.proxy.workers.sockets import OwnSockets
from sipgw.proxy.workers.spec import WorkerSpec
from sipgw.proxy.workers.worker import WorkerLink
from sipgw.sip.nat import NatTest
from sipgw.store import SubscriberStore

log = Logger(namespace="sipgw.service")

WILDCARDS = ("0.0.0.0", "::", "")
# Seconds the connections get to close once drained: a WebSocket's closing handshake
# (autobahn drops one whose client does not answer within 1 s), a TCP flow's last bytes.
CLOSE_GRACE = 2.0


def make_service(loaded: LoadedConfig, reactor, *, send: SendFunction | None = None,
                 environ: Mapping[str, str] | None = None,
                 worker: WorkerSpec | None = None,
                 own: OwnSockets | None = None) -> ProxyService:
    """``sipgw serve`` as one Twisted service, every component built here, bottom-up.

    Its children start in this order and stop in the reverse one: the listeners, the
    load signal's tick, the dispatcher's probes, pike's sweep, the poll of the cluster's bans
    (subscribers in Redis), the control socket, metrics,
    the memory trim, and systemd's notifications (READY=1 once everything before it
    listens; STOPPING=1 first when stopping). ``send``: where the core's messages go
    instead of the listeners (tests on a memory reactor). Raises ConfigError (TLS
    certificate, subscribers.tls_ca_file) and ListFileError (dispatcher list) before
    anything listens.

    ``worker``: this process is one worker of several (``sipgw.proxy.workers``): it adopts
    the sockets the supervisor opened, writes its own address toward the backends, serves
    its control socket beside the service's, and says it is ready to the supervisor
    instead of systemd. ``own``: a single process's own sockets toward its backends
    (``own_sockets``), as a worker has; without them the public UDP socket is the one.
    """
    if worker is not None:
        loaded = _with_inherited_ports(loaded, worker)
    config = loaded.config
    stats = Stats()
    sipgw_log.count_dropped_lines_in(stats)
    flows = FlowTable(worker.index, worker.count) if worker is not None else FlowTable()
    tap = Tap()
    outbound = Outbound(reactor, flows, tap)
    if worker is not None:
        own = worker.own
    proxy = build_core(config, clock=reactor, send=send or outbound.send, stats=stats,
                       flows=flows, tap=tap, store=open_subscribers(config, reactor),
                       worker=worker, own=own)
    # A bad certificate is a start-up error (TlsError), before any listener opens.
    tls = ServerTls(config.tls) if (config.listen.tls or config.listen.wss) else None
    load = LoadMonitor(reactor, stats, on_tick=proxy.overload.on_load)
    stream = StreamTransport(
        reactor,
        reactor,
        flows,
        proxy.receive,
        limits=proxy.limits,
        settings=config.limits,
        stats=stats,
        on_send_failed=outbound.failed,
        refuse=proxy.refuse,
        on_closed=proxy.registrar.flow_closed,
        screen=proxy.screen,
        backlog=load.streams,
    )
    tls_stream = None
    if config.listen.tls:
        tls_stream = TlsTransport(
            reactor, reactor, flows, proxy.receive,
            limits=proxy.limits, settings=config.limits, stats=stats,
            on_send_failed=outbound.failed, refuse=proxy.refuse,
            on_closed=proxy.registrar.flow_closed,
            caps=stream.caps,  # the caps count TCP and TLS together
            screen=proxy.screen, backlog=load.streams,
            backend=BackendTls(config.tls, is_backend=lambda host, port:
                proxy.backends.is_backend(Destination(transport="tls", host=host, port=port))),
        )
    ws = None
    if config.listen.ws or config.listen.wss:
        ws = WsTransport(reactor, reactor, flows, proxy.receive,
                         stats, config.websocket, config.limits,
                         on_closed=proxy.registrar.flow_closed,
                         users_of=proxy.registrar.users_on,
                         flows_of=proxy.registrar.flows_of,
                         screen=proxy.screen, backlog=load.streams)
    udp = [UdpListener(addr.host, addr.port, proxy.receive) for addr in config.listen.udp]
    own_udp = None
    if own is not None:
        own_udp = UdpListener(own.backend.host, own.backend.port, proxy.receive)
    failure: list = [proxy.relay.transport_failed]
    if proxy.dispatcher is not None:
        dispatcher = proxy.dispatcher
        failure.append(lambda host, port, transport: dispatcher.transport_error(host, port))
    outbound.attach(udp=udp, streams={name: t for name, t in (("tcp", stream),
                                                              ("tls", tls_stream)) if t},
                    on_failure=failure, backend_udp=own_udp,
                    is_backend=proxy.backends.is_backend)
    listeners = Listeners(reactor, config.listen, udp=udp, stream=stream,
                          tls_stream=tls_stream, ws=ws, tls=tls, load=load,
                          worker=worker, own=own, own_udp=own_udp)
    notifier = Notifier(environ)
    root = ProxyService(loaded=loaded, reactor=reactor, stats=stats, flows=flows, tap=tap,
                        proxy=proxy, listeners=listeners, notifier=notifier)
    listeners.setServiceParent(root)
    Running("load signal", _started(load)).setServiceParent(root)
    if proxy.dispatcher is not None:
        Running("dispatcher probes", _started(proxy.dispatcher)).setServiceParent(root)
    if proxy.pike is not None:
        Running("pike", _started(proxy.pike)).setServiceParent(root)
    if proxy.auth is not None and proxy.auth.cluster is not None:
        Running("cluster bans", _started(proxy.auth.cluster)).setServiceParent(root)
    ControlSocket(root, worker.control_socket if worker else None).setServiceParent(root)
    if worker is None:
        Running("metrics", lambda: _stopper(start_metrics(root))).setServiceParent(root)
    Running("memory trim", lambda: start_trimming(reactor).stop).setServiceParent(root)
    if worker is None:
        Notify(notifier, reactor, root.status_line).setServiceParent(root)
    else:
        link = WorkerLink(root, worker, reactor)
        root.channel = link.channel
        hello = share_state(proxy, link.channel, worker)
        link.setServiceParent(root)
        Running("shared state", lambda: hello()).setServiceParent(root)
    return root


def share_state(proxy: Proxy, channel: WorkerChannel, worker: WorkerSpec) -> Callable[[], None]:
    """What must hold across workers goes over their channel (ARCHITECTURE.md, "Process
    model and where state lives"): failed authentications and bans, pike's counts and
    blocks, the dispatcher's events. Worker 0 alone probes the backends.

    Returns what the worker calls once its channel is up: it asks the others for what they
    hold (bans, blocked addresses, destination states), so a restarted worker starts
    where they are, not from nothing. Sent in chunks: an AMP value is at most 64 KiB.
    """
    parts = {"auth": proxy.auth.bans if proxy.auth else None, "pike": proxy.pike,
             "dispatcher": proxy.dispatcher}
    shared = {name: part for name, part in parts.items() if part is not None}
    if proxy.dispatcher is not None:
        proxy.dispatcher.probes = worker.index == 0
    for part in shared.values():
        for topic, handler in part.share_with(channel.publish, worker.count).items():
            channel.on(topic, handler)

    def hello(_, origin: int) -> None:
        for name, part in shared.items():
            rows = part.snapshot()
            for start in range(0, len(rows), SNAPSHOT_ROWS):
                channel.publish("state", {"for": origin, "part": name,
                                          "rows": rows[start:start + SNAPSHOT_ROWS]})

    def state(payload: dict, origin: int) -> None:
        part = shared.get(payload["part"])
        if payload["for"] == worker.index and part is not None:
            part.restore(payload["rows"], origin)

    channel.on("hello", hello)
    channel.on("state", state)
    return lambda: channel.publish("hello", {})


SNAPSHOT_ROWS = 500  # rows of a snapshot in one message (a ban's is under 100 bytes)


def _with_inherited_ports(loaded: LoadedConfig, worker: WorkerSpec) -> LoadedConfig:
    """The config with the ports the supervisor bound (a listener on port 0 got one)."""
    listen = loaded.config.listen
    bound = {kind: tuple(Address(s.host, s.port) for s in worker.public(kind))
             for kind in ("udp", "tcp", "tls", "ws", "wss")}
    if all(bound[kind] == getattr(listen, kind) for kind in bound):
        return loaded
    config = dataclasses.replace(loaded.config,
                                 listen=dataclasses.replace(listen, **bound))  # type: ignore[arg-type]
    return dataclasses.replace(loaded, config=config)


class Running(service.Service):
    """A child service from one function: ``start()`` starts it and returns what stops it
    (or None when there is nothing to stop)."""

    def __init__(self, name: str, start: Callable[[], Callable[[], object] | None]) -> None:
        self.setName(name)
        self._start = start
        self._stop: Callable[[], object] | None = None

    def startService(self) -> None:
        super().startService()
        self._stop = self._start()

    def stopService(self):
        super().stopService()
        stop, self._stop = self._stop, None
        return defer.maybeDeferred(stop) if stop is not None else None


def _started(component) -> Callable[[], Callable[[], object]]:
    """For a component with start() and stop()."""

    def start() -> Callable[[], object]:
        component.start()
        return component.stop

    return start


def _stopper(port) -> Callable[[], object] | None:
    return port.stopListening if port is not None else None


class ControlSocket(service.Service):
    """The control socket (``sipgw ctl``) of ``root``; None while stopped or when it could
    not be opened (SIP runs on without it)."""

    name = "control"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, root: ProxyService, path: str | None = None) -> None:
        self.root = root
        self.path = path  # a worker's own socket; None: control.socket
        self.server: ControlServer | None = None

    def startService(self) -> None:
        super().startService()
        self.server = start_control(self.root, self.path)

    def stopService(self):
        super().stopService()
        server, self.server = self.server, None
        if server is not None:
            server.stop()


class Notify(service.Service):
    """systemd's notify protocol: READY=1 and the watchdog once everything listens
    (STOPPING=1 and RELOADING=1 are the root's to say, when it starts doing either)."""

    name = "systemd notify"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, notifier: Notifier, reactor, status: Callable[[], str]) -> None:
        self.notifier = notifier
        self.reactor = reactor
        self.status = status

    def startService(self) -> None:
        super().startService()
        self.notifier.ready(status=self.status())
        self.notifier.start_watchdog(self.reactor)

    def stopService(self):
        super().stopService()
        self.notifier.stop_watchdog()  # fed until the end: draining may take a while


class Listeners(service.Service):
    """The sockets: opened on start (a port in use fails the start), closed on stop; the
    stream ports stop accepting first when draining."""

    name = "listeners"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, reactor, listen, *, udp: list[UdpListener], stream: StreamTransport,
                 tls_stream: TlsTransport | None, ws: WsTransport | None,
                 tls: ServerTls | None, load: LoadMonitor,
                 worker: WorkerSpec | None = None, own: OwnSockets | None = None,
                 own_udp: UdpListener | None = None) -> None:
        self.reactor = reactor
        self.worker = worker
        self.own = own
        self.own_udp = own_udp
        self.load = load
        self.listen = listen
        self.udp = udp
        self.stream = stream
        self.tls_stream = tls_stream
        self.ws = ws
        self.tls = tls
        self.udp_ports: list = []  # kept open while draining: answers arrive on them
        self.stream_ports: list = []

    def startService(self) -> None:
        super().startService()
        listen = self.listen
        for n, lst in enumerate(self.udp):
            self._listen_udp(lst, self._fd("udp", n))
        own = self.own
        if self.own_udp is not None and own is not None:
            self._listen_udp(self.own_udp, own.backend.fd)
            own_tcp = own.backend_stream
            if own_tcp is not None:
                self.stream_ports.append(self.stream.listen(own_tcp.host, own_tcp.port,
                                                            own_tcp.fd))
            own_tls = own.backend_tls
            if own_tls is not None and self.tls_stream is not None and self.tls is not None:
                self.stream_ports.append(self.tls_stream.listen_tls(
                    own_tls.host, own_tls.port, self.tls, own_tls.fd))
            # What a firewall between sipgw and its backends must let through.
            log.info("toward the backends: {a}", a=", ".join(
                transport_address(kind, s.host, s.port) for kind, s in
                (("udp", own.backend), ("tcp", own_tcp), ("tls", own_tls)) if s is not None))
        for n, addr in enumerate(listen.tcp):
            self.stream_ports.append(self.stream.listen(addr.host, addr.port, self._fd("tcp", n)))
            log.info("listening on {a}", a=transport_address("tcp", addr.host, addr.port))
        if self.tls_stream is not None and self.tls is not None:  # made together
            for n, addr in enumerate(listen.tls):
                self.stream_ports.append(self.tls_stream.listen_tls(
                    addr.host, addr.port, self.tls, self._fd("tls", n)))
        if self.ws is not None:
            for n, addr in enumerate(listen.ws):
                self.stream_ports.append(self.ws.listen(addr.host, addr.port,
                                                        fd=self._fd("ws", n)))
            for n, addr in enumerate(listen.wss):
                self.stream_ports.append(self.ws.listen(addr.host, addr.port, tls=self.tls,
                                                        fd=self._fd("wss", n)))

    def _listen_udp(self, listener: UdpListener, fd: int | None) -> None:
        port = listen_udp(self.reactor, listener, self.load.udp.observe, fd)
        sock = getattr(port, "socket", None)  # none under a test's fake reactor
        if isinstance(sock, socket.socket):
            self.load.kernel.watch(sock)
        self.udp_ports.append(port)

    def _fd(self, kind: str, n: int) -> int | None:
        """A worker's inherited socket for the ``n``th listener of ``kind``."""
        return self.worker.public(kind)[n].fd if self.worker is not None else None

    def stop_accepting(self) -> defer.Deferred:
        """Close the stream listeners: a connection attempt is refused from then on (nginx
        tries the next node). Fires once the sockets are closed."""
        ports, self.stream_ports = self.stream_ports, []
        return defer.DeferredList([defer.maybeDeferred(port.stopListening) for port in ports],
                                  consumeErrors=True)

    def close_connections(self) -> None:
        """Every connection: a WebSocket with a close frame 1001 (going away), TCP and TLS
        once what is written to them has gone. Browsers reconnect on the close."""
        for transport in (self.ws, self.stream, self.tls_stream):
            if transport is not None:
                transport.close_all()

    def stopService(self):
        super().stopService()
        self.close_connections()  # none left after a drain; some when stopped otherwise
        ports = self.udp_ports + self.stream_ports
        self.udp_ports, self.stream_ports = [], []
        return defer.DeferredList(
            [defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)


class ProxyService(service.MultiService):
    """``sipgw serve``: the core and the services around it (``make_service``)."""

    name = "sipgw"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, *, loaded: LoadedConfig, reactor, stats: Stats, flows: FlowTable,
                 tap: Tap, proxy: Proxy, listeners: Listeners, notifier: Notifier) -> None:
        super().__init__()
        self.loaded = loaded
        self.reactor = reactor
        self.stats = stats
        self.flows = flows
        self.tap = tap
        self.proxy = proxy
        self.listeners = listeners
        self.notifier = notifier
        self.worker = listeners.worker
        self.channel: WorkerChannel | None = None  # a worker's link to the others
        # What the control plane shows (core.connections, ws.dump, mod.stats).
        self.stream = listeners.stream
        self.tls_stream = listeners.tls_stream
        self.ws = listeners.ws
        self.tls = listeners.tls

    @property
    def control(self) -> ControlServer | None:
        return self.getServiceNamed("control").server

    def status_line(self) -> str:
        listen = self.loaded.config.listen
        count = sum(len(getattr(listen, t)) for t in ("udp", "tcp", "tls", "ws", "wss"))
        return f"running: {count} listeners, relaying to {self.proxy.backends.backend.uri}"

    # -- start and stop -----------------------------------------------------------------

    def startService(self) -> None:
        for key in self.loaded.not_in_effect:
            log.warn("{key}: not in effect yet (set in {path})", key=key, path=self.loaded.path)
        super().startService()
        log.info("relaying to {uri}", uri=self.proxy.backends.backend.uri)

    def stopService(self):
        """SIGTERM: drain, close the connections, then stop the children (Twisted waits
        for the Deferred)."""
        self.notifier.stopping()
        if self.running:
            d = self._drain()
            d.addCallback(lambda _: self._close_connections())
        else:
            d = defer.succeed(None)
        d.addCallback(lambda _: service.MultiService.stopService(self))
        d.addCallback(lambda _: self.proxy.auth.store.close() if self.proxy.auth else None)
        return d

    def _drain(self) -> defer.Deferred:
        """Stop accepting (new connections refused, new requests 503) and give requests
        already received ``proxy.drain_timeout`` seconds to get their final answer.

        Datagram sockets and open connections stay meanwhile: the answers arrive on the
        first and go down the second.
        """
        proxy = self.proxy
        proxy.router.drain()
        closed = self.listeners.stop_accepting()
        if proxy.pending_requests() == 0:
            return closed
        log.info("draining {n} request(s) before stopping", n=proxy.pending_requests())

        def unanswered() -> None:
            left = proxy.pending_requests()
            if left:
                log.warn("stopping with {n} request(s) unanswered", n=left)

        drained = self._until(lambda: proxy.pending_requests() == 0,
                              self.loaded.config.proxy.drain_timeout)
        return defer.gatherResults([closed, drained]).addCallback(lambda _: unanswered())

    def _close_connections(self) -> defer.Deferred:
        """Once drained, close every connection (``Listeners.close_connections``: 1001 to
        each WebSocket, so that browsers reconnect, through nginx to another node) and
        wait, up to CLOSE_GRACE, for them to be gone."""
        if not len(self.flows):
            return defer.succeed(None)
        log.info("closing {n} connection(s)", n=len(self.flows))
        self.listeners.close_connections()
        return self._until(lambda: not len(self.flows), CLOSE_GRACE)

    def _until(self, done: Callable[[], bool], timeout: float) -> defer.Deferred:
        """Fires once ``done()`` holds, or after ``timeout`` seconds (polled every 50 ms)."""
        deadline = self.reactor.seconds() + timeout
        fired: defer.Deferred = defer.Deferred()

        def poll() -> None:
            if done() or self.reactor.seconds() >= deadline:
                fired.callback(None)
            else:
                self.reactor.callLater(0.05, poll)

        poll()
        return fired

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def reload(self) -> None:
        """SIGHUP, announced to systemd (RELOADING=1, then READY=1 whatever the outcome)."""
        self.notifier.reloading()
        try:
            self._reload()
        finally:
            self.notifier.ready(status="running")

    def reload_checked(self, text: str = "") -> str:
        """A worker's reload of the config the supervisor checked (its ``text``, or "": the
        file): "" or what went wrong."""
        try:
            return self._reload(text)
        except Exception as e:  # noqa: BLE001 - told to the supervisor, which logs it
            log.failure("reload")
            return str(e)

    def _reload(self, text: str = "") -> str:
        """Read the file again (or take ``text`` as its content); a bad file changes nothing
        (and is what is returned)."""
        path = self.loaded.path
        if path is None:
            log.info("reload: running on the embedded default config; nothing to read")
            return ""
        try:
            new = parse_config(text, path) if text else load_config(path)
            if self.worker is not None:
                new = _with_inherited_ports(new, self.worker)
            backend = _backend(new.config)
        except (ConfigError, ValueError) as e:
            log.error("reload refused, keeping the running config: {err}", err=e)
            return str(e)
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
        if self.tls_stream is not None and self.tls_stream.backend is not None:
            self.tls_stream.backend.reload(new.config.tls)
        for key in new.not_in_effect:
            log.warn("{key}: not in effect yet", key=key)
        log.info("reloaded {path}", path=path)
        return ""



def build_core(config: Config, *, clock, send: SendFunction, stats: Stats, flows: FlowTable,
               tap: Tap, store: SubscriberStore | None, identity: Identity | None = None,
               route_secret_key: bytes | None = None, dispatch: bool = True,
               icmp: bool = True, worker: WorkerSpec | None = None,
               own: OwnSockets | None = None) -> Proxy:
    """The SIP core, bottom-up, each component built with what it needs.

    ``store`` None: no AUTH step (unit tests of the relay); ``dispatch`` False: every
    request goes to the first destination, with no dispatcher (the same); ``icmp`` False:
    the dispatcher opens no sockets of its own. ``identity`` and ``route_secret_key``
    replace what the config would give (tests). ``worker``: this process is a worker (its
    signing key); ``own``: its own sockets toward the backends, whose addresses it writes
    there (a worker's, or a single process's).
    """
    backend = _backend(config)
    if identity is None:
        identity = Identity(listeners=_listeners(config, backend.destination.host),
                            aliases=_aliases(config))
        if own is not None:
            toward = backend.destination.host
            identity.backend = Listener(transport="udp", port=own.backend.port,
                                        host=_advertised(config, own.backend.host, toward))
            identity.peers = tuple((_advertised(config, host, toward), port)
                                   for host, port in own.peers)
            if own.backend_stream is not None:
                identity.backend_tcp = dataclasses.replace(identity.backend, transport="tcp")
            if own.backend_tls is not None:
                identity.backend_tls = dataclasses.replace(identity.backend, transport="tls",
                                                           port=own.backend_tls.port)
            identity.refresh()
    if route_secret_key is None:
        # A worker signs with the supervisor's key, the same in every worker.
        route_secret_key = (bytes.fromhex(worker.route_key) if worker and worker.route_key
                            else service_route_key(config))
    signer = RouteSigner(route_secret_key)
    replies = Replies(stats=stats, send=send, server_header=config.proxy.server_header)
    dialogs = Dialogs(clock, stats, max_dialogs=config.limits.max_dialogs)
    relay = Relay(clock=clock, stats=stats, send=send, identity=identity, signer=signer,
                  replies=replies, dialogs=dialogs, timers=config.timers, proxy=config.proxy,
                  limits=config.limits, is_backend=lambda peer: backends.is_backend(peer))
    dispatcher = build_dispatcher(clock, stats, relay, config, icmp=icmp) if dispatch else None
    backends = Backends(backend, dispatcher, own=frozenset(
        (lst.transport, lst.port) for lst in (identity.backend_tcp, identity.backend_tls)
        if lst is not None))

    def is_client(host: str, port: int) -> bool:
        """May a contact alias send us there? Anywhere but ourselves and our backends."""
        return not identity.is_us(host, port) and not backends.is_backend_address(host, port)

    nat = Nat(signer, flows, NatTest(config.proxy.nat_uac_test), is_client)
    registrar = Registrar(clock, identity, boot=os.urandom(3).hex(), flows=flows)
    auth = None
    if store is not None:
        auth = Authenticator(clock=clock, stats=stats, identity=identity, relay=relay,
                             replies=replies, store=store, settings=config.auth,
                             proxy=config.proxy, limits=config.limits,
                             secret=nonce_secret(config, route_secret_key))

    def pike_exempt(host: str) -> bool:
        """Never blocked by pike: auth.trusted (as now configured) and the backends."""
        return (auth is not None and auth.trusts(host)) or backends.is_backend_host(host)

    pike = Pike(clock, stats, config.pike, exempt=pike_exempt)
    acl = Acl(stats, config.acl, now=clock.seconds,
              is_backend_host=backends.is_backend_host)
    overload = Overload(clock=clock, stats=stats, replies=replies, settings=config.overload,
                        exempt=backends.is_backend)
    router = Router(clock=clock, stats=stats, relay=relay, replies=replies, identity=identity,
                    signer=signer, nat=nat, registrar=registrar, backends=backends,
                    overload=overload, auth=auth, acl=acl, proxy=config.proxy,
                    limits=config.limits)
    return Proxy(clock=clock, stats=stats, identity=identity, signer=signer, replies=replies,
                 relay=relay, router=router, nat=nat, registrar=registrar, backends=backends,
                 flows=flows, tap=tap, limits=config.limits, overload=overload, dialogs=dialogs,
                 auth=auth, pike=pike, acl=acl)


def reconfigure_core(proxy: Proxy, config: Config, backend: Backend) -> None:
    """SIGHUP: each component of the core gets its new sections; state survives."""
    proxy.backends.configure(backend)
    proxy.identity.configure(_aliases(config))
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
    proxy.overload.configure(config.overload)
    proxy.configure(config.limits)


def _backend(config: Config) -> Backend:
    """The first destination: where sipgw guesses its own address from (the dispatcher
    picks the backend of each request)."""
    uri_text = config.dispatcher.destinations[0]
    return Backend(uri=uri_text, destination=resolve_uri(uri_text))


def _primary_address(toward: str) -> str:
    """The local address the kernel would use to reach ``toward``; loopback without a route."""
    return route_source(toward) or ("::1" if ":" in toward else "127.0.0.1")


def _advertised(config: Config, host: str, backend_host: str) -> str:
    """The address we write for a socket bound to ``host``."""
    if config.listen.advertise is not None:
        return config.listen.advertise.host
    return _primary_address(backend_host) if host in WILDCARDS else host


def _listeners(config: Config, backend_host: str) -> list[Listener]:
    adv = config.listen.advertise
    out: list[Listener] = []
    for transport in ("udp", "tcp", "ws", "tls", "wss"):
        for addr in getattr(config.listen, transport):
            port = adv.port or addr.port if adv is not None else addr.port
            out.append(Listener(transport=transport, port=port,
                                host=_advertised(config, addr.host, backend_host)))
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
                aliases.add(str(ipaddress.ip_address(str(info[4][0]).split("%")[0])))
        except OSError:
            pass
    return aliases
