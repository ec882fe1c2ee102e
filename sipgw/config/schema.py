"""The keys of sipgw.toml, each declared once, in the section dataclass that holds it.

``_key(...)`` gives a key its kind (``kinds.py``: how its value is checked and parsed), its
default as written in TOML, one line of help, and ``in_effect`` -- whether the running code
uses it yet. A section is the settings of the component it configures: ``Pike`` takes
``PikeConfig``, ``WsTransport`` its ``WebSocketConfig`` and ``LimitsConfig``, and what
they derive (a set of domains, compiled patterns) they compute themselves; no second class
repeats the fields. ``SCHEMA`` and ``SECTIONS`` are derived from these declarations; the
tests check that sipgw.toml(5) and etc/sipgw.toml.example list every key with its default,
so the documents cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from sipgw.config.kinds import (
    ADDRESSES,
    LOG_LEVEL_NAMES,
    NETWORKS,
    PYTHON_LEVELS,
    Address,
    Advertise,
    Bool,
    FileMode,
    Integer,
    IPNetwork,
    Kind,
    LogLevel,
    OptionalAddress,
    Seconds,
    Secret,
    String,
    StringList,
    SubscriberUrl,
    WorkerCount,
    absolute_path,
    alias,
    digest_algorithm,
    header_value,
    not_empty,
    origin,
    redis_key_template,
    sip_uri,
    status_code,
    tls_version,
    uri_problem,
    user_agent_part,
    ws_url,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Declaration:
    kind: Kind
    default: object
    help: str
    in_effect: bool


def _key(kind: Kind, default: object, help: str, *, in_effect: bool = False) -> Any:
    # The parsed default is the field's too: a section built in code (``PikeConfig()``,
    # ``LimitsConfig(max_dialogs=100)``) is the file's defaults, as a component's tests
    # want it. Only subscribers.url differs: "" there, derived from state.directory when
    # a whole file is loaded.
    return field(default=kind.parse(default),
                 metadata={"sipgw": _Declaration(kind=kind, default=default, help=help,
                                                 in_effect=in_effect)})  # fmt: skip


def _section(help: str) -> Any:
    return field(metadata={"sipgw": help})


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    udp: tuple[Address, ...] = _key(ADDRESSES, ["0.0.0.0:5060"], 'SIP over UDP: a list of "host:port" ([] = off; IPv6 as "[::1]:5060")', in_effect=True)  # noqa: E501
    tcp: tuple[Address, ...] = _key(ADDRESSES, ["0.0.0.0:5060"], 'SIP over TCP: a list of "host:port" ([] = off)', in_effect=True)  # noqa: E501
    tls: tuple[Address, ...] = _key(ADDRESSES, [], 'SIP over TLS, e.g. ["0.0.0.0:5061"]; needs tls.certificate', in_effect=True)  # noqa: E501
    ws: tuple[Address, ...] = _key(ADDRESSES, ["0.0.0.0:8080"], "SIP over WebSocket for browsers (direct, or behind nginx)", in_effect=True)  # noqa: E501
    wss: tuple[Address, ...] = _key(ADDRESSES, [], 'SIP over secure WebSocket, e.g. ["0.0.0.0:8443"]; needs tls.certificate', in_effect=True)  # noqa: E501
    advertise: Advertise | None = _key(OptionalAddress(port_optional=True), "", 'host[:port] sipgw writes in Via/Record-Route/Path when behind NAT ("" = the listening address)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    certificate: str = _key(String(), "", "PEM file with the certificate chain for listen.tls and listen.wss", in_effect=True)  # noqa: E501
    private_key: str = _key(String(), "", 'PEM file with the private key ("" = in the certificate file)', in_effect=True)  # noqa: E501
    min_version: str = _key(String(tls_version), "1.2", 'oldest TLS version accepted: "1.2" or "1.3"', in_effect=True)  # noqa: E501
    ciphers: str = _key(String(), "", 'OpenSSL cipher string ("" = a safe default)', in_effect=True)  # noqa: E501
    backend_ca_file: str = _key(String(), "", 'PEM file of the certificate authorities a backend reached over TLS (transport=tls) must be signed by ("" = the system\'s)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketConfig:
    trusted_proxies: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs whose X-Forwarded-For / X-Real-IP is believed (nginx in front)", in_effect=True)  # noqa: E501
    phone_page: bool = _key(Bool(), True, "GET / on the ws/wss listeners serves the built-in test phone", in_effect=True)  # noqa: E501
    allowed_hosts: tuple[str, ...] = _key(StringList('a list of "host" or "host:port" strings', alias), [], "Host header values accepted in the WebSocket handshake, by name or name:port ([] = any; others get 403)", in_effect=True)  # noqa: E501
    allowed_origins: tuple[str, ...] = _key(StringList('a list of origins (e.g. "https://phone.example.com")', origin), [], "Origin values accepted in the WebSocket handshake ([] = any; others get 403)", in_effect=True)  # noqa: E501
    public_urls: tuple[str, ...] = _key(StringList('a list of ws:// or wss:// URLs', ws_url), [], "the URLs browsers connect to (through nginx, if it is in front), where sipgw doctor checks the handshake and the client address sipgw sees ([] = only the listeners)", in_effect=True)  # noqa: E501
    keepalive_interval: float = _key(Seconds(), 25, "seconds a connection may stay idle before a ping, and then wait for its pong (0 = no pings)", in_effect=True)  # noqa: E501
    handshake_timeout: float = _key(Seconds(0, above=True), 10, "seconds a client has to complete the WebSocket handshake", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    max_forwards: int = _key(Integer(1, 255), 70, "Max-Forwards added to requests that have none, and the cap on larger values", in_effect=True)  # noqa: E501
    record_route: bool = _key(Bool(), True, "insert Record-Route so that in-dialog requests come back through sipgw", in_effect=True)  # noqa: E501
    server_header: str = _key(String(header_value), "sipgw", 'User-Agent/Server value sipgw writes ("" = none)', in_effect=True)  # noqa: E501
    aliases: tuple[str, ...] = _key(StringList('a list of "host" or "host:port" strings', alias), [], "more host names or addresses that mean sipgw itself (OPTIONS to self, loop detection)", in_effect=True)  # noqa: E501
    drain_timeout: float = _key(Seconds(), 10, "on SIGTERM, how long requests already received may take to get their final answer before sipgw exits (seconds; new requests get 503 meanwhile)", in_effect=True)  # noqa: E501
    nat_uac_test: int = _key(Integer(0, 511), 19, "Kamailio nat_uac_test flags for UDP/TCP/TLS clients (0 = off); WebSocket clients are always NATed", in_effect=True)  # noqa: E501
    workers: int = _key(WorkerCount(), "auto", 'worker processes serving the listeners together ("auto" = one per CPU; 1 = a single process, no supervisor); sipgw serve --workers overrides it', in_effect=True)  # noqa: E501
    worker_ports: int = _key(Integer(0, 65535), 0, "first of the consecutive ports, one per worker, UDP and TCP each, then one per worker for TLS (with listen.tls), that each worker writes in Via, Record-Route and Path toward the backends (0 = ports the kernel picks when the service starts; set it for firewall rules and for dialogs that outlive a restart)", in_effect=True)  # noqa: E501
    route_secret: str = _key(Secret(), "", 'HMAC key that signs the Record-Route and contact aliases sipgw writes, the same on every node ("" = derived from auth.nonce_secret, or else a key kept in state.directory/route.key)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class TimersConfig:
    t1: float = _key(Seconds(0, above=True), 0.5, "RFC 3261 T1, the round-trip estimate: first UDP retransmission interval (seconds)", in_effect=True)  # noqa: E501
    t2: float = _key(Seconds(0, above=True), 4.0, "RFC 3261 T2, the cap on retransmission intervals (seconds)", in_effect=True)  # noqa: E501
    t4: float = _key(Seconds(0, above=True), 5.0, "RFC 3261 T4, the longest a message stays in the network (seconds)", in_effect=True)  # noqa: E501
    timer_b: float = _key(Seconds(0, above=True), 32.0, "INVITE client transaction timeout, 64*T1 (seconds)", in_effect=True)  # noqa: E501
    timer_f: float = _key(Seconds(0, above=True), 32.0, "non-INVITE client transaction timeout, 64*T1 (seconds)", in_effect=True)  # noqa: E501
    # RFC 3261 §16.6 step 11: Timer C "MUST be larger than 3 minutes"; 180 is the floor.
    timer_c: float = _key(Seconds(180), 180.0, "proxy INVITE timer: an unanswered branch is cancelled after this (seconds, at least 180)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_message_size: int = _key(Integer(1024, 16 * 1024 * 1024), 65535, "largest SIP message accepted, in bytes", in_effect=True)  # noqa: E501
    max_headers: int = _key(Integer(8, 10000), 256, "most header fields accepted in one message", in_effect=True)  # noqa: E501
    max_ruri_length: int = _key(Integer(64, 65535), 1024, "longest Request-URI accepted, in bytes; a longer one gets 414 Request-URI Too Long", in_effect=True)  # noqa: E501
    max_transactions: int = _key(Integer(1, 10_000_000), 100000, "most transactions in progress at once (not counting those done but for absorbing retransmissions); beyond it new requests get 503", in_effect=True)  # noqa: E501
    tcp_idle_timeout: float = _key(Seconds(0, above=True), 300, "seconds before an idle TCP connection is closed", in_effect=True)  # noqa: E501
    ws_max_connections: int = _key(Integer(1, 10_000_000), 20000, "most WebSocket connections at once (ws and wss); beyond it handshakes get 503", in_effect=True)  # noqa: E501
    ws_max_connections_per_address: int = _key(Integer(1, 10_000_000), 1000, "most WebSocket connections from one client address (a contact center puts many agents behind one NAT)", in_effect=True)  # noqa: E501
    ws_register_timeout: float = _key(Seconds(), 60, "seconds a WebSocket connection may stay open without sending a REGISTER (0 = forever)", in_effect=True)  # noqa: E501
    tcp_max_connections: int = _key(Integer(1, 10_000_000), 20000, "most TCP and TLS connections from clients at once; beyond it new connections are closed as soon as they are accepted", in_effect=True)  # noqa: E501
    tcp_max_connections_per_address: int = _key(Integer(1, 10_000_000), 1000, "most TCP and TLS connections from one client address at once", in_effect=True)  # noqa: E501
    tcp_first_message_timeout: float = _key(Seconds(), 10, "seconds a new TCP or TLS connection from a client has to send its first complete SIP message before it is closed (0 = only tcp_idle_timeout)", in_effect=True)  # noqa: E501
    max_write_queue: int = _key(Integer(4096, 1 << 30), 262144, "bytes sipgw keeps waiting for one TCP, TLS or WebSocket peer that is not reading, beyond the socket buffers; more and the connection is closed", in_effect=True)  # noqa: E501
    max_nonces: int = _key(Integer(100, 100_000_000), 200000, "nonces whose last nonce-count is remembered against replays; beyond it the oldest is forgotten (its nonce is then stale)", in_effect=True)  # noqa: E501
    max_auth_failures: int = _key(Integer(100, 100_000_000), 100000, "users and addresses whose failed authentications, and bans, are remembered; beyond it the oldest is forgotten", in_effect=True)  # noqa: E501
    max_trace_subscribers: int = _key(Integer(1, 1000), 8, "trace.subscribe streams at once (sipgw trace); beyond it the call gets an error", in_effect=True)  # noqa: E501
    max_dialogs: int = _key(Integer(100, 100_000_000), 100000, "dialogs tracked for dlg.list and dialog:active_dialogs; beyond it the oldest is forgotten", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribersConfig:
    url: str = _key(SubscriberUrl(), "", 'subscriber store: "sqlite:///PATH", "redis://[user:pass@]host:port/db", or through Sentinel "redis+sentinel://[user:pass@]host:port,host:port,.../SERVICE/db" ("rediss" for TLS; "" = sqlite:///<state.directory>/subscribers.db)', in_effect=True)  # noqa: E501
    key_template: str = _key(String(redis_key_template), "subscriber:{username}", 'Redis key of a user\'s hash; "subscriber:entry::{username}:{domain}" reads a Kamailio db_redis database', in_effect=True)  # noqa: E501
    connect_timeout: float = _key(Seconds(0, above=True), 2, "seconds to wait for a connection to Redis", in_effect=True)  # noqa: E501
    command_timeout: float = _key(Seconds(0, above=True), 1, "seconds to wait for Redis to answer a lookup before the request gets 503", in_effect=True)  # noqa: E501
    tls_ca_file: str = _key(String(), "", 'PEM file of the certificate authorities a "rediss" Redis or Sentinel must be signed by ("" = the system\'s)', in_effect=True)  # noqa: E501
    sentinel_password: str = _key(Secret(), "", 'password the Sentinels of a "redis+sentinel" url require (their requirepass; "" = none): the url\'s own user and password are the master\'s', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    realm: str = _key(String(), "", 'digest realm ("" = the From domain)', in_effect=True)
    nonce_secret: str = _key(Secret(), "", 'HMAC key of the stateless nonces, the same on every node ("" = derived from the route signing key)', in_effect=True)  # noqa: E501
    nonce_expire: float = _key(Seconds(0, above=True), 300, "seconds a nonce stays valid", in_effect=True)  # noqa: E501
    trusted: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs never challenged (the backends are trusted anyway)", in_effect=True)  # noqa: E501
    max_failures_user: int = _key(Integer(1, 1_000_000), 3, "failed authentications of one user, within failure_window, before the user is banned", in_effect=True)  # noqa: E501
    max_failures_source: int = _key(Integer(1, 1_000_000), 20, "failed authentications from one address, within failure_window, before the address is banned", in_effect=True)  # noqa: E501
    failure_window: float = _key(Seconds(0, above=True), 300, "seconds over which failed authentications are counted", in_effect=True)  # noqa: E501
    ban_time: float = _key(Seconds(0, above=True), 900, "seconds a banned user or address is refused 403", in_effect=True)  # noqa: E501
    # RFC 8760 §2.4: one challenge per algorithm, in order of preference, and a client
    # uses the first it supports. Few do: SIPp 3.6 and sipsak 0.9 read only the first
    # challenge, JsSIP 3 and SIP.js 0.21 only the last (their parsers replace each by the
    # next), baresip 1.0 gives up on any that is not MD5, and all of them know only MD5. So
    # MD5 alone by default, as Kamailio, Asterisk and FreeSWITCH offer.
    algorithms: tuple[str, ...] = _key(StringList('a list of "MD5" and "SHA-256"', digest_algorithm), ["MD5"], "digest algorithms offered, one challenge each, in this order (MD5 alone by default: SIPp, sipsak, baresip, JsSIP and SIP.js know only MD5, and none of them picks among several challenges)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatcherConfig:
    destinations: tuple[str, ...] = _key(StringList('a list of SIP URIs (e.g. "sip:10.0.0.5:5060")', sip_uri), ["sip:127.0.0.1:5080"], "backend SIP URIs, all in set 1 at equal priority (used when list_file is empty)", in_effect=True)  # noqa: E501
    list_file: str = _key(String(), "", 'Kamailio-format dispatcher.list; overrides destinations ("" = none)', in_effect=True)  # noqa: E501
    setid: int = _key(Integer(0, 2**31 - 1), 1, "the set whose destinations receive the requests of clients", in_effect=True)  # noqa: E501
    algorithm: int = _key(Integer(0, 13), 4, "Kamailio ds_select algorithm number: 0-3, 5 hashes, 4 round-robin, 6 random, 8 priority, 9 weight, 10 call load, 11 relative weight", in_effect=True)  # noqa: E501
    ping_interval: float = _key(Seconds(), 10, "seconds between OPTIONS probes of each destination (0 = no probes)", in_effect=True)  # noqa: E501
    ping_timeout: float = _key(Seconds(0, above=True), 2, "seconds a probe waits for its reply before it counts as failed", in_effect=True)  # noqa: E501
    probing_mode: int = _key(Integer(0, 3), 1, "Kamailio ds_probing_mode: 0 probe destinations flagged P, 1 all, 2 the inactive ones, 3 flagged P and keep the flag", in_effect=True)  # noqa: E501
    probing_threshold: int = _key(Integer(1, 1000), 1, "failed probes (or timed-out requests) in a row before a destination goes inactive", in_effect=True)  # noqa: E501
    inactive_threshold: int = _key(Integer(1, 1000), 1, "answered probes in a row before an inactive destination is active again", in_effect=True)  # noqa: E501
    ping_from: str = _key(String(uri_problem), "sip:dispatcher@localhost", "From URI of the OPTIONS probes", in_effect=True)  # noqa: E501
    ping_reply_codes: tuple[str, ...] = _key(StringList('a list of status codes such as "403" or "2xx"', status_code), ["2xx", "403", "404", "405", "501"], "probe reply codes that mean the destination is alive (it answered)", in_effect=True)  # noqa: E501
    failover_codes: tuple[str, ...] = _key(StringList('a list of status codes such as "408" or "5xx"', status_code), ["408", "5xx"], "reply codes after which a request goes to the next destination (timeouts and transport errors always do)", in_effect=True)  # noqa: E501
    max_failover: int = _key(Integer(0, 100), 2, "most further destinations one request is sent to after the first fails", in_effect=True)  # noqa: E501
    retry_after: int = _key(Integer(0, 86400), 10, "Retry-After seconds in the 503 sent when no destination is usable", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class AclConfig:
    allow: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs that may send to every listener ([] = everybody); deny lists win over it", in_effect=True)  # noqa: E501
    deny: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs refused on every listener: their messages are dropped unread and unanswered", in_effect=True)  # noqa: E501
    udp_allow: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs that may send over UDP ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    udp_deny: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs refused over UDP", in_effect=True)  # noqa: E501
    tcp_allow: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs that may connect over TCP ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    tcp_deny: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs refused over TCP (their connection is closed)", in_effect=True)  # noqa: E501
    tls_allow: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs that may connect over TLS ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    tls_deny: tuple[IPNetwork, ...] = _key(NETWORKS, [], "CIDRs refused over TLS (their connection is closed)", in_effect=True)  # noqa: E501
    ws_allow: tuple[IPNetwork, ...] = _key(NETWORKS, [], "client CIDRs that may use WebSocket, matched against the client address (behind websocket.trusted_proxies, the one they name) ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    ws_deny: tuple[IPNetwork, ...] = _key(NETWORKS, [], "client CIDRs refused over WebSocket (their connection is closed)", in_effect=True)  # noqa: E501
    wss_allow: tuple[IPNetwork, ...] = _key(NETWORKS, [], "client CIDRs that may use secure WebSocket ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    wss_deny: tuple[IPNetwork, ...] = _key(NETWORKS, [], "client CIDRs refused over secure WebSocket (their connection is closed)", in_effect=True)  # noqa: E501
    user_agent_deny: tuple[str, ...] = _key(StringList("a list of strings", user_agent_part), ["friendly-scanner", "sipvicious", "sipcli", "VaxSIPUserAgent", "pplsip", "sundayddr", "iWar", "sip-scan", "SIVuS"], "requests whose User-Agent contains one of these, ignoring case, are dropped without an answer (the well-known SIP scanners; [] = none)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class PikeConfig:
    enabled: bool = _key(Bool(), True, "block source addresses that flood sipgw with messages (auth.trusted and the backends are never blocked)", in_effect=True)  # noqa: E501
    sampling_time_unit: float = _key(Seconds(0, above=True), 2, "length of one sampling interval (seconds)", in_effect=True)  # noqa: E501
    reqs_density_per_unit: int = _key(Integer(1, 1_000_000), 30, "requests one address may send per interval (replies do not count); one more and it is blocked: what it sends is dropped unanswered", in_effect=True)  # noqa: E501
    remove_latency: float = _key(Seconds(), 120, "seconds a blocked address must stay quiet before it is released", in_effect=True)  # noqa: E501
    max_sources: int = _key(Integer(16, 10_000_000), 50000, "most source addresses tracked at once; beyond it the least recently active is forgotten (a flood from spoofed addresses cannot grow memory)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class OverloadConfig:
    enabled: bool = _key(Bool(), True, "past its capacity, refuse new initial requests (REGISTER, INVITE, ...) first, to keep serving the requests and calls already under way", in_effect=True)  # noqa: E501
    shed_delay: float = _key(Seconds(0, above=True), 0.05, "seconds sipgw may run late (a datagram waiting in the kernel, the event loop behind, or bytes waiting on a stream connection) before it refuses a share of new initial requests over UDP with 503", in_effect=True)  # noqa: E501
    stream_shed_delay: float = _key(Seconds(0, above=True), 2.0, "seconds a request over TCP, TLS or WebSocket may wait (the event loop behind, or bytes waiting on its connection) before a share of new initial requests over those is refused with 503. Nobody retransmits there and TCP bounds the queue, so refusing does not raise what gets served and costs more (JsSIP does not retry a REGISTER refused with 503 until it reconnects): only when an answer would come too late to be of use. 2 s: a REGISTER with digest crosses sipgw twice and still completes within seconds, far within the 32 s (64*T1, RFC 3261 Timer B/F) a client waits for an answer", in_effect=True)  # noqa: E501
    drop_delay: float = _key(Seconds(0, above=True), 0.15, "seconds late past which refused requests over UDP are dropped unread instead of answered (more than shed_delay)", in_effect=True)  # noqa: E501
    retry_after: int = _key(Integer(0, 86400), 5, "the shortest Retry-After of a 503 sent under overload (seconds)", in_effect=True)  # noqa: E501
    retry_after_max: int = _key(Integer(0, 86400), 60, "the longest Retry-After, reached when every new request is refused; each 503 names a time spread between the two (seconds)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    socket: str = _key(String(not_empty), "/run/sipgw/sipgw.ctl", "unix socket of the JSON-RPC control plane (sipgw ctl); when not root and its directory is not writable, the same name under state.directory", in_effect=True)  # noqa: E501
    mode: int = _key(FileMode(), "0660", "permissions of the control socket, in octal", in_effect=True)  # noqa: E501
    group: str = _key(String(), "", 'group owning the control socket ("" = the service\'s group)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    listen: Address | None = _key(OptionalAddress(), "", 'host:port serving Prometheus /metrics, e.g. "127.0.0.1:9090" ("" = off)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceConfig:
    hep: Address | None = _key(OptionalAddress(), "", 'host:port of a Homer collector: every SIP message in and out is sent to it as HEP v3 over UDP ("" = off)', in_effect=True)  # noqa: E501
    hep_agent_id: int = _key(Integer(0, 4294967295), 0, "HEP capture agent id, to tell the nodes apart in Homer", in_effect=True)  # noqa: E501
    hep_password: str = _key(Secret(), "", 'HEP authentication key the collector expects ("" = none)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: int = _key(LogLevel(), "info", "log level: error, warning, notice, info, debug, or a Kamailio number -5..3", in_effect=True)  # noqa: E501

    @property
    def level_name(self) -> str:
        return LOG_LEVEL_NAMES[self.level]

    @property
    def python_level(self) -> int:
        """The matching ``logging`` number; notice is 25, alert..crit are CRITICAL."""
        return PYTHON_LEVELS[self.level]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    directory: str = _key(String(absolute_path), "/var/lib/sipgw", "directory of sipgw's own files: the default SQLite store, the control socket when not root", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listen: ListenConfig = _section("where sipgw accepts SIP, per transport")
    tls: TlsConfig = _section("certificate and protocol settings of the tls and wss listeners")
    websocket: WebSocketConfig = _section("WebSocket clients (browsers)")
    proxy: ProxyConfig = _section("how requests are relayed")
    timers: TimersConfig = _section("SIP transaction timers (RFC 3261 §17)")
    limits: LimitsConfig = _section("bounds on what one peer may cost")
    subscribers: SubscribersConfig = _section("where the SIP accounts live")
    auth: AuthConfig = _section("digest authentication")
    dispatcher: DispatcherConfig = _section("the backends requests are sent to")
    pike: PikeConfig = _section("flood detection per source address")
    overload: OverloadConfig = _section("shedding new requests when sipgw is past its capacity")
    acl: AclConfig = _section("who may send to sipgw: source addresses per transport, User-Agents")  # noqa: E501
    control: ControlConfig = _section("the control socket used by sipgw ctl")
    metrics: MetricsConfig = _section("Prometheus metrics")
    trace: TraceConfig = _section("live trace and HEP export to Homer")
    log: LogConfig = _section("logging")
    state: StateConfig = _section("where sipgw keeps its own files")


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    """One key of the file: ``section.name``, its parser, TOML default and help."""

    section: str
    name: str
    kind: Kind
    default: object
    help: str
    in_effect: bool

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    name: str
    help: str
    cls: type
    keys: tuple[Key, ...]


def _build_schema() -> tuple[Section, ...]:
    sections = []
    hints = get_type_hints(Config)
    for section_field in fields(Config):
        cls = hints[section_field.name]
        keys = []
        for key_field in fields(cls):
            declared: _Declaration = key_field.metadata["sipgw"]
            keys.append(Key(section=section_field.name, name=key_field.name, kind=declared.kind,
                            default=declared.default, help=declared.help,
                            in_effect=declared.in_effect))  # fmt: skip
        sections.append(Section(name=section_field.name, help=section_field.metadata["sipgw"],
                                cls=cls, keys=tuple(keys)))  # fmt: skip
    return tuple(sections)


SECTIONS: tuple[Section, ...] = _build_schema()
SCHEMA: tuple[Key, ...] = tuple(key for section in SECTIONS for key in section.keys)
