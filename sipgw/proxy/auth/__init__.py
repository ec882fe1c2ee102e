"""AUTH: digest authentication of clients' initial requests (RFC 3261 §22, RFC 7616/8760).

``Authenticator.check`` is the AUTH step of the route script. It runs after the server
transaction exists (retransmissions during a slow store lookup are absorbed) and ends by
answering through that transaction or by calling ``proceed`` (DISPATCH).

What it decides, in order:

1. trusted source (``auth.trusted``) → proceed, unchallenged and never banned;
2. user (From) or source banned → 403;
3. no open relay: From domain *and* Request-URI both foreign → ``403 Not relaying``,
   logged at info with why (once per interval). "Ours" is ``auth.realm``, the hosts of
   ``proxy.aliases``, sipgw's own addresses, and a domain with subscribers in the store
   (``sipgw.proxy.auth.domains``: asked only when the others do not match, and remembered);
4. no credentials for our realm → 401 (REGISTER) / 407 (others), one challenge per
   ``auth.algorithms`` (MD5 alone by default) with one stateless nonce, ``qop="auth"``;
5. credentials that cannot be right without looking anything up (unknown algorithm or
   qop, foreign or expired nonce, nc not growing) → a new challenge (``stale=true`` when
   only the nonce expired); user not the From user (and To user for REGISTER) → 403;
6. one store lookup; the response compared in constant time. Unknown user and wrong
   password take the same path (the unknown user is checked against a random HA1) and get
   the same fresh challenge, so nobody can tell them apart on the wire;
7. success → our credentials removed (§22.3: they are for us, not the backend), proceed.

A store that fails answers 503 with Retry-After (unreachable) or 500 (anything else), at
once: requests never wait on a dead store.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from sipgw.config import AuthConfig, Config, LimitsConfig, ProxyConfig
from sipgw.config.redis_url import mask_url
from sipgw.proxy.auth.bans import Bans
from sipgw.proxy.auth.cluster import ClusterBans
from sipgw.proxy.auth.domains import StoreDomains
from sipgw.proxy.auth.nonce import Nonces, NonceState
from sipgw.proxy.identity import Identity
from sipgw.proxy.limits import CapLog
from sipgw.proxy.relay import Relay
from sipgw.proxy.replies import Replies
from sipgw.proxy.stats import StatDef, Stats
from sipgw.proxy.transport import Source, in_networks
from sipgw.rpc.registry import RpcError, rpc
from sipgw.sip import digest
from sipgw.sip.address import parse_name_addr
from sipgw.sip.errors import ParseError
from sipgw.sip.hostport import split_hostport
from sipgw.sip.message import Request
from sipgw.sip.uri import SipURI
from sipgw.store import StoreUnavailable, Subscriber, SubscriberStore, open_store
from sipgw.store.bans import ban_board

log = Logger(namespace="sipgw.auth")

AUTH_STATS = (
    StatDef(group="auth", name="challenged", help="401/407 challenges sent"),
    StatDef(group="auth", name="authorized", help="requests whose credentials were right"),
    StatDef(group="auth", name="failed", help="credentials with a wrong password or unknown user"),
    StatDef(group="auth", name="stale", help="credentials with an expired nonce (re-challenged)"),
    StatDef(group="auth", name="banned", help="requests refused 403 because their user or "
            "source address is banned after failed authentications"),
)

RETRY_AFTER = "5"
STORE_WARN_INTERVAL = 10.0  # seconds between log lines about a failing store


@dataclass(slots=True, kw_only=True)
class _Attempt:
    """One request's credentials, checked as far as possible before the lookup."""

    req: Request
    source: Source
    realm: str
    header: str  # authorization / proxy-authorization
    creds: digest.Credentials
    user: str  # the user part looked up
    domain: str
    at_form: bool  # username sent as user@domain: ha1b
    algorithm: str
    nc: int | None = None
    ban_key: str = field(default="")
    raw: str = ""  # the header value the credentials came from (removed when relaying)


