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
``AUTH``, so that with a wrong password the connection stays open, never ready and never
reported; and ``Sentinel.discover_master`` queues a question on every Sentinel, where a
disconnected one keeps it (and every later one) until it is back.
"""

from __future__ import annotations

from pathlib import Path

import txredisapi
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

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
                raise ValueError(f"tls_ca_file: {ca_file}: {e.strerror}") from None
            end = b"-----END CERTIFICATE-----"
            blocks = [b + end for b in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in b]
            try:
                certificates = [ssl.Certificate.loadPEM(b) for b in blocks]
            except Exception as e:  # noqa: BLE001 - OpenSSL's errors have no common base
                raise ValueError(f"tls_ca_file: {ca_file}: not a PEM certificate: {e}") from None
            if not certificates:
                raise ValueError(f"tls_ca_file: {ca_file}: no PEM certificate in it")
            self.trust = ssl.trustRootFromCertificates(certificates)

    def options(self, host: str):
        return ssl.optionsForClientTLS(host, trustRoot=self.trust)


def endpoint(clock, host: str, port: int, timeout: float, tls: Tls | None):
    plain = HostnameEndpoint(clock, host, port, timeout=timeout)
    return wrapClientTLS(tls.options(host), plain) if tls is not None else plain


class Factory(txredisapi.RedisFactory):
    """A factory that remembers why Redis refused it (a wrong password, a database that
    does not exist): txredisapi then stops reconnecting and only logs it."""

    initialDelay = RECONNECT_FIRST_DELAY
    maxDelay = RECONNECT_MAX_DELAY
    refused: str | None = None

    def connectionError(self, why):
        self.refused = str(why).removeprefix("Redis error: ")
        super().connectionError(why)


class MasterProtocol(txredisapi.RedisProtocol):
    """A connection to the host Sentinel named: usable only once ``ROLE`` says it is the
    master (a replica answers lookups with stale data and refuses writes)."""

    def connectionMade(self):
        d = defer.succeed(None)
        if self.password is not None:  # ROLE needs it first; the base sends it again
            d.addCallback(lambda _: self.auth(self.password, self.username))
        d.addCallback(lambda _: self.role())
        # Refused (a wrong password): the base's AUTH reports it and stops reconnecting.
        d.addCallbacks(self._role, lambda _: txredisapi.RedisProtocol.connectionMade(self))
        return d

    def _role(self, role):
        if not role or role[0] != "master":
            peer = self.transport.getPeer()
            log.warn("{a} is not a master (ROLE {r}): asking the Sentinels again",
                     a=join_hostport(peer.host, peer.port), r=role[0] if role else "?")
            self.transport.loseConnection()
            return None
        return txredisapi.RedisProtocol.connectionMade(self)


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
        self.problem = ""  # why the last attempt found no master

    def connect(self, protocolFactory):
        d = self.sentinels.master()
        d.addCallbacks(self._dial, self._not_found, callbackArgs=(protocolFactory,))
        return d

    def _not_found(self, failure):
        self.problem = failure.getErrorMessage()
        return failure

    def _dial(self, address: tuple[str, int], protocolFactory):
        self.problem = ""
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
        factory.startConnecting(endpoint(clock, url.host, url.port, connect_timeout, tls))
        return factory, None
    sentinels = Sentinels(url, clock=clock, connect_timeout=connect_timeout, tls=tls,
                          password=sentinel_password)
    factory.master_endpoint = MasterEndpoint(sentinels, clock=clock,
                                             connect_timeout=connect_timeout, tls=tls)
    factory.startConnecting(factory.master_endpoint)
    return factory, sentinels
