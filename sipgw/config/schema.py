"""sipgw.toml: the typed configuration loader (DESIGN.md §4).

Every key is declared once, in the section dataclass that holds it (``_key(...)`` below):
its parser, its default as written in TOML, one line of help, and ``in_effect`` -- whether
the running code uses it yet. ``SCHEMA`` and ``SECTIONS`` are derived from those
declarations; the tests check that sipgw.toml(5) and etc/sipgw.toml.example list every key
with its default, so the documents cannot drift from the code.

The rules of the file:

* every key is optional; a key that is missing takes its default;
* an unknown section or key is an error, with a "did you mean" hint;
* types are strict: a boolean is not an integer, an integer is fine where seconds are wanted;
* every error names the file, the line and the key:
  ``/etc/sipgw/sipgw.toml:12: listen.udp: expected a list of "host:port" strings, got 5060``.

Pure: no twisted and no I/O beyond reading the one file, so the CLI and the tests can use it.
"""

from __future__ import annotations

import bisect
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, get_type_hints
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = "/etc/sipgw/sipgw.toml"
CONFIG_ENV_VAR = "SIPGW_CONFIG"
MASK = "***"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
StrPath = str | os.PathLike[str]


class ConfigError(Exception):
    """A configuration file sipgw refuses, naming the file, the line and the key."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        self.key = key
        where = path or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        text = f"{where}: {key}: {reason}" if key else f"{where}: {reason}"
        super().__init__(text)


class _Invalid(ValueError):
    """A value a kind refuses; ``index`` is the offending element of a list, if any."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


# --- values ---------------------------------------------------------------------------------


def _join_host_port(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


class Address(NamedTuple):
    """A "host:port" from the file; IPv6 hosts without their brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return _join_host_port(self.host, self.port)


class Advertise(NamedTuple):
    """listen.advertise: the host (and port, if given) sipgw writes about itself."""

    host: str
    port: int | None

    def __str__(self) -> str:
        return _join_host_port(self.host, self.port)


# Kamailio's debug levels (L_ALERT .. L_DBG) and their names; "error" rather than "err".
LOG_LEVEL_NAMES: Mapping[int, str] = {
    -5: "alert", -4: "bug", -3: "crit2", -2: "crit",
    -1: "error", 0: "warning", 1: "notice", 2: "info", 3: "debug",
}  # fmt: skip
_LOG_LEVEL_ALIASES = {"warn": 0, "err": -1, "critical": -2}
# Python logging numbers; NOTICE (25) sits between INFO and WARNING as in syslog.
_PYTHON_LEVELS = {-5: 50, -4: 50, -3: 50, -2: 50, -1: 40, 0: 30, 1: 25, 2: 20, 3: 10}


def parse_log_level(value: object) -> int:
    """A level name or Kamailio number (also as a string) -> the Kamailio number.

    Raises ValueError naming what is accepted; ``log.level`` RPC uses the same rule.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"[+-]?\d+", text):
            value = int(text)
        else:
            for number, name in LOG_LEVEL_NAMES.items():
                if name == text:
                    return number
            if text in _LOG_LEVEL_ALIASES:
                return _LOG_LEVEL_ALIASES[text]
    if isinstance(value, int) and not isinstance(value, bool) and value in LOG_LEVEL_NAMES:
        return value
    raise _Invalid(
        "expected a level name (error, warning, notice, info, debug) or a Kamailio"
        f" number -5..3, got {_show(value)}"
    )


# --- kinds: how a key's TOML value is checked, parsed and shown ------------------------------


