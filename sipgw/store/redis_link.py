"""How the Redis store reaches its server: directly, or the master its Sentinels name;
over TCP or TLS. ``connect`` gives the txredisapi factory ``sipgw.store.redis`` sends its
commands through; the commands, their timeouts and what a failure means are there.

Through Sentinel, each connection attempt (the first, and every reconnection after a
lost connection) asks the Sentinels which host is the master of the service, connects to
it and checks with ``ROLE`` that it is one before any lookup goes there. A failover is
followed that way: the old master dies (the connection drops) or is turned into a replica
(Sentinel then closes its clients' connections, ``CLIENT KILL TYPE normal``), and the
next attempt finds the new master. The store also drops the connection on a ``READONLY``
answer (a replica). Reconnection is immediate the first time, then backs off up to
``SENTINEL_RECONNECT_MAX_DELAY``, so sipgw follows a failover within that delay of the
Sentinels naming the new master.

txredisapi has Sentinel support (``Sentinel``, ``SentinelConnectionFactory``); sipgw uses
its factory's retry policy and its parser of ``SENTINEL MASTERS``, but not the rest:
``_SentinelEndpoint`` connects to the master without TLS and with its back-off delay as
the connect timeout; ``SentinelRedisProtocol`` sends ``ROLE`` without waiting for
``AUTH``, so that with a wrong password no connection is ever made and lookups wait
forever, the refusal only logged as an unhandled error; and ``Sentinel.discover_master``
queues a question on every Sentinel, where a disconnected one keeps it (and every later
one) until it is back. txredisapi also takes a connection lost during ``AUTH`` for a
refused password and stop reconnecting (``Protocol`` below).
"""

from __future__ import annotations

from pathlib import Path

import txredisapi
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from sipgw.config import ConfigError
from sipgw.config.redis_url import RedisUrl
from sipgw.sip.hostport import join_hostport

log = Logger(namespace="sipgw.store.redis")

RECONNECT_MAX_DELAY = 1.0  # seconds between reconnection attempts, at most
RECONNECT_FIRST_DELAY = 0.2
SENTINEL_RECONNECT_MAX_DELAY = 0.25  # the same, to a master found through Sentinel


class MasterNotFound(txredisapi.ConnectionError):
    """No Sentinel names a master of the service that it can reach."""


class Tls:
    """TLS client settings: the trusted authorities (``tls_ca_file``, or the system's),
    read once; every connection checks that the certificate names the host it dials."""

    def __init__(self, ca_file: str = "") -> None:
        self.trust = None
        if ca_file:
            try:
                pem = Path(ca_file).read_bytes()
            except OSError as e:
                raise _ca_error(f"cannot read {ca_file}: {e.strerror or e}") from None
            end = b"-----END CERTIFICATE-----"
            blocks = [b + end for b in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in b]
            try:
                certificates = [ssl.Certificate.loadPEM(b) for b in blocks]
            except Exception as e:  # noqa: BLE001 - OpenSSL's errors have no common base
                raise _ca_error(f"{ca_file}: not a PEM certificate: {e}") from None
            if not certificates:
                raise _ca_error(f"{ca_file}: no PEM certificate in it")
            self.trust = ssl.trustRootFromCertificates(certificates)

    def options(self, host: str):
        return ssl.optionsForClientTLS(host, trustRoot=self.trust)


def _ca_error(reason: str) -> ConfigError:
    return ConfigError(reason, key="subscribers.tls_ca_file")


def endpoint(clock, host: str, port: int, timeout: float, tls: Tls | None):
    plain = HostnameEndpoint(clock, host, port, timeout=timeout)
    return wrapClientTLS(tls.options(host), plain) if tls is not None else plain