class Authenticator:
    def __init__(self, *, clock: IReactorTime, stats: Stats, identity: Identity, relay: Relay,
                 replies: Replies, store: SubscriberStore, settings: AuthConfig,
                 proxy: ProxyConfig, limits: LimitsConfig, secret: bytes,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.clock = clock
        self.stats = stats
        self.identity = identity
        self.relay = relay
        self.replies = replies
        self.store = store
        self.random = random
        now = clock.seconds
        self.nonces = Nonces(secret, settings.nonce_expire, now, random=random,
                             max_tracked=limits.max_nonces, on_forget=self._nonce_forgotten)
        self.bans = Bans(clock, settings, limits, on_forget=self._failures_forgotten)
        # A store several nodes may share (Redis): bans shared with them (started by the
        # service: ``cluster.start``).
        board = ban_board(store)
        self.cluster = ClusterBans(self.bans, board, clock) if board is not None else None
        self.cap_log = CapLog(log, now)
        self.refusal_log = CapLog(log, now, level=LogLevel.info)
        self.domains = StoreDomains(store, now)
        self.configure(settings, proxy, limits)
        stats.declare(AUTH_STATS)
        # Checked against when the user is unknown: the same work as a wrong password.
        self._decoy = random(16).hex()
        self._store_warned = float("-inf")

    def configure(self, settings: AuthConfig, proxy: ProxyConfig, limits: LimitsConfig) -> None:
        """Apply (re)loaded [auth], proxy.aliases and the [limits] of nonces and failures;
        nonces, counters and bans survive."""
        self.settings = settings
        # Domains that are ours by configuration: the realm and the hosts of the aliases.
        realm = {settings.realm.lower()} if settings.realm else set()
        self.configured_domains = frozenset(
            realm | {split_hostport(alias.lower())[0] for alias in proxy.aliases})
        self.nonces.configure(settings.nonce_expire, limits.max_nonces)
        self.bans.configure(settings, limits)

    def _nonce_forgotten(self) -> None:
        # Never a replay opened: a forgotten nonce is stale, its client is re-challenged.
        self.cap_log.reached("limits.max_nonces", "{n} nonces tracked; the oldest forgotten "
                             "(its next use gets a stale challenge)",
                             n=self.nonces.max_tracked)

    def _failures_forgotten(self, what: str) -> None:
        self.cap_log.reached("limits.max_auth_failures", "{n} {what} remembered; the oldest "
                             "forgotten", n=self.bans.max_entries, what=what)

    # -- the step -----------------------------------------------------------------------

    def check(self, req: Request, source: Source, start: Callable, proceed: Callable) -> None:
        """The AUTH step. What can be decided without the store is answered statelessly,
        as Kamailio's sl does (a challenge or a refusal costs no transaction, which would
        otherwise hold the request and its answer for timer J, 32 s, in a REGISTER storm);
        a request that goes on, to the store or further, gets its server transaction from
        ``start`` first (retransmissions are absorbed while the store is asked)."""
        s = self.settings
        if self.trusts(source.host):
            ctx = start(req, source)
            if ctx is not None:
                proceed(ctx, req, source)
            return

        from_uri = _sip_uri(req.header("from"))
        if from_uri is None:
            self._answer(None, req, source, 403, "Forbidden: From must be a SIP URI")
            return
        from_user = from_uri.unescaped_user or ""
        from_host = from_uri.host.strip("[]").lower()
        realm = s.realm or from_host
        if self.bans.is_banned(f"{from_user}@{realm}", source.host):
            self.stats.inc("auth:banned")
            self._answer(None, req, source, 403, "Forbidden")
            return
        args = (req, source, start, proceed, from_user, from_host, realm)
        if self._ours(from_host) or self._ours_uri(req):
            self._authenticate(*args)
            return
        # Neither is ours by configuration: a domain with subscribers in the store is.
        domains = [from_host]
        ruri_host = _ruri_host(req)
        if ruri_host and ruri_host != from_host:
            domains.append(ruri_host)
        d = self.domains.any_ours(domains)
        d.addCallbacks(self._domain_known, self._domain_unknown, callbackArgs=args,
                       errbackArgs=(req, source))
        d.addErrback(lambda failure: log.failure("auth: internal error", failure))

    def _domain_known(self, ours: bool, *args) -> None:
        if ours:
            self._authenticate(*args)
            return
        req, source, _, _, _, from_host, _ = args
        # An operator's first question when a phone gets this ("example.com is mine!"):
        # said at info, once per interval however hard a scanner tries.
        self.refusal_log.once(
            "not-relaying", "auth: 403 Not relaying {m} from {h}:{p}: neither the From "
            "domain {f} nor the Request-URI {r} is ours (auth.realm, proxy.aliases, sipgw's "
            "own addresses, or a domain with users in the subscriber store)",
            m=req.method, h=source.host, p=source.port, f=from_host, r=req.uri)
        self._answer(None, req, source, 403, "Not relaying")

    def _domain_unknown(self, failure, req: Request, source: Source) -> None:
        self._answer(None, req, source, *self._store_trouble(failure))

    def _authenticate(self, req: Request, source: Source, start: Callable, proceed: Callable,
                      from_user: str, from_host: str, realm: str) -> None:
        """The request is for us or from one of ours: a challenge, or its credentials
        checked against the store."""
        header = "authorization" if req.method == "REGISTER" else "proxy-authorization"
        try:
            creds, raw = _credentials_for(req, header, realm)
        except ParseError as e:
            self._answer(None, req, source, 400, e.reason)
            return
        if creds is None:
            self._challenge(None, req, source, realm)
            return
        attempt = self._precheck(req, source, realm, header, creds, from_user, from_host)
        if attempt is None:
            return
        attempt.raw = raw
        ctx = start(req, source)
        if ctx is None:
            return
        d = self.store.get(attempt.user, attempt.domain)
        d.addCallbacks(self._looked_up, self._store_failed, callbackArgs=(ctx, attempt, proceed),
                       errbackArgs=(ctx,))
        d.addErrback(self._bug, ctx)

    def _precheck(self, req, source, realm, header, creds, from_user, from_host):
        """Everything decidable without the store; None when already answered (statelessly)."""
        username = creds.username
        algorithm = creds.algorithm.upper()
        qop = creds.params.get("qop")
        if not username or algorithm not in self.settings.algorithms or qop not in (None, "auth"):
            self._challenge(None, req, source, realm)
            return None
        state = self.nonces.check(creds.nonce or "")
        if state is not NonceState.VALID:
            if state is NonceState.STALE:
                self.stats.inc("auth:stale")
            self._challenge(None, req, source, realm, stale=state is NonceState.STALE)
            return None
        user, at, domain = username.partition("@")
        domain = domain.lower() if at else realm
        if user != from_user or (at and domain != from_host) or not _to_matches(req, user):
            # RFC 3261 §22.3 leaves it to policy; ours: one account speaks only for itself.
            self._answer(None, req, source, 403, "Forbidden: credentials are not for the From user")
            return None
        nc = None
        if qop is not None:
            try:
                nc = int(creds.params["nc"], 16)
            except ValueError:
                self._challenge(None, req, source, realm)
                return None
        # Recorded before the lookup: two copies in flight cannot both pass.
        if not self.nonces.use(creds.nonce or "", nc):
            log.info("auth: nonce count replayed by {h}:{p} for {u}", h=source.host,
                     p=source.port, u=username)
            self._challenge(None, req, source, realm)
            return None
        return _Attempt(req=req, source=source, realm=realm, header=header, creds=creds,
                        user=user, domain=domain, at_form=bool(at), algorithm=algorithm,
                        nc=nc, ban_key=f"{user}@{realm}")

    def _looked_up(self, subscriber: Subscriber | None, ctx, attempt: _Attempt, proceed) -> None:
        if ctx.final_sent:
            return
        if ctx.cancelled:
            self.relay.respond(ctx, 487, "Request Terminated")
            return
        req = attempt.req
        if not self._verify(subscriber, attempt):
            self.stats.inc("auth:failed")
            self.bans.failure(attempt.ban_key, attempt.source.host)
            log.info("auth: failed for {u} from {h}:{p}", u=attempt.ban_key,
                     h=attempt.source.host, p=attempt.source.port)
            self._challenge(ctx, req, attempt.source, attempt.realm)
            return
        self.stats.inc("auth:authorized")
        self.bans.success(attempt.ban_key)
        _remove_credentials(req, attempt.header, attempt.raw)
        proceed(ctx, req, attempt.source)

    def _verify(self, subscriber: Subscriber | None, attempt: _Attempt) -> bool:
        creds = attempt.creds
        ha1 = _ha1_of(subscriber, attempt) or self._decoy
        try:
            expected = digest.response(
                ha1, attempt.req.method, creds.uri or "", creds.nonce or "",
                creds.params.get("nc"), creds.params.get("cnonce"), creds.params.get("qop"),
                attempt.algorithm,
            )
        except ValueError:
            return False
        given = (creds.response or "").lower()
        return hmac.compare_digest(expected.encode(), given.encode("latin-1")) and (
            subscriber is not None and ha1 != self._decoy
        )

    def _store_failed(self, failure, ctx) -> None:
        if not ctx.final_sent:
            self.relay.respond(ctx, *self._store_trouble(failure))

    def _store_trouble(self, failure) -> tuple:
        """The answer to a request the store failed: status, reason, extra headers."""
        now = self.clock.seconds()
        if now - self._store_warned >= STORE_WARN_INTERVAL:
            # An outage fails every request: one line per interval, not one per request.
            self._store_warned = now
            log.warn("auth: subscriber store failed: {err}", err=failure.getErrorMessage())
        if failure.check(StoreUnavailable):
            return 503, "Service Unavailable", [("Retry-After", RETRY_AFTER)]
        return 500, "Server Error", None

    def _bug(self, failure, ctx) -> None:
        log.failure("auth: internal error", failure)
        if not ctx.final_sent:
            self.relay.respond(ctx, 500, "Server Internal Error")

    # -- control plane ------------------------------------------------------------------

    @rpc("auth.bans", help="Users (user@realm) and source addresses refused 403 after "
         "failed authentications, with the seconds their ban has left (on Redis: every "
         "node's bans).")
    def rpc_bans(self) -> dict:
        return {"BANS": self.bans.listing()}

    @rpc("auth.unban", help="Lift the ban of a user (user@realm) or a source address; "
         "'all' lifts every ban (on Redis: on every node).")
    def rpc_unban(self, name: str):
        if not isinstance(name, str) or not name:
            raise RpcError("expected a user@realm, an address, or 'all'")
        lifted = self.bans.unban(name)
        if self.cluster is None:
            return {"REMOVED": lifted}
        return self.cluster.unban(name, lifted).addCallback(lambda n: {"REMOVED": n})

    # -- helpers ------------------------------------------------------------------------

    def _answer(self, ctx, req: Request, source: Source, status: int, reason: str,
                extra=None) -> None:
        """Within a transaction (after a store lookup) statefully; before one, statelessly."""
        if ctx is None:
            self.replies.reply(req, source, status, reason, extra)
        else:
            self.relay.respond(ctx, status, reason, extra)

    def _challenge(self, ctx, req: Request, source: Source, realm: str, *,
                   stale: bool = False) -> None:
        nonce = self.nonces.new()
        register = req.method == "REGISTER"
        name = "WWW-Authenticate" if register else "Proxy-Authenticate"
        extra = [(name, digest.format_challenge(realm, nonce, algorithm, "auth", stale))
                 for algorithm in self.settings.algorithms]
        self.stats.inc("auth:challenged")
        if register:
            self._answer(ctx, req, source, 401, "Unauthorized", extra)
        else:
            self._answer(ctx, req, source, 407, "Proxy Authentication Required", extra)

    def trusts(self, host: str) -> bool:
        """Is ``host`` in ``auth.trusted`` (never challenged, may route anywhere)?"""
        trusted = self.settings.trusted
        return bool(trusted) and _in_networks(host, trusted)

    def _ours(self, host: str) -> bool:
        s = self.settings
        return (host == s.realm or host in self.configured_domains
                or self.identity.is_our_host(host))

    def _ours_uri(self, req: Request) -> bool:
        ruri = req.parsed_uri()
        if not isinstance(ruri, SipURI):
            return False
        host = ruri.host.strip("[]").lower()
        return self._ours(host) or self.identity.is_us(host, ruri.port)


def _sip_uri(value: str | None) -> SipURI | None:
    if value is None:
        return None
    try:
        uri = parse_name_addr(value).uri
    except ParseError:
        return None
    return uri if isinstance(uri, SipURI) else None


def _ruri_host(req: Request) -> str | None:
    ruri = req.parsed_uri()
    return ruri.host.strip("[]").lower() if isinstance(ruri, SipURI) else None


def _to_matches(req: Request, user: str) -> bool:
    """A REGISTER registers the authenticated user's own address of record only."""
    if req.method != "REGISTER":
        return True
    to = _sip_uri(req.header("to"))
    return to is not None and (to.unescaped_user or "") == user


def _credentials_for(req: Request, header: str, realm: str):
    """Our realm's Digest credentials and the header value they came from, if any."""
    for value in req.headers(header):
        creds = digest.parse_credentials(value)
        if creds.is_digest and creds.realm == realm:
            return creds, value
    return None, None


def _remove_credentials(req: Request, header: str, used: str) -> None:
    """Kamailio's consume_credentials: ours go, other realms' stay for their proxies."""
    values = req.headers(header)
    req.remove(header)
    for value in values:
        if value != used:
            req.append(header, value)


def _ha1_of(subscriber: Subscriber | None, attempt: _Attempt) -> str:
    if subscriber is None:
        return ""
    sha = attempt.algorithm.startswith("SHA-256")
    if sha and subscriber.ha1_sha256:
        return subscriber.ha1_sha256
    if not sha and (subscriber.ha1b if attempt.at_form else subscriber.ha1):
        return subscriber.ha1b if attempt.at_form else subscriber.ha1
    if subscriber.password:
        # A legacy record: Kamailio's calculate_ha1.
        name = attempt.creds.username or ""
        return digest.ha1(name, attempt.realm, subscriber.password, attempt.algorithm)
    return ""


# Asked for every request; ipaddress is slow and sources repeat, so remember (bounded).
_in_networks = functools.lru_cache(maxsize=4096)(in_networks)


# -- from the configuration (service.py calls these) ----------------------------------------


def open_subscribers(config: Config, clock: IReactorTime) -> SubscriberStore:
    """The subscriber store ``[subscribers]`` names."""
    s = config.subscribers
    log.info("auth: subscribers in {url}", url=mask_url(s.url))
    return open_store(s.url, key_template=s.key_template, connect_timeout=s.connect_timeout,
                      command_timeout=s.command_timeout, clock=clock, tls_ca_file=s.tls_ca_file,
                      sentinel_password=s.sentinel_password)


def nonce_secret(config: Config, route_key: bytes) -> bytes:
    """``auth.nonce_secret``, or else one derived from the route signing key: the same in
    every worker of the service (and after a restart, when the key is kept in a file), so
    another worker's nonce is answered stale=true, not taken for a stranger's. That opens
    no replay: a nonce is accepted only by the process that issued it (``nonce.py``)."""
    if config.auth.nonce_secret:
        return config.auth.nonce_secret.encode("utf-8")
    return hmac.new(route_key, b"sipgw nonces", hashlib.sha256).digest()

