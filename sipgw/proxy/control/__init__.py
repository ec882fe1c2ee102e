"""The control plane: JSON-RPC 2.0 over a unix stream socket, one message per line.

``ControlServer`` collects the ``@rpc`` methods of any number of owner objects (the stats,
the service, the tracer, the dispatcher...) and serves them to ``sipgw ctl`` and friends.
It also answers ``system.listMethods`` and ``system.methodHelp`` itself.

What keeps the proxy safe from its clients:

* a line that is not JSON-RPC gets an error answer, never an exception in the proxy;
* a line longer than ``MAX_LINE`` gets a parse error and the connection is closed;
* a client that does not read: its socket buffer fills, Twisted tells us
  (``pauseProducing``), we stop reading its requests and drop stream notifications for it
  (counted) until it reads again: nothing ever blocks the reactor or grows without bound;
* at most ``MAX_CLIENTS`` connections at once.
"""

from __future__ import annotations

import grp
import inspect
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from sipgw.rpc import codec
from sipgw.rpc.codec import BadCall, Call
from sipgw.rpc.registry import RpcError, RpcMethod, methods_of, rpc
from sipgw.rpc.stream import Stream

if TYPE_CHECKING:
    from twisted.internet import unix

log = Logger(namespace="sipgw.control")

MAX_LINE = 1024 * 1024
MAX_CLIENTS = 64


class ControlSocketInUse(Exception):
    """Another live process answers on the socket path: we do not steal it."""


def owners_in(*objects: object) -> list[object]:
    """Every object among ``objects`` and their attributes that declares ``@rpc`` methods.

    Capabilities that land later (dispatcher, websocket, auth, pike, tls) hang their owner
    on the service or the proxy; they are found here without any more wiring.
    """
    found: dict[int, object] = {}

    def consider(value: object) -> None:
        if id(value) in found or value is None or isinstance(value, (str, bytes, int, float)):
            return
        try:
            if methods_of(value):
                found[id(value)] = value
        except ValueError:
            pass

    for obj in objects:
        consider(obj)
        attrs = getattr(obj, "__dict__", None)
        if attrs is None:
            slots = getattr(type(obj), "__slots__", ())
            attrs = {name: getattr(obj, name, None) for name in slots}
        for value in list(attrs.values()):
            consider(value)
    return list(found.values())


class ControlServer:
    """Serves the methods of ``owners`` (objects or a callable returning them)."""

    def __init__(self, reactor, path: str, *, owners, mode: int = 0o660, group: str = "") -> None:
        self.reactor = reactor
        self.path = path
        self.mode = mode
        self.group = group
        self._owners = owners
        self.methods: dict[str, RpcMethod] = {}
        self.port = None
        self.clients: set[ControlProtocol] = set()
        self.dropped = 0  # stream notifications dropped for clients that did not read
        self.refresh()

    # -- methods ----------------------------------------------------------------------

    def refresh(self) -> None:
        owners = self._owners() if callable(self._owners) else list(self._owners)
        self.methods = methods_of(self, *[o for o in owners if not isinstance(o, ControlServer)])

    @rpc("system.listMethods", help="The names of every method this proxy serves.")
    def rpc_list_methods(self) -> list[str]:
        self.refresh()
        return sorted(self.methods)

    @rpc("system.methodHelp", help="One line of help for METHOD.")
    def rpc_method_help(self, method: str) -> str:
        self.refresh()
        found = self.methods.get(method)
        if found is None:
            raise RpcError(f"no such method: {method}")
        return found.help

    def lookup(self, name: str) -> RpcMethod | None:
        found = self.methods.get(name)
        if found is None:
            self.refresh()  # an owner may have appeared since (a reload, a late module)
            found = self.methods.get(name)
        return found

    # -- the socket -------------------------------------------------------------------

    def start(self) -> None:
        """Create the socket; ControlSocketInUse when a live proxy already holds it."""
        path = self.path
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ControlSocketInUse(f"{path} exists and is not a socket")
            if _alive(path):
                raise ControlSocketInUse(f"another process answers on {path}")
            os.unlink(path)  # left by a proxy that died
        factory = Factory.forProtocol(ControlProtocol)
        factory.server = self  # type: ignore[attr-defined]
        self.port = self.reactor.listenUNIX(path, factory, mode=self.mode, wantPID=False)
        if self.group and os.path.exists(path):
            try:
                os.chown(path, -1, grp.getgrnam(self.group).gr_gid)
            except (KeyError, OSError) as e:
                log.error("control.group {g}: cannot give the socket to it: {err}",
                          g=self.group, err=e)
        log.info("control socket {path}", path=path)

    def stop(self):
        for client in list(self.clients):
            client.transport.loseConnection()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    # -- calls ------------------------------------------------------------------------

    def dispatch(self, call: Call | BadCall, client: ControlProtocol | None) -> defer.Deferred:
        """One call → a Deferred firing with its response object (None: no answer)."""
        if isinstance(call, BadCall):
            return defer.succeed(codec.error(call.id, call.code, call.message))
        method = self.lookup(call.method)
        if method is None:
            return defer.succeed(self._answer(call, codec.error(
                call.id, codec.METHOD_NOT_FOUND, f"Method not found: {call.method}")))
        args, kwargs = (call.params, {}) if isinstance(call.params, list) else ([], call.params)
        try:
            inspect.signature(method.handler).bind(*args, **kwargs)
        except TypeError as e:
            return defer.succeed(self._answer(call, codec.error(
                call.id, codec.INVALID_PARAMS, f"Invalid params for {call.method}: {e}")))
        d = defer.maybeDeferred(method.handler, *args, **kwargs)

        def ok(value: Any):
            if isinstance(value, Stream):
                if client is None or call.is_notification:
                    value.stop()
                    return self._answer(call, codec.result(call.id, value.first))
                client.pending_streams.append(value)
                return self._answer(call, codec.result(call.id, value.first))
            return self._answer(call, codec.result(call.id, value))

        def failed(f):
            if f.check(RpcError):
                e = f.value
                return self._answer(call, codec.error(call.id, e.code, e.message))
            log.failure("RPC method {m} failed", f, m=call.method)
            return self._answer(call, codec.error(
                call.id, codec.INTERNAL_ERROR, f"Internal error: {f.getErrorMessage()}"))

        return d.addCallbacks(ok, failed)

    @staticmethod
    def _answer(call: Call, response: dict) -> dict | None:
        return None if call.is_notification else response