class Protocol(txredisapi.RedisProtocol):
    """txredisapi's protocol, but a connection lost during ``AUTH`` (Redis dying then, a
    TLS handshake that failed) is only lost, and retried: txredisapi takes any failure of
    ``AUTH`` for a refused password and stops reconnecting for good."""

    def connectionMade(self):
        d = defer.succeed(None)
        if self.password is not None:  # asked first here; the base asks again
            d.addCallback(lambda _: self.auth(self.password, self.username))
        d.addCallback(lambda _: self.check())
        d.addCallbacks(self._checked, self._failed)
        return d

    def check(self) -> defer.Deferred:
        """Fires True when the connection may be used."""
        return defer.succeed(True)

    def _checked(self, usable: bool):
        if not usable:
            self.transport.loseConnection()
            return None
        return txredisapi.RedisProtocol.connectionMade(self)

    def _failed(self, failure):
        if failure.check(txredisapi.ConnectionError):
            return None  # lost: reconnected as any lost connection
        # Refused (a wrong password): the base's AUTH reports it and stops reconnecting.
        return txredisapi.RedisProtocol.connectionMade(self)


class MasterProtocol(Protocol):
    """A connection to the host Sentinel named: usable only once ``ROLE`` says it is the
    master (a replica answers lookups with stale data and refuses writes)."""

    def check(self) -> defer.Deferred:
        return self.role().addCallback(self._role)

    def _role(self, role) -> bool:
        if role and role[0] == "master":
            return True
        peer = self.transport.getPeer()
        log.warn("{a} is not a master (ROLE {r}): asking the Sentinels again",
                 a=join_hostport(peer.host, peer.port), r=role[0] if role else "?")
        return False


class Factory(txredisapi.RedisFactory):
    """A factory that says why it has no connection: ``refused`` when Redis refused it (a
    wrong password, a database that does not exist: txredisapi then stops reconnecting
    and only logs it), ``failure`` for why the last attempt failed (refused, no master
    known, a certificate not trusted...) until one succeeds."""

    protocol = Protocol
    initialDelay = RECONNECT_FIRST_DELAY
    maxDelay = RECONNECT_MAX_DELAY
    refused: str | None = None
    failure = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A refusal errbacks it with nobody waiting (a lazy factory): ``refused`` says it.
        self.deferred.addErrback(lambda _: None)

    def connectionError(self, why):
        self.refused = str(why).removeprefix("Redis error: ")
        super().connectionError(why)

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        ready: list = []
        protocol.whenConnected().addCallback(ready.append)
        lost = protocol.connectionLost

        def connectionLost(reason):
            if not ready:  # e.g. the TLS handshake failed
                self.failure = reason.getErrorMessage()
            return lost(reason)

        protocol.connectionLost = connectionLost
        return protocol

    def addConnection(self, conn):
        self.failure = ""
        super().addConnection(conn)


@implementer(IStreamClientEndpoint)
class Noting:
    """An endpoint whose failures the factory notes (``Factory.failure``)."""

    def __init__(self, endpoint, factory: Factory) -> None:
        self.endpoint = endpoint
        self.factory = factory

    def connect(self, protocolFactory):
        return self.endpoint.connect(protocolFactory).addErrback(self._failed)

    def _failed(self, failure):
        self.factory.failure = failure.getErrorMessage()
        return failure


class MasterFactory(Factory):
    protocol = MasterProtocol
    # txredisapi's Sentinel policy: reconnect at once the first time, since a changed
    # master is the likely reason the connection was lost.
    retryDelay = txredisapi.SentinelConnectionFactory.retryDelay
    # Then ask again often: an attempt while the Sentinels have not finished the failover
    # costs one question to each and a refused connection, and the sooner the next one,
    # the sooner sipgw finds the new master once they have.
    maxDelay = SENTINEL_RECONNECT_MAX_DELAY


