"""The production subscriber store: a Redis hash per user, shared by every sipgw node.

Layout (DESIGN.md §5): key ``subscriber:<username>`` (``key_template``, e.g.
``subscriber:entry::{username}:{domain}`` to read a Kamailio db_redis database as it is),
fields ``username``, ``domain``, ``ha1``, ``ha1b``, ``ha1_sha256`` (and, in legacy records,
``password``). A lookup is one ``HGETALL``: one round trip per authenticated request, and
nothing cached, so a ``sipgw users passwd`` takes effect on the next request.

Which domains have subscribers (``has_domain``: is a request's domain ours?) cannot be
asked of that layout without scanning every key, so sipgw keeps an index beside it: a set
``sipgw:domain:<domain>`` of the domain's user names, kept by ``put`` and ``delete``
(Redis drops a set once empty). Records written by other tools are not in it: their
domains go in ``auth.realm`` or ``proxy.aliases``, or ``sipgw users export`` then
``import`` writes the index.

Beside them, the failed authentications and bans every node shares: ``sipgw.store.bans``
(``sipgw:auth:*``, Lua scripts run through ``script``).

Failure handling, so that a Redis outage costs prompt errors and never a hang:

* ``connect_timeout`` bounds each connection attempt; txredisapi reconnects forever, and
  the back-off is capped at ``redis_link.RECONNECT_MAX_DELAY`` so service resumes within
  about a second of Redis coming back (``redis_link``: to one server, or to the master
  Sentinel names, which is how a failover is followed; TLS or not);
* ``command_timeout`` bounds every command and the wait for a connection: the request
  waiting for it gets its 503 then;
* a connection is dropped (and a new one made) only when Redis has not answered anything
  for ``DEAD_AFTER`` command timeouts. txredisapi's own reply timeout is off: it closes
  the connection at the first late reply, and at the command timeout a proxy busy with a
  burst (its reactor late to read the reply that is already there) would drop a healthy
  connection and fail every request queued on it, turning a moment of overload into
  seconds of 503s; it also costs a timer per command;
* while no connection is up, lookups fail at once with ``StoreUnavailable`` -- except in
  the first ``connect_timeout`` after start, when they wait for the first connection;
* Redis refusing the password or the database stops the reconnecting (txredisapi's rule):
  lookups fail with ``StoreError`` quoting the refusal (a 500: a restart with a mended
  config is the only cure, retrying is not);
* a ``READONLY`` answer (the server was turned into a replica) drops the connection, so
  that the next one goes to the master the Sentinels name now.
"""

from __future__ import annotations

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from sipgw.config.redis_url import RedisUrl
from sipgw.store import redis_link
from sipgw.store.base import (
    DOMAIN_INDEX,
    StoreError,
    StoreUnavailable,
    Subscriber,
    subscriber_from_fields,
)

log = Logger(namespace="sipgw.store.redis")

DEFAULT_TEMPLATE = "subscriber:{username}"
KAMAILIO_TEMPLATE = "subscriber:entry::{username}:{domain}"
READ_GRACE = 0.01  # seconds past a command's deadline: a reactor turn to read its answer
DEAD_AFTER = 5  # command timeouts without an answer before the connection is dropped