def _show(value: object) -> str:
    """A value as TOML would write it, short enough for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, list):
        inner = ", ".join(_show(item) for item in value[:4])
        return f"[{inner}, ...]" if len(value) > 4 else f"[{inner}]"
    if isinstance(value, dict):
        return "a table"
    return str(value)  # TOML dates and times


class _Kind:
    __slots__ = ()

    def parse(self, value: object) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        """The parsed value as JSON for cfg.get, in the form the file accepts."""
        return value


class _String(_Kind):
    __slots__ = ("check",)

    def __init__(self, check: Callable[[str], str | None] | None = None) -> None:
        self.check = check

    def parse(self, value: object) -> Any:
        if not isinstance(value, str):
            raise _Invalid(f"expected a string, got {_show(value)}")
        problem = self.check(value) if self.check else None
        if problem:
            raise _Invalid(f"{_show(value)}: {problem}")
        return value


class _Secret(_String):
    """A string never shown: not in errors, masked by config_to_dict."""

    __slots__ = ()

    def parse(self, value: object) -> Any:
        if not isinstance(value, str):
            raise _Invalid("expected a string (value not shown: it is a secret)")
        return value

    def dump(self, value: Any) -> Any:
        return MASK if value else ""


class _Bool(_Kind):
    __slots__ = ()

    def parse(self, value: object) -> Any:
        if not isinstance(value, bool):
            raise _Invalid(f"expected true or false, got {_show(value)}")
        return value


class _Integer(_Kind):
    __slots__ = ("low", "high")

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high

    def parse(self, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_show(value)}")
        if not self.low <= value <= self.high:
            raise _Invalid(f"must be between {self.low} and {self.high}, got {value}")
        return value


class _Seconds(_Kind):
    """A duration: an integer or a float in the file, always a float once parsed."""

    __slots__ = ("low", "above")

    def __init__(self, low: float = 0.0, *, above: bool = False) -> None:
        self.low = low
        self.above = above

    def parse(self, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"expected a number of seconds, got {_show(value)}")
        seconds = float(value)
        if not math.isfinite(seconds):
            raise _Invalid(f"expected a finite number of seconds, got {_show(value)}")
        if self.above and seconds <= self.low:
            raise _Invalid(f"must be more than {self.low:g} seconds, got {_show(value)}")
        if seconds < self.low:
            raise _Invalid(f"must be at least {self.low:g} seconds, got {_show(value)}")
        return seconds


def _list_of_strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid(f"expected {what}, got {_show(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _Invalid(f"expected {what}, got {_show(value)}", index)
    return value


class _StringList(_Kind):
    __slots__ = ("what", "item")

    def __init__(self, what: str, item: Callable[[str], Any]) -> None:
        self.what = what
        self.item = item  # parses one element or raises _Invalid

    def parse(self, value: object) -> Any:
        out = []
        for index, text in enumerate(_list_of_strings(value, self.what)):
            try:
                parsed = self.item(text)
            except _Invalid as exc:
                raise _Invalid(f"{_show(text)}: {exc.reason}", index) from None
            if parsed in out:
                raise _Invalid(f"{_show(text)} is listed twice", index)
            out.append(parsed)
        return tuple(out)

    def dump(self, value: Any) -> Any:
        return [str(item) for item in value]


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _check_host(host: str) -> None:
    if not host:
        raise _Invalid("the host is missing")
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _Invalid(f"{host} is not an IPv4 address") from None
        return
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise _Invalid(f"{host!r} is not a host name or address")


def _parse_host_port(text: str, *, need_port: bool) -> tuple[str, int | None]:
    """ "host", "host:port", "[v6]" or "[v6]:port" -> (host without brackets, port)."""
    port_text: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _Invalid('the "]" closing the IPv6 address is missing')
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{host!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise _Invalid('expected ":port" after the "]"')
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise _Invalid('an IPv6 address needs brackets, e.g. "[::1]:5060"')
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        _check_host(host)
    if port_text is None:
        if need_port:
            raise _Invalid('the ":port" is missing')
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _Invalid("the port must be a number between 1 and 65535")
    return host, int(port_text)


def _address(text: str) -> Address:
    host, port = _parse_host_port(text, need_port=True)
    assert port is not None
    return Address(host, port)


class _OptionalAddress(_Kind):
    """ "" (off) or one "host:port"; with ``port_optional``, "host" alone too."""

    __slots__ = ("port_optional",)

    def __init__(self, *, port_optional: bool = False) -> None:
        self.port_optional = port_optional

    def parse(self, value: object) -> Any:
        wanted = '"host[:port]"' if self.port_optional else '"host:port"'
        if not isinstance(value, str):
            raise _Invalid(f'expected a {wanted} string or "", got {_show(value)}')
        if not value:
            return None
        try:
            host, port = _parse_host_port(value, need_port=not self.port_optional)
        except _Invalid as exc:
            raise _Invalid(f"{_show(value)}: {exc.reason}") from None
        return Advertise(host, port) if self.port_optional else Address(host, port)  # type: ignore[arg-type]

    def dump(self, value: Any) -> Any:
        return "" if value is None else str(value)


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid('not an address or CIDR (e.g. "10.0.0.0/8" or "192.0.2.7")') from None
    raise _Invalid(f'host bits are set (did you mean "{loose}"?)')


def _alias(text: str) -> str:
    _parse_host_port(text, need_port=False)
    return text


def _user_agent_part(text: str) -> str:
    if not text.strip():
        raise _Invalid("must not be empty (it would match every User-Agent)")
    return text


def _origin(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+", text):
        raise _Invalid('expected an origin such as "https://phone.example.com"')
    return text


def _ws_url(text: str) -> str:
    if not re.fullmatch(r"wss?://[^/\s?#]+(?:[/?][^\s#]*)?", text):
        raise _Invalid('expected a WebSocket URL such as "wss://sip.example.com/ws"')
    return text


def _sip_uri(text: str) -> str:
    # A light check; the SIP core parses it fully when the dispatcher loads it.
    match = re.fullmatch(
        r"(?i:sips?):(?:[^@]*@)?(\[[^\]]*\]|[^:;?@\[\]]*)(?::([^;?]*))?(?:[;?].*)?", text
    )
    if match is None or match.group(1) in ("", "[]"):
        raise _Invalid('expected a SIP URI with a host, e.g. "sip:10.0.0.5:5060"')
    port = match.group(2)
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise _Invalid("the port must be a number between 1 and 65535")
    return text


def _uri_problem(text: str) -> str | None:
    try:
        _sip_uri(text)
    except _Invalid as exc:
        return exc.reason
    return None


def _status_code(text: str) -> str:
    if not re.fullmatch(r"[1-6](?:\d\d|xx)", text):
        raise _Invalid('expected a status code such as "408" or a class such as "5xx"')
    return text


def _mask_url(url: str) -> str:
    """ "redis://user:secret@host:6379/2" -> "redis://user:***@host:6379/2"."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:{MASK}" if colon else MASK
    return parts._replace(netloc=f"{masked}@{hostport}").geturl()