class Sentinels:
    """One connection to each Sentinel, and the question asked of them."""

    def __init__(self, url: RedisUrl, *, clock, connect_timeout: float, tls: Tls | None,
                 password: str = "") -> None:
        self.url = url
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.factories: list[Factory] = []
        for host, port in url.hosts:
            factory = Factory(join_hostport(host, port), None, 1, isLazy=True,
                              password=password or None, replyTimeout=connect_timeout,
                              convertNumbers=False)
            factory.startConnecting(endpoint(clock, host, port, connect_timeout, tls))
            self.factories.append(factory)

    def master(self) -> defer.Deferred:
        """Fires with (host, port) of the master the first Sentinel to answer names, when it
        does not think it down; MasterNotFound saying what each Sentinel said otherwise."""
        service = self.url.service
        result: defer.Deferred = defer.Deferred()
        problems: list[str] = []

        def answered(masters: dict, where: str) -> None:
            state = masters.get(service)
            if state is None:
                problems.append(f"Sentinel {where} monitors no {service}")
            elif not state["is_master"] or state["is_sdown"] or state["is_odown"]:
                problems.append(f"Sentinel {where} thinks {service}'s master "
                                f"{join_hostport(state['ip'], int(state['port']))} is down "
                                f"({state['flags']})")
            elif not result.called:
                result.callback((state["ip"], int(state["port"])))

        def failed(failure, where: str) -> None:
            factory = next(f for f in self.factories if f.uuid == where)
            if factory.refused:
                why = factory.refused
            elif failure.check(defer.TimeoutError, defer.CancelledError):
                why = f"no answer within {self.connect_timeout:g} s"
            else:
                why = failure.getErrorMessage()
            problems.append(f"Sentinel {where}: {why}")

        asked = []
        for factory in self.factories:
            # Through the handler: a Sentinel not connected yet (at start) is waited for,
            # up to the connect timeout; one that refused us fails at once.
            d = factory.handler.sentinel_masters()
            d.addTimeout(self.connect_timeout, self.clock)
            d.addCallbacks(answered, failed, callbackArgs=(factory.uuid,),
                           errbackArgs=(factory.uuid,))
            asked.append(d)

        def none_named(_) -> None:
            if not result.called:
                result.errback(MasterNotFound("; ".join(problems)))

        defer.DeferredList(asked).addCallback(none_named)
        return result

    def close(self) -> defer.Deferred:
        return defer.gatherResults([f.disconnect() for f in self.factories],
                                   consumeErrors=True)


@implementer(IStreamClientEndpoint)
class MasterEndpoint:
    """Dials whichever host the Sentinels name as master at the time of the attempt."""

    def __init__(self, sentinels: Sentinels, *, clock, connect_timeout: float,
                 tls: Tls | None) -> None:
        self.sentinels = sentinels
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.current: tuple[str, int] | None = None

    def connect(self, protocolFactory):
        return self.sentinels.master().addCallback(self._dial, protocolFactory)

    def _dial(self, address: tuple[str, int], protocolFactory):
        if address != self.current:
            log.info("{u}: the master is {a}", u=str(self.sentinels.url),
                     a=join_hostport(*address))
            self.current = address
        host, port = address
        return endpoint(self.clock, host, port, self.connect_timeout,
                        self.tls).connect(protocolFactory)


def connect(url: RedisUrl, *, clock, connect_timeout: float, tls_ca_file: str = "",
            sentinel_password: str = "") -> tuple[Factory, Sentinels | None]:
    """The factory of the store's one connection (started), and its Sentinels if any."""
    tls = Tls(tls_ca_file) if url.tls else None
    kind = MasterFactory if url.sentinel else Factory
    factory = kind(str(url), url.db, 1, isLazy=True, handler=txredisapi.ConnectionHandler,
                   password=url.password, username=url.username, replyTimeout=None,
                   convertNumbers=False)
    if not url.sentinel:
        factory.startConnecting(
            Noting(endpoint(clock, url.host, url.port, connect_timeout, tls), factory))
        return factory, None
    sentinels = Sentinels(url, clock=clock, connect_timeout=connect_timeout, tls=tls,
                          password=sentinel_password)
    factory.startConnecting(Noting(MasterEndpoint(sentinels, clock=clock,
                                                  connect_timeout=connect_timeout, tls=tls),
                                   factory))
    return factory, sentinels