class RedisStore:
    def __init__(self, address: RedisUrl, *, key_template: str = DEFAULT_TEMPLATE,
                 connect_timeout: float = 2.0, command_timeout: float = 1.0,
                 clock=None, tls_ca_file: str = "", sentinel_password: str = "") -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.address = address
        self.key_template = key_template
        self.command_timeout = command_timeout
        self.clock = clock
        self._grace_until = clock.seconds() + connect_timeout
        self._was_up = False
        self._last_answer = clock.seconds()
        self._factory, self.sentinels = redis_link.connect(
            address, clock=clock, connect_timeout=connect_timeout, tls_ca_file=tls_ca_file,
            sentinel_password=sentinel_password)
        self._redis = self._factory.handler

    # -- plumbing ---------------------------------------------------------------------

    def key(self, username: str, domain: str) -> str:
        return self.key_template.format(username=username, domain=domain)

    @property
    def connected(self) -> bool:
        return self._factory.size > 0

    def when_connected(self, timeout: float) -> defer.Deferred:
        """Fires once a connection is up (for the CLI); StoreUnavailable after ``timeout``."""
        if self.connected:
            return defer.succeed(None)
        return self._call(lambda r: r.ping(), timeout=timeout)

    def _call(self, command, timeout: float | None = None) -> defer.Deferred:
        if not self.connected:
            if self._was_up or self.clock.seconds() >= self._grace_until:
                return defer.fail(self._down())
        d = self._redis_call(command)
        with_deadline(d, timeout or self.command_timeout, self.clock)
        d.addCallbacks(self._up, self._translate)
        return d

    def _redis_call(self, command) -> defer.Deferred:
        # With a connection up, straight to it: txredisapi's handler would wait for it
        # through an inlineCallbacks generator and two more Deferreds on every lookup.
        pool = self._factory.pool
        target = pool[0] if pool and pool[0].connected else self._redis
        try:
            return command(target)
        except Exception as e:  # noqa: BLE001 - txredisapi raises synchronously at times
            return defer.fail(e)

    def _down(self, otherwise: str = "not connected") -> StoreError:
        """Why no connection is up: Redis refused us (a wrong password: only a restart with
        another config mends it, so not "unavailable"), or why the last attempt failed (not
        reachable, no master known, a certificate not trusted...)."""
        if self._factory.refused:
            return StoreError(f"{self.address}: {self._factory.refused}")
        return StoreUnavailable(f"{self.address}: {self._factory.failure or otherwise}")

    def _drop(self) -> None:
        for conn in list(self._factory.pool):
            conn.transport.abortConnection()

    def _up(self, result):
        if not self._was_up:
            log.info("connected to {a}", a=str(self.address))
        self._was_up = True
        self._last_answer = self.clock.seconds()
        return result

    def _timed_out(self) -> None:
        """A command went unanswered: drop the connection if Redis has gone quiet."""
        silent = self.clock.seconds() - self._last_answer
        if silent < self.command_timeout * DEAD_AFTER:
            return
        log.warn("no answer from {a} for {s:.1f} s: reconnecting", a=str(self.address),
                 s=silent)
        self._drop()
        self._last_answer = self.clock.seconds()  # give the new connection its time

    def _translate(self, failure):
        if failure.check(defer.TimeoutError, defer.CancelledError):
            self._timed_out()
            raise self._down("no answer (not reachable, or too slow)")
        if failure.check(txredisapi.ConnectionError):
            if not self.connected:
                raise self._down()
            raise StoreUnavailable(f"{self.address}: {failure.getErrorMessage()}")
        if failure.check(txredisapi.ResponseError) and \
                failure.getErrorMessage().startswith("READONLY"):
            # A master turned into a replica under our feet: ask the Sentinels again.
            log.warn("{a}: the server is a replica now: reconnecting", a=str(self.address))
            self._drop()
            raise StoreUnavailable(f"{self.address}: {failure.getErrorMessage()}")
        if failure.check(StoreError):
            return failure
        raise StoreError(f"{self.address}: {failure.getErrorMessage()}")

    # -- the interface ----------------------------------------------------------------

    def get(self, username: str, domain: str) -> defer.Deferred:
        def found(fields: dict) -> Subscriber | None:
            return subscriber_from_fields(fields, username, domain) if fields else None

        return self._call(lambda r: r.hgetall(self.key(username, domain))).addCallback(found)

    def domain_key(self, domain: str) -> str:
        return DOMAIN_INDEX + domain

    @defer.inlineCallbacks
    def put(self, subscriber: Subscriber):
        key = self.key(subscriber.username, subscriber.domain)
        fields = subscriber.as_fields()
        stale = [n for n in ("ha1", "ha1b", "ha1_sha256", "password") if n not in fields]
        # A key without {domain} may hold the user of another domain: it moves.
        before = yield self._call(lambda r: r.hget(key, "domain"))
        yield self._call(lambda r: r.hmset(key, fields))
        if stale:
            # A new password must not leave an old hash (or a plaintext one) behind.
            yield self._call(lambda r: r.hdel(key, stale))
        if before and before != subscriber.domain:
            yield self._call(lambda r: r.srem(self.domain_key(before), subscriber.username))
        yield self._call(lambda r: r.sadd(self.domain_key(subscriber.domain),
                                          subscriber.username))

    @defer.inlineCallbacks
    def delete(self, username: str, domain: str):
        removed = yield self._call(lambda r: r.delete(self.key(username, domain)))
        yield self._call(lambda r: r.srem(self.domain_key(domain), username))
        return int(removed) > 0

    def has_domain(self, domain: str) -> defer.Deferred:
        return self._call(lambda r: r.exists(self.domain_key(domain))).addCallback(
            lambda n: int(n) > 0)

    @defer.inlineCallbacks
    def all(self):
        pattern = self.key_template.format(username="*", domain="*")
        keys: list[str] = []
        cursor = 0
        while True:
            cursor, batch = yield self._call(lambda r, c=cursor: r.scan(c, pattern, 500))
            keys.extend(batch)
            if int(cursor) == 0:
                break
        out = []
        for key in sorted(set(keys)):
            if key.startswith(DOMAIN_INDEX):  # a template without a prefix matches it
                continue
            fields = yield self._call(lambda r, k=key: r.hgetall(k))
            if fields.get("username"):
                out.append(subscriber_from_fields(fields, fields["username"],
                                                  fields.get("domain", "")))
        return sorted(out, key=lambda s: (s.domain, s.username))

    def script(self, source: str, keys: list[str], args: list) -> defer.Deferred:
        """A Lua script run on the server (``sipgw.store.bans``): one round trip, atomic,
        failing as a lookup does. txredisapi sends it whole once, then by its digest."""
        return self._call(lambda r: r.eval(source, keys, args))

    def close(self) -> defer.Deferred:
        closing = [self._factory.disconnect()]
        if self.sentinels is not None:
            closing.append(self.sentinels.close())
        return defer.gatherResults(closing, consumeErrors=True)


def with_deadline(d: defer.Deferred, seconds: float, clock) -> defer.Deferred:
    """Cancel ``d`` if it has not fired ``seconds`` from now, one reactor turn late.

    Twisted runs the timers that are due before it reads its sockets. After the reactor
    was busy past the deadline (a burst of datagrams, a collection), the answer may be
    waiting unread in the socket while its timeout fires, and a store that answers in
    microseconds would be called unreachable. The extra turn reads it first: a timer
    armed while timers run waits for the next round, after the reactor has polled.
    """

    pending: list[IDelayedCall] = []

    def expire() -> None:
        pending[0] = clock.callLater(READ_GRACE, d.cancel)

    pending.append(clock.callLater(seconds, expire))

    def settled(result):
        if pending[0].active():
            pending[0].cancel()
        return result

    return d.addBoth(settled)