class _SubscriberUrl(_Kind):
    """ "sqlite:///ABSOLUTE/PATH", "redis://[user:pass@]host[:port][/db]", or "" (derived)."""

    __slots__ = ()

    def parse(self, value: object) -> Any:
        if not isinstance(value, str):
            raise _Invalid(f"expected a URL string, got {_show(value)}")
        if value == "" or (value.startswith("sqlite:///") and len(value) > len("sqlite:///")):
            return value
        if value.startswith("redis://"):
            problem = self._redis_problem(value)
            if problem is None:
                return value
            raise _Invalid(f"{_show(_mask_url(value))}: {problem}")
        raise _Invalid(
            'expected "sqlite:///PATH" or "redis://[user:pass@]host:port/db",'
            f" got {_show(_mask_url(value))}"
        )

    @staticmethod
    def _redis_problem(url: str) -> str | None:
        parts = urlsplit(url)
        try:
            parts.port
        except ValueError:
            return "the port must be a number between 1 and 65535"
        if not parts.hostname:
            return "the host is missing"
        if not re.fullmatch(r"(/\d*)?", parts.path):
            return "the database must be a number, as in redis://127.0.0.1:6379/2"
        return None

    def dump(self, value: Any) -> Any:
        return _mask_url(value)


class _FileMode(_Kind):
    __slots__ = ()

    def parse(self, value: object) -> Any:
        if not isinstance(value, str):
            hint = " (write it quoted)" if isinstance(value, int) else ""
            raise _Invalid(f'expected an octal string such as "0660", got {_show(value)}{hint}')
        if not re.fullmatch(r"0?[0-7]{3}", value):
            raise _Invalid(f'expected an octal string such as "0660", got {_show(value)}')
        return int(value, 8)

    def dump(self, value: Any) -> Any:
        return f"{value:04o}"


class _LogLevel(_Kind):
    __slots__ = ()

    def parse(self, value: object) -> Any:
        return parse_log_level(value)

    def dump(self, value: Any) -> Any:
        return LOG_LEVEL_NAMES[value]


def _absolute_path(text: str) -> str | None:
    return None if os.path.isabs(text) else "must be an absolute path"


def _not_empty(text: str) -> str | None:
    return None if text else "must not be empty"