@implementer(IPushProducer)
class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    transport: unix.Server  # for mypy: Protocol says "ITransport | None" until connected

    def __init__(self) -> None:
        self.streams: list[Stream] = []
        self.pending_streams: list[Stream] = []
        self.paused = False
        self.gone = False

    @property
    def server(self) -> ControlServer:
        return self.factory.server

    def connectionMade(self) -> None:
        if len(self.server.clients) >= MAX_CLIENTS:
            self.write(codec.error(None, codec.INTERNAL_ERROR, "too many control clients"))
            self.transport.loseConnection()
            self.gone = True
            return
        self.server.clients.add(self)
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason=None) -> None:
        self.gone = True
        self.server.clients.discard(self)
        streams, self.streams = self.streams + self.pending_streams, []
        self.pending_streams = []
        for s in streams:
            try:
                s.stop()
            except Exception:
                log.failure("stopping a stream")

    # -- IPushProducer: the transport says when the client's buffer is full ----------

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()  # and read no more requests from it meanwhile

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.paused = True

    # -- lines ------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if not line.strip():
            return
        calls, batch = codec.decode_requests(line)
        results = [self.server.dispatch(call, self) for call in calls]
        if batch:
            d = defer.gatherResults(results, consumeErrors=True)
            d.addCallback(lambda answers: [a for a in answers if a is not None])
            d.addCallback(lambda answers: self.write(answers) if answers else None)
        else:
            results[0].addCallback(lambda answer: self.write(answer) if answer else None)
        for d in results:
            d.addCallback(lambda _: self._start_streams())
            d.addErrback(lambda f: log.failure("control reply", f))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.write(codec.error(None, codec.PARSE_ERROR, f"Parse error: line over {MAX_LINE} bytes"))
        self.transport.loseConnection()

    def write(self, message: Any) -> None:
        if not self.gone:
            self.transport.write(codec.encode(message))

    def _start_streams(self) -> None:
        pending, self.pending_streams = self.pending_streams, []
        for s in pending:
            if self.gone:
                s.stop()
                continue
            self.streams.append(s)
            s.start(self.emit)

    def emit(self, method: str, params: Any) -> None:
        """A stream notification; dropped while the client is not reading."""
        if self.gone:
            return
        if self.paused:
            self.server.dropped += 1
            return
        self.transport.write(codec.encode(codec.notification(method, params)))


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _tracer(service):
    """The live trace, on the service's ``Tap`` (messages in and out), and HEP export."""
    from sipgw.proxy.trace import Tracer

    proxy = service.proxy

    def local_of(dest):
        for lst in proxy.identity.listeners:
            if lst.transport == dest.transport and (":" in lst.host) == (":" in dest.host):
                return lst.host, lst.port
        return None

    tracer = Tracer(service.tap,
                    max_streams=lambda: service.loaded.config.limits.max_trace_subscribers,
                    local_of=local_of)
    from sipgw.proxy.trace.hep import start_hep

    start_hep(service, tracer)  # trace.hep: a permanent subscriber of the tracer
    return tracer


def start_control(service, path: str | None = None) -> ControlServer | None:
    """Open the control socket of ``service`` (the one call ``service.py`` makes), with
    the owners only the control plane has: core/cfg (``Admin``), ``log.level``, ``mod.stats``,
    the tracer.

    Owners are found on the service, the proxy and its relay and router each time a method
    is looked up, so a capability that hangs its owner there is served without more wiring.
    A socket that cannot be created is logged and the proxy runs on without it.
    """
    from sipgw.proxy.control.admin import Admin
    from sipgw.proxy.control.modstats import ModStats
    from sipgw.proxy.runtime.log import LogControl
    from sipgw.rpc.client import server_socket_path

    config = service.loaded.config
    fixed = [Admin(service), LogControl(), ModStats(service), _tracer(service)]

    def owners() -> list[object]:
        proxy = getattr(service, "proxy", None)
        places = [service, *getattr(service, "rpc_owners", ())]
        if proxy is not None:
            places += [proxy, getattr(proxy, "relay", None), getattr(proxy, "router", None)]
        return fixed + owners_in(*[p for p in places if p is not None])

    path = path or server_socket_path(config.control.socket, config.state.directory)
    server = ControlServer(service.reactor, path, owners=owners, mode=config.control.mode,
                           group=config.control.group)
    try:
        server.start()
    except ControlSocketInUse as e:
        log.error("control socket not opened: {why}; sipgw ctl will not reach this proxy",
                  why=e)
        return None
    except Exception as e:  # CannotListenError, OSError: a bad path must not stop SIP
        log.error("control socket {path} not opened: {why}", path=path, why=e)
        return None
    return server