def _header_value(text: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "must not contain control characters (it is written into a header)"
    return None


def _key_template(text: str) -> str | None:
    """subscribers.key_template: the Redis key of a user, from {username} and {domain}."""
    if "{username}" not in text:
        return "must contain {username}"
    try:
        text.format(username="u", domain="d")
    except (KeyError, IndexError, ValueError):
        return "only {username} and {domain} may be used"
    return None


def _digest_algorithm(text: str) -> str:
    if text.upper() not in ("MD5", "SHA-256"):
        raise _Invalid('expected "MD5" or "SHA-256" (RFC 8760)')
    return text.upper()


def _tls_version(text: str) -> str | None:
    return None if text in ("1.2", "1.3") else 'expected "1.2" or "1.3"'


_ADDRESSES = _StringList('a list of "host:port" strings', _address)
_NETWORKS = _StringList('a list of CIDR strings (e.g. "10.0.0.0/8")', _network)


# --- the schema -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Declaration:
    kind: _Kind
    default: object
    help: str
    in_effect: bool


def _key(kind: _Kind, default: object, help: str, *, in_effect: bool = False) -> Any:
    return field(metadata={"sipgw": _Declaration(kind=kind, default=default, help=help,
                                                 in_effect=in_effect)})  # fmt: skip


def _section(help: str) -> Any:
    return field(metadata={"sipgw": help})


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    udp: tuple[Address, ...] = _key(_ADDRESSES, ["0.0.0.0:5060"], 'SIP over UDP: a list of "host:port" ([] = off; IPv6 as "[::1]:5060")', in_effect=True)  # noqa: E501
    tcp: tuple[Address, ...] = _key(_ADDRESSES, ["0.0.0.0:5060"], 'SIP over TCP: a list of "host:port" ([] = off)', in_effect=True)  # noqa: E501
    tls: tuple[Address, ...] = _key(_ADDRESSES, [], 'SIP over TLS, e.g. ["0.0.0.0:5061"]; needs tls.certificate', in_effect=True)  # noqa: E501
    ws: tuple[Address, ...] = _key(_ADDRESSES, ["0.0.0.0:8080"], "SIP over WebSocket for browsers (direct, or behind nginx)", in_effect=True)  # noqa: E501
    wss: tuple[Address, ...] = _key(_ADDRESSES, [], 'SIP over secure WebSocket, e.g. ["0.0.0.0:8443"]; needs tls.certificate', in_effect=True)  # noqa: E501
    advertise: Advertise | None = _key(_OptionalAddress(port_optional=True), "", 'host[:port] sipgw writes in Via/Record-Route/Path when behind NAT ("" = the listening address)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    certificate: str = _key(_String(), "", "PEM file with the certificate chain for listen.tls and listen.wss", in_effect=True)  # noqa: E501
    private_key: str = _key(_String(), "", 'PEM file with the private key ("" = in the certificate file)', in_effect=True)  # noqa: E501
    min_version: str = _key(_String(_tls_version), "1.2", 'oldest TLS version accepted: "1.2" or "1.3"', in_effect=True)  # noqa: E501
    ciphers: str = _key(_String(), "", 'OpenSSL cipher string ("" = a safe default)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketConfig:
    trusted_proxies: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs whose X-Forwarded-For / X-Real-IP is believed (nginx in front)", in_effect=True)  # noqa: E501
    phone_page: bool = _key(_Bool(), True, "GET / on the ws/wss listeners serves the built-in test phone", in_effect=True)  # noqa: E501
    allowed_hosts: tuple[str, ...] = _key(_StringList('a list of "host" or "host:port" strings', _alias), [], "Host header values accepted in the WebSocket handshake, by name or name:port ([] = any; others get 403)", in_effect=True)  # noqa: E501
    allowed_origins: tuple[str, ...] = _key(_StringList('a list of origins (e.g. "https://phone.example.com")', _origin), [], "Origin values accepted in the WebSocket handshake ([] = any; others get 403)", in_effect=True)  # noqa: E501
    public_urls: tuple[str, ...] = _key(_StringList('a list of ws:// or wss:// URLs', _ws_url), [], "the URLs browsers connect to (through nginx, if it is in front), where sipgw doctor checks the handshake and the client address sipgw sees ([] = only the listeners)", in_effect=True)  # noqa: E501
    keepalive_interval: float = _key(_Seconds(), 25, "seconds a connection may stay idle before a ping, and then wait for its pong (0 = no pings)", in_effect=True)  # noqa: E501
    handshake_timeout: float = _key(_Seconds(0, above=True), 10, "seconds a client has to complete the WebSocket handshake", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    max_forwards: int = _key(_Integer(1, 255), 70, "Max-Forwards added to requests that have none, and the cap on larger values", in_effect=True)  # noqa: E501
    record_route: bool = _key(_Bool(), True, "insert Record-Route so that in-dialog requests come back through sipgw", in_effect=True)  # noqa: E501
    server_header: str = _key(_String(_header_value), "sipgw", 'User-Agent/Server value sipgw writes ("" = none)', in_effect=True)  # noqa: E501
    aliases: tuple[str, ...] = _key(_StringList('a list of "host" or "host:port" strings', _alias), [], "more host names or addresses that mean sipgw itself (OPTIONS to self, loop detection)", in_effect=True)  # noqa: E501
    drain_timeout: float = _key(_Seconds(), 10, "on SIGTERM, how long requests already received may take to get their final answer before sipgw exits (seconds; new requests get 503 meanwhile)", in_effect=True)  # noqa: E501
    nat_uac_test: int = _key(_Integer(0, 511), 19, "Kamailio nat_uac_test flags for UDP/TCP/TLS clients (0 = off); WebSocket clients are always NATed", in_effect=True)  # noqa: E501
    route_secret: str = _key(_Secret(), "", 'HMAC key that signs the Record-Route and contact aliases sipgw writes, the same on every node ("" = derived from auth.nonce_secret, or else a key kept in state.directory/route.key)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class TimersConfig:
    t1: float = _key(_Seconds(0, above=True), 0.5, "RFC 3261 T1, the round-trip estimate: first UDP retransmission interval (seconds)", in_effect=True)  # noqa: E501
    t2: float = _key(_Seconds(0, above=True), 4.0, "RFC 3261 T2, the cap on retransmission intervals (seconds)", in_effect=True)  # noqa: E501
    t4: float = _key(_Seconds(0, above=True), 5.0, "RFC 3261 T4, the longest a message stays in the network (seconds)", in_effect=True)  # noqa: E501
    timer_b: float = _key(_Seconds(0, above=True), 32.0, "INVITE client transaction timeout, 64*T1 (seconds)", in_effect=True)  # noqa: E501
    timer_f: float = _key(_Seconds(0, above=True), 32.0, "non-INVITE client transaction timeout, 64*T1 (seconds)", in_effect=True)  # noqa: E501
    # RFC 3261 §16.6 step 11: Timer C "MUST be larger than 3 minutes"; 180 is the floor.
    timer_c: float = _key(_Seconds(180), 180.0, "proxy INVITE timer: an unanswered branch is cancelled after this (seconds, at least 180)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_message_size: int = _key(_Integer(1024, 16 * 1024 * 1024), 65535, "largest SIP message accepted, in bytes", in_effect=True)  # noqa: E501
    max_headers: int = _key(_Integer(8, 10000), 256, "most header fields accepted in one message", in_effect=True)  # noqa: E501
    max_ruri_length: int = _key(_Integer(64, 65535), 1024, "longest Request-URI accepted, in bytes; a longer one gets 414 Request-URI Too Long", in_effect=True)  # noqa: E501
    max_transactions: int = _key(_Integer(1, 10_000_000), 100000, "most transactions in progress at once (not counting those done but for absorbing retransmissions); beyond it new requests get 503", in_effect=True)  # noqa: E501
    tcp_idle_timeout: float = _key(_Seconds(0, above=True), 300, "seconds before an idle TCP connection is closed", in_effect=True)  # noqa: E501
    ws_max_connections: int = _key(_Integer(1, 10_000_000), 20000, "most WebSocket connections at once (ws and wss); beyond it handshakes get 503", in_effect=True)  # noqa: E501
    ws_max_connections_per_address: int = _key(_Integer(1, 10_000_000), 1000, "most WebSocket connections from one client address (a contact center puts many agents behind one NAT)", in_effect=True)  # noqa: E501
    ws_register_timeout: float = _key(_Seconds(), 60, "seconds a WebSocket connection may stay open without sending a REGISTER (0 = forever)", in_effect=True)  # noqa: E501
    tcp_max_connections: int = _key(_Integer(1, 10_000_000), 20000, "most TCP and TLS connections from clients at once; beyond it new connections are closed as soon as they are accepted", in_effect=True)  # noqa: E501
    tcp_max_connections_per_address: int = _key(_Integer(1, 10_000_000), 1000, "most TCP and TLS connections from one client address at once", in_effect=True)  # noqa: E501
    tcp_first_message_timeout: float = _key(_Seconds(), 10, "seconds a new TCP or TLS connection from a client has to send its first complete SIP message before it is closed (0 = only tcp_idle_timeout)", in_effect=True)  # noqa: E501
    max_write_queue: int = _key(_Integer(4096, 1 << 30), 262144, "bytes sipgw keeps waiting for one TCP, TLS or WebSocket peer that is not reading, beyond the socket buffers; more and the connection is closed", in_effect=True)  # noqa: E501
    max_nonces: int = _key(_Integer(100, 100_000_000), 200000, "nonces whose last nonce-count is remembered against replays; beyond it the oldest is forgotten (its nonce is then stale)", in_effect=True)  # noqa: E501
    max_auth_failures: int = _key(_Integer(100, 100_000_000), 100000, "users and addresses whose failed authentications, and bans, are remembered; beyond it the oldest is forgotten", in_effect=True)  # noqa: E501
    max_trace_subscribers: int = _key(_Integer(1, 1000), 8, "trace.subscribe streams at once (sipgw trace); beyond it the call gets an error", in_effect=True)  # noqa: E501
    max_dialogs: int = _key(_Integer(100, 100_000_000), 100000, "dialogs tracked for dlg.list and dialog:active_dialogs; beyond it the oldest is forgotten", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribersConfig:
    url: str = _key(_SubscriberUrl(), "", 'subscriber store: "sqlite:///PATH" or "redis://[user:pass@]host:port/db" ("" = sqlite:///<state.directory>/subscribers.db)', in_effect=True)  # noqa: E501
    key_template: str = _key(_String(_key_template), "subscriber:{username}", 'Redis key of a user\'s hash; "subscriber:entry::{username}:{domain}" reads a Kamailio db_redis database', in_effect=True)  # noqa: E501
    connect_timeout: float = _key(_Seconds(0, above=True), 2, "seconds to wait for a connection to Redis", in_effect=True)  # noqa: E501
    command_timeout: float = _key(_Seconds(0, above=True), 1, "seconds to wait for Redis to answer a lookup before the request gets 503", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    realm: str = _key(_String(), "", 'digest realm ("" = the From domain)', in_effect=True)
    nonce_secret: str = _key(_Secret(), "", 'HMAC key of the stateless nonces, the same on every node ("" = random per start)', in_effect=True)  # noqa: E501
    nonce_expire: float = _key(_Seconds(0, above=True), 300, "seconds a nonce stays valid", in_effect=True)  # noqa: E501
    trusted: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs never challenged (the backends are trusted anyway)", in_effect=True)  # noqa: E501
    max_failures_user: int = _key(_Integer(1, 1_000_000), 3, "failed authentications of one user, within failure_window, before the user is banned", in_effect=True)  # noqa: E501
    max_failures_source: int = _key(_Integer(1, 1_000_000), 20, "failed authentications from one address, within failure_window, before the address is banned", in_effect=True)  # noqa: E501
    failure_window: float = _key(_Seconds(0, above=True), 300, "seconds over which failed authentications are counted", in_effect=True)  # noqa: E501
    ban_time: float = _key(_Seconds(0, above=True), 900, "seconds a banned user or address is refused 403", in_effect=True)  # noqa: E501
    algorithms: tuple[str, ...] = _key(_StringList('a list of "MD5" and "SHA-256"', _digest_algorithm), ["MD5"], "digest algorithms offered, one challenge each, in this order (MD5 alone by default: SIPp, sipsak, baresip, JsSIP and SIP.js know only MD5, and none of them picks among several challenges)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatcherConfig:
    destinations: tuple[str, ...] = _key(_StringList('a list of SIP URIs (e.g. "sip:10.0.0.5:5060")', _sip_uri), ["sip:127.0.0.1:5080"], "backend SIP URIs, all in set 1 at equal priority (used when list_file is empty)", in_effect=True)  # noqa: E501
    list_file: str = _key(_String(), "", 'Kamailio-format dispatcher.list; overrides destinations ("" = none)', in_effect=True)  # noqa: E501
    setid: int = _key(_Integer(0, 2**31 - 1), 1, "the set whose destinations receive the requests of clients", in_effect=True)  # noqa: E501
    algorithm: int = _key(_Integer(0, 13), 4, "Kamailio ds_select algorithm number: 0-3, 5 hashes, 4 round-robin, 6 random, 8 priority, 9 weight, 10 call load, 11 relative weight", in_effect=True)  # noqa: E501
    ping_interval: float = _key(_Seconds(), 10, "seconds between OPTIONS probes of each destination (0 = no probes)", in_effect=True)  # noqa: E501
    ping_timeout: float = _key(_Seconds(0, above=True), 2, "seconds a probe waits for its reply before it counts as failed", in_effect=True)  # noqa: E501
    probing_mode: int = _key(_Integer(0, 3), 1, "Kamailio ds_probing_mode: 0 probe destinations flagged P, 1 all, 2 the inactive ones, 3 flagged P and keep the flag", in_effect=True)  # noqa: E501
    probing_threshold: int = _key(_Integer(1, 1000), 1, "failed probes (or timed-out requests) in a row before a destination goes inactive", in_effect=True)  # noqa: E501
    inactive_threshold: int = _key(_Integer(1, 1000), 1, "answered probes in a row before an inactive destination is active again", in_effect=True)  # noqa: E501
    ping_from: str = _key(_String(_uri_problem), "sip:dispatcher@localhost", "From URI of the OPTIONS probes", in_effect=True)  # noqa: E501
    ping_reply_codes: tuple[str, ...] = _key(_StringList('a list of status codes such as "403" or "2xx"', _status_code), ["2xx", "403", "404", "405", "501"], "probe reply codes that mean the destination is alive (it answered)", in_effect=True)  # noqa: E501
    failover_codes: tuple[str, ...] = _key(_StringList('a list of status codes such as "408" or "5xx"', _status_code), ["408", "5xx"], "reply codes after which a request goes to the next destination (timeouts and transport errors always do)", in_effect=True)  # noqa: E501
    max_failover: int = _key(_Integer(0, 100), 2, "most further destinations one request is sent to after the first fails", in_effect=True)  # noqa: E501
    retry_after: int = _key(_Integer(0, 86400), 10, "Retry-After seconds in the 503 sent when no destination is usable", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class AclConfig:
    allow: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs that may send to every listener ([] = everybody); deny lists win over it", in_effect=True)  # noqa: E501
    deny: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs refused on every listener: their messages are dropped unread and unanswered", in_effect=True)  # noqa: E501
    udp_allow: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs that may send over UDP ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    udp_deny: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs refused over UDP", in_effect=True)  # noqa: E501
    tcp_allow: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs that may connect over TCP ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    tcp_deny: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs refused over TCP (their connection is closed)", in_effect=True)  # noqa: E501
    tls_allow: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs that may connect over TLS ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    tls_deny: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "CIDRs refused over TLS (their connection is closed)", in_effect=True)  # noqa: E501
    ws_allow: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "client CIDRs that may use WebSocket, matched against the client address (behind websocket.trusted_proxies, the one they name) ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    ws_deny: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "client CIDRs refused over WebSocket (their connection is closed)", in_effect=True)  # noqa: E501
    wss_allow: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "client CIDRs that may use secure WebSocket ([] = no limit beyond acl.allow)", in_effect=True)  # noqa: E501
    wss_deny: tuple[IPNetwork, ...] = _key(_NETWORKS, [], "client CIDRs refused over secure WebSocket (their connection is closed)", in_effect=True)  # noqa: E501
    user_agent_deny: tuple[str, ...] = _key(_StringList("a list of strings", _user_agent_part), ["friendly-scanner", "sipvicious", "sipcli", "VaxSIPUserAgent", "pplsip", "sundayddr", "iWar", "sip-scan", "SIVuS"], "requests whose User-Agent contains one of these, ignoring case, are dropped without an answer (the well-known SIP scanners; [] = none)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class PikeConfig:
    enabled: bool = _key(_Bool(), True, "block source addresses that flood sipgw with messages (auth.trusted and the backends are never blocked)", in_effect=True)  # noqa: E501
    sampling_time_unit: float = _key(_Seconds(0, above=True), 2, "length of one sampling interval (seconds)", in_effect=True)  # noqa: E501
    reqs_density_per_unit: int = _key(_Integer(1, 1_000_000), 30, "requests one address may send per interval (replies do not count); one more and it is blocked: what it sends is dropped unanswered", in_effect=True)  # noqa: E501
    remove_latency: float = _key(_Seconds(), 120, "seconds a blocked address must stay quiet before it is released", in_effect=True)  # noqa: E501
    max_sources: int = _key(_Integer(16, 10_000_000), 50000, "most source addresses tracked at once; beyond it the least recently active is forgotten (a flood from spoofed addresses cannot grow memory)", in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    socket: str = _key(_String(_not_empty), "/run/sipgw/sipgw.ctl", "unix socket of the JSON-RPC control plane (sipgw ctl); when not root and its directory is not writable, the same name under state.directory", in_effect=True)  # noqa: E501
    mode: int = _key(_FileMode(), "0660", "permissions of the control socket, in octal", in_effect=True)  # noqa: E501
    group: str = _key(_String(), "", 'group owning the control socket ("" = the service\'s group)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    listen: Address | None = _key(_OptionalAddress(), "", 'host:port serving Prometheus /metrics, e.g. "127.0.0.1:9090" ("" = off)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceConfig:
    hep: Address | None = _key(_OptionalAddress(), "", 'host:port of a Homer collector: every SIP message in and out is sent to it as HEP v3 over UDP ("" = off)', in_effect=True)  # noqa: E501
    hep_agent_id: int = _key(_Integer(0, 4294967295), 0, "HEP capture agent id, to tell the nodes apart in Homer", in_effect=True)  # noqa: E501
    hep_password: str = _key(_Secret(), "", 'HEP authentication key the collector expects ("" = none)', in_effect=True)  # noqa: E501


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: int = _key(_LogLevel(), "info", "log level: error, warning, notice, info, debug, or a Kamailio number -5..3", in_effect=True)  # noqa: E501

    @property
    def level_name(self) -> str:
        return LOG_LEVEL_NAMES[self.level]

    @property
    def python_level(self) -> int:
        """The matching ``logging`` number; notice is 25, alert..crit are CRITICAL."""
        return _PYTHON_LEVELS[self.level]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    directory: str = _key(_String(_absolute_path), "/var/lib/sipgw", "directory of sipgw's own files: the default SQLite store, the control socket when not root", in_effect=True)  # noqa: E501


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
    kind: _Kind
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
_SECTION_BY_NAME = {section.name: section for section in SECTIONS}
_KEY_BY_DOTTED = {key.dotted: key for key in SCHEMA}


# --- finding the line of a key ----------------------------------------------------------------


class _Locator:
    """Line numbers of the keys in a TOML text that tomllib has already accepted.

    Follows ``[table]`` and ``[[array]]`` headers, dotted and quoted keys, inline tables and
    arrays (element ``i`` of ``a.b`` is the path ``("a", "b", i)``), and skips strings and
    comments so text inside them is never mistaken for a key. The text is known to be valid
    TOML, which keeps this a skimmer rather than a parser.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str) -> None:
        self._text = text
        self._newlines = [match.start() for match in re.finditer("\n", text)]
        self.lines: dict[tuple[object, ...], int] = {}
        self._scan()

    def _note(self, path: tuple[object, ...], pos: int) -> None:
        line = bisect.bisect_left(self._newlines, pos) + 1
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def _scan(self) -> None:
        text, i, table = self._text, 0, ()
        while True:
            i = self._skip_blank(i, newlines=True)
            if i >= len(text):
                return
            start = i
            if text[i] == "[":
                width = 2 if text.startswith("[[", i) else 1
                parts, i = self._read_key(i + width)
                table = parts
                self._note(table, start)
                i += width
            else:
                parts, i = self._read_key(i)
                self._note(table + parts, start)
                i = self._skip_value(i + 1, table + parts)  # i was at the "="

    def _skip_blank(self, i: int, *, newlines: bool) -> int:
        text = self._text
        while i < len(text):
            c = text[i]
            if c in " \t" or (newlines and c in "\r\n"):
                i += 1
            elif c == "#":
                end = text.find("\n", i)
                i = len(text) if end < 0 else (end + 1 if newlines else end)
            else:
                break
        return i

    def _read_key(self, i: int) -> tuple[tuple[object, ...], int]:
        text, parts = self._text, []
        while True:
            i = self._skip_blank(i, newlines=False)
            if text[i] == '"':
                end = self._end_of_basic(i)
                parts.append(tomllib.loads(f"k = {text[i:end]}")["k"])  # unescapes for us
            elif text[i] == "'":
                end = text.index("'", i + 1) + 1
                parts.append(text[i + 1 : end - 1])
            else:
                match = self._BARE.match(text, i)
                assert match is not None
                end = match.end()
                parts.append(match.group())
            i = self._skip_blank(end, newlines=False)
            if text[i] != ".":
                return tuple(parts), i
            i += 1

    def _end_of_basic(self, i: int) -> int:
        text, i = self._text, i + 1
        while text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1

    def _end_of_multiline(self, i: int, quotes: str) -> int:
        text, i = self._text, i + 3
        while True:
            k = text.index(quotes, i)
            backslashes = 0
            while quotes == '"""' and text[k - 1 - backslashes] == "\\":
                backslashes += 1
            if backslashes % 2:
                i = k + 1
                continue
            end = k + 3
            while end < len(text) and end - k < 5 and text[end] == quotes[0]:
                end += 1  # up to two quotes just before the closing ones are content
            return end

    def _skip_value(self, i: int, path: tuple[object, ...]) -> int:
        text = self._text
        i = self._skip_blank(i, newlines=False)
        if text.startswith('"""', i) or text.startswith("'''", i):
            return self._end_of_multiline(i, text[i : i + 3])
        if text[i] == '"':
            return self._end_of_basic(i)
        if text[i] == "'":
            return text.index("'", i + 1) + 1
        if text[i] in "[{":
            return self._skip_container(i, path)
        while i < len(text) and text[i] not in ",]}\r\n#":
            i += 1  # number, boolean, date or time
        return i

    def _skip_container(self, i: int, path: tuple[object, ...]) -> int:
        text, closing, index = self._text, "]" if self._text[i] == "[" else "}", 0
        i += 1
        while True:
            i = self._skip_blank(i, newlines=True)
            if text[i] == closing:
                return i + 1
            start = i
            if closing == "]":
                sub = path + (index,)
            else:
                parts, i = self._read_key(i)
                sub = path + parts
                i += 1  # the "="
            self._note(sub, start)
            i = self._skip_value(i, sub)
            i = self._skip_blank(i, newlines=True)
            if text[i] == ",":
                i += 1
                index += 1


# --- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedConfig:
    config: Config
    path: str | None  # None: the embedded default
    not_in_effect: list[str]  # keys the file sets that the running code does not use yet


class _Where:
    """Builds errors for one file; its lines are only scanned when an error needs one."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self._text = text
        self._lines: dict[tuple[object, ...], int] | None = None

    def _line_of(self, path: tuple[object, ...]) -> int | None:
        if self._lines is None:
            try:
                self._lines = _Locator(self._text).lines
            except (IndexError, ValueError, AssertionError):
                # A TOML corner the skimmer does not know: the error goes without a line
                # rather than losing its reason to a traceback.
                self._lines = {}
        return self._lines.get(path)

    def error(self, dotted: str, reason: str, index: int | None = None) -> ConfigError:
        path = tuple(dotted.split("."))
        line = self._line_of(path + (index,)) if index is not None else None
        if line is None:
            line = self._line_of(path)
        return ConfigError(reason, path=self.path, line=line, key=dotted)


def _did_you_mean(section: str, name: str | None) -> str:
    """A hint for an unknown ``section`` or ``section.name``; "" when nothing is close."""
    if name is None:
        close = difflib.get_close_matches(section, list(_SECTION_BY_NAME), n=1)
        same = [key.dotted for key in SCHEMA if key.name == section]
    else:
        known = [key.name for key in _SECTION_BY_NAME[section].keys]
        close = [f"{section}.{m}" for m in difflib.get_close_matches(name, known, n=1)]
        same = [key.dotted for key in SCHEMA if key.name == name]
    guess = (close or same or [None])[0]
    return f" (did you mean {guess}?)" if guess else ""


def _parse_raw(raw: dict[str, Any], where: _Where) -> tuple[Config, list[str]]:
    values = {key.dotted: key.kind.parse(key.default) for key in SCHEMA}
    in_file: set[str] = set()
    for section_name, table in raw.items():
        if section_name not in _SECTION_BY_NAME:
            hint = _did_you_mean(section_name, None)
            if isinstance(table, dict):
                raise where.error(section_name, f"unknown section{hint}")
            raise where.error(section_name, f"unknown key outside any [section]{hint}")
        if not isinstance(table, dict):
            raise where.error(
                section_name, f"expected a table ([{section_name}]), got {_show(table)}"
            )
        for name, value in table.items():
            dotted = f"{section_name}.{name}"
            key = _KEY_BY_DOTTED.get(dotted)
            if key is None:
                raise where.error(dotted, f"unknown key{_did_you_mean(section_name, name)}")
            try:
                values[dotted] = key.kind.parse(value)
            except _Invalid as exc:
                raise where.error(dotted, exc.reason, exc.index) from None
            in_file.add(dotted)
    _check_together(values, in_file, where)
    if values["subscribers.url"] == "":
        directory = values["state.directory"].rstrip("/")
        values["subscribers.url"] = f"sqlite://{directory}/subscribers.db"
    sections = {
        section.name: section.cls(**{key.name: values[key.dotted] for key in section.keys})
        for section in SECTIONS
    }
    not_in_effect = [key.dotted for key in SCHEMA if key.dotted in in_file and not key.in_effect]
    return Config(**sections), not_in_effect


def _check_together(values: dict[str, Any], in_file: set[str], where: _Where) -> None:
    """Rules that involve more than one key; the error names the key the file sets."""
    t1, t2 = values["timers.t1"], values["timers.t2"]
    if t2 < t1:
        if "timers.t2" in in_file:
            raise where.error("timers.t2", f"must not be less than timers.t1 ({t1:g}), got {t2:g}")
        raise where.error("timers.t1", f"must not be more than timers.t2 ({t2:g}), got {t1:g}")
    if values["dispatcher.algorithm"] in (7, 12, 13):
        raise where.error("dispatcher.algorithm", f"algorithm {values['dispatcher.algorithm']} is "
                          "not supported (0-6, 8-11 are)")
    for transport in ("tls", "wss"):
        if values[f"listen.{transport}"] and not values["tls.certificate"]:
            raise where.error(f"listen.{transport}", "needs tls.certificate, which is not set")
    if not any(values[f"listen.{t}"] for t in ("udp", "tcp", "tls", "ws", "wss")):
        raise where.error("listen", "every listener is off: sipgw would accept nothing")


def parse_config(text: str, path: str = "<string>") -> LoadedConfig:
    """Load configuration from TOML ``text``; ``path`` is only used in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(str(exc), text, path) from None
    config, not_in_effect = _parse_raw(raw, _Where(path, text))
    return LoadedConfig(config=config, path=path, not_in_effect=not_in_effect)


def _syntax_error(message: str, text: str, path: str) -> ConfigError:
    match = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", message)
    if match:
        reason, line, column = match.groups()
        return ConfigError(f"{reason} (column {column})", path=path, line=int(line))
    match = re.fullmatch(r"(?s)(.*) \(at end of document\)", message)
    if match:
        last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
        return ConfigError(f"{match.group(1)} (at the end of the file)", path=path,
                           line=max(last_line, 1))  # fmt: skip
    return ConfigError(message, path=path)


def load_config(path: StrPath | None) -> LoadedConfig:
    """Load the file at ``path``; ``None`` means the embedded default (every key default)."""
    if path is None:
        return LoadedConfig(config=default_config(), path=None, not_in_effect=[])
    shown = os.fspath(path)
    try:
        data = Path(shown).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=shown) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", path=shown, line=line) from None
    return parse_config(text, shown)


def default_config() -> Config:
    """The embedded default: runs without root and without any other server."""
    return parse_config("", "<default>").config


def config_path_from_env(
    cli_value: StrPath | None, *, environ: Mapping[str, str] | None = None
) -> str | None:
    """Which file to load: ``-c`` value, else $SIPGW_CONFIG, else /etc/sipgw/sipgw.toml if it
    exists, else None (the embedded default)."""
    if cli_value:
        return os.fspath(cli_value)
    from_env = (os.environ if environ is None else environ).get(CONFIG_ENV_VAR)
    if from_env:
        return from_env
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH
    return None


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The configuration as JSON (for ``cfg.get``), secrets masked as "***"."""
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        values = getattr(config, section.name)
        out[section.name] = {
            key.name: key.kind.dump(getattr(values, key.name)) for key in section.keys
        }
    return out


__all__ = [
    "CONFIG_ENV_VAR", "DEFAULT_CONFIG_PATH", "LOG_LEVEL_NAMES", "MASK", "SCHEMA", "SECTIONS",
    "Address", "Advertise", "AuthConfig", "Config", "ConfigError", "ControlConfig",
    "DispatcherConfig", "IPNetwork", "Key", "LimitsConfig", "ListenConfig", "LoadedConfig",
    "LogConfig", "MetricsConfig", "PikeConfig", "ProxyConfig", "Section", "StateConfig",
    "SubscribersConfig", "TimersConfig", "TlsConfig", "TraceConfig", "WebSocketConfig",
    "config_path_from_env", "config_to_dict", "default_config", "load_config",
    "parse_config", "parse_log_level",
]  # fmt: skip
