"""How a key's TOML value is checked, parsed and shown: the kinds ``schema.py`` declares
its keys with, and the values they parse to (``Address``, networks, log levels).

A kind refuses a value with ``Invalid``, whose reason the loader puts after FILE:LINE: key.
Pure: the standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sipgw.config.redis_url import MASK, is_redis_url, mask_url, parse_redis_url
from sipgw.sip.hostport import join_hostport

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Invalid(ValueError):
    """A value a kind refuses; ``index`` is the offending element of a list, if any."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


# --- values ---------------------------------------------------------------------------------


class Address(NamedTuple):
    """A "host:port" from the file; IPv6 hosts without their brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return join_hostport(self.host, self.port)


class Advertise(NamedTuple):
    """listen.advertise: the host (and port, if given) sipgw writes about itself."""

    host: str
    port: int | None

    def __str__(self) -> str:
        return join_hostport(self.host, self.port)


# Kamailio's debug levels (L_ALERT .. L_DBG) and their names; "error" rather than "err".
LOG_LEVEL_NAMES: Mapping[int, str] = {
    -5: "alert", -4: "bug", -3: "crit2", -2: "crit",
    -1: "error", 0: "warning", 1: "notice", 2: "info", 3: "debug",
}  # fmt: skip
_LOG_LEVEL_ALIASES = {"warn": 0, "err": -1, "critical": -2}
# Python logging numbers; NOTICE (25) sits between INFO and WARNING as in syslog.
PYTHON_LEVELS = {-5: 50, -4: 50, -3: 50, -2: 50, -1: 40, 0: 30, 1: 25, 2: 20, 3: 10}


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
    raise Invalid(
        "expected a level name (error, warning, notice, info, debug) or a Kamailio"
        f" number -5..3, got {show(value)}"
    )


# --- kinds: how a key's TOML value is checked, parsed and shown ------------------------------


def show(value: object) -> str:
    """A value as TOML would write it, short enough for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, list):
        inner = ", ".join(show(item) for item in value[:4])
        return f"[{inner}, ...]" if len(value) > 4 else f"[{inner}]"
    if isinstance(value, dict):
        return "a table"
    return str(value)  # TOML dates and times


class Kind:
    __slots__ = ()

    def parse(self, value: object) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        """The parsed value as JSON for cfg.get, in the form the file accepts."""
        return value


class String(Kind):
    __slots__ = ("check",)

    def __init__(self, check: Callable[[str], str | None] | None = None) -> None:
        self.check = check

    def parse(self, value: object) -> Any:
        if not isinstance(value, str):
            raise Invalid(f"expected a string, got {show(value)}")
        problem = self.check(value) if self.check else None
        if problem:
            raise Invalid(f"{show(value)}: {problem}")
        return value


class Secret(String):
    """A string never shown: not in errors, masked by config_to_dict."""

    __slots__ = ()

    def parse(self, value: object) -> Any:
        if not isinstance(value, str):
            raise Invalid("expected a string (value not shown: it is a secret)")
        return value

    def dump(self, value: Any) -> Any:
        return MASK if value else ""


class Bool(Kind):
    __slots__ = ()

    def parse(self, value: object) -> Any:
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, got {show(value)}")
        return value


class Integer(Kind):
    __slots__ = ("low", "high")

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high

    def parse(self, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {show(value)}")
        if not self.low <= value <= self.high:
            raise Invalid(f"must be between {self.low} and {self.high}, got {value}")
        return value


class Seconds(Kind):
    """A duration: an integer or a float in the file, always a float once parsed."""

    __slots__ = ("low", "above")

    def __init__(self, low: float = 0.0, *, above: bool = False) -> None:
        self.low = low
        self.above = above

    def parse(self, value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"expected a number of seconds, got {show(value)}")
        seconds = float(value)
        if not math.isfinite(seconds):
            raise Invalid(f"expected a finite number of seconds, got {show(value)}")
        if self.above and seconds <= self.low:
            raise Invalid(f"must be more than {self.low:g} seconds, got {show(value)}")
        if seconds < self.low:
            raise Invalid(f"must be at least {self.low:g} seconds, got {show(value)}")
        return seconds


def _list_of_strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list):
        raise Invalid(f"expected {what}, got {show(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise Invalid(f"expected {what}, got {show(value)}", index)
    return value


class StringList(Kind):
    __slots__ = ("what", "item")

    def __init__(self, what: str, item: Callable[[str], Any]) -> None:
        self.what = what
        self.item = item  # parses one element or raises Invalid

    def parse(self, value: object) -> Any:
        out = []
        for index, text in enumerate(_list_of_strings(value, self.what)):
            try:
                parsed = self.item(text)
            except Invalid as exc:
                raise Invalid(f"{show(text)}: {exc.reason}", index) from None
            if parsed in out:
                raise Invalid(f"{show(text)} is listed twice", index)
            out.append(parsed)
        return tuple(out)

    def dump(self, value: Any) -> Any:
        return [str(item) for item in value]


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _check_host(host: str) -> None:
    if not host:
        raise Invalid("the host is missing")
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise Invalid(f"{host} is not an IPv4 address") from None
        return
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise Invalid(f"{host!r} is not a host name or address")


def _parse_host_port(text: str, *, need_port: bool) -> tuple[str, int | None]:
    """ "host", "host:port", "[v6]" or "[v6]:port" -> (host without brackets, port)."""
    port_text: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise Invalid('the "]" closing the IPv6 address is missing')
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"{host!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise Invalid('expected ":port" after the "]"')
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise Invalid('an IPv6 address needs brackets, e.g. "[::1]:5060"')
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        _check_host(host)
    if port_text is None:
        if need_port:
            raise Invalid('the ":port" is missing')
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise Invalid("the port must be a number between 1 and 65535")
    return host, int(port_text)


def _address(text: str) -> Address:
    host, port = _parse_host_port(text, need_port=True)
    assert port is not None
    return Address(host, port)


class OptionalAddress(Kind):
    """ "" (off) or one "host:port"; with ``port_optional``, "host" alone too."""

    __slots__ = ("port_optional",)

    def __init__(self, *, port_optional: bool = False) -> None:
        self.port_optional = port_optional

    def parse(self, value: object) -> Any:
        wanted = '"host[:port]"' if self.port_optional else '"host:port"'
        if not isinstance(value, str):
            raise Invalid(f'expected a {wanted} string or "", got {show(value)}')
        if not value:
            return None
        try:
            host, port = _parse_host_port(value, need_port=not self.port_optional)
        except Invalid as exc:
            raise Invalid(f"{show(value)}: {exc.reason}") from None
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
        raise Invalid('not an address or CIDR (e.g. "10.0.0.0/8" or "192.0.2.7")') from None
    raise Invalid(f'host bits are set (did you mean "{loose}"?)')


def alias(text: str) -> str:
    _parse_host_port(text, need_port=False)
    return text


def user_agent_part(text: str) -> str:
    if not text.strip():
        raise Invalid("must not be empty (it would match every User-Agent)")
    return text


def origin(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+", text):
        raise Invalid('expected an origin such as "https://phone.example.com"')
    return text


def ws_url(text: str) -> str:
    if not re.fullmatch(r"wss?://[^/\s?#]+(?:[/?][^\s#]*)?", text):
        raise Invalid('expected a WebSocket URL such as "wss://sip.example.com/ws"')
    return text


def sip_uri(text: str) -> str:
    # A light check; the SIP core parses it fully when the dispatcher loads it.
    match = re.fullmatch(
        r"(?i:sips?):(?:[^@]*@)?(\[[^\]]*\]|[^:;?@\[\]]*)(?::([^;?]*))?(?:[;?].*)?", text
    )
    if match is None or match.group(1) in ("", "[]"):
        raise Invalid('expected a SIP URI with a host, e.g. "sip:10.0.0.5:5060"')
    port = match.group(2)
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise Invalid("the port must be a number between 1 and 65535")
    return text


def uri_problem(text: str) -> str | None:
    try:
        sip_uri(text)
    except Invalid as exc:
        return exc.reason
    return None


def status_code(text: str) -> str:
    if not re.fullmatch(r"[1-6](?:\d\d|xx)", text):
        raise Invalid('expected a status code such as "408" or a class such as "5xx"')
    return text


class SubscriberUrl(Kind):
    """ "sqlite:///ABSOLUTE/PATH", a Redis URL (``sipgw.config.redis_url``: direct or through
    Sentinel, TLS or not), or "" (derived)."""

    __slots__ = ()

    def parse(self, value: object) -> Any:
        if not isinstance(value, str):
            raise Invalid(f"expected a URL string, got {show(value)}")
        if value == "" or (value.startswith("sqlite:///") and len(value) > len("sqlite:///")):
            return value
        if is_redis_url(value):
            try:
                parse_redis_url(value)
            except ValueError as e:
                raise Invalid(f"{show(mask_url(value))}: {e}") from None
            return value
        raise Invalid(
            'expected "sqlite:///PATH", "redis[s]://[user:pass@]host:port/db" or '
            '"redis[s]+sentinel://[user:pass@]host:port,.../SERVICE/db",'
            f" got {show(mask_url(value))}"
        )

    def dump(self, value: Any) -> Any:
        return mask_url(value)


class FileMode(Kind):
    __slots__ = ()

    def parse(self, value: object) -> Any:
        if not isinstance(value, str):
            hint = " (write it quoted)" if isinstance(value, int) else ""
            raise Invalid(f'expected an octal string such as "0660", got {show(value)}{hint}')
        if not re.fullmatch(r"0?[0-7]{3}", value):
            raise Invalid(f'expected an octal string such as "0660", got {show(value)}')
        return int(value, 8)

    def dump(self, value: Any) -> Any:
        return f"{value:04o}"


MAX_WORKERS = 64


class WorkerCount(Kind):
    """``"auto"`` (kept as 0: one worker per CPU, counted when the service starts) or 1..64."""

    __slots__ = ()

    def parse(self, value: object) -> Any:
        if value == "auto":
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f'expected "auto" or a number of processes, got {show(value)}')
        if not 1 <= value <= MAX_WORKERS:
            raise Invalid(f'must be "auto" or between 1 and {MAX_WORKERS}, got {value}')
        return value

    def dump(self, value: Any) -> Any:
        return value or "auto"


class LogLevel(Kind):
    __slots__ = ()

    def parse(self, value: object) -> Any:
        return parse_log_level(value)

    def dump(self, value: Any) -> Any:
        return LOG_LEVEL_NAMES[value]


def absolute_path(text: str) -> str | None:
    return None if os.path.isabs(text) else "must be an absolute path"


def not_empty(text: str) -> str | None:
    return None if text else "must not be empty"


def header_value(text: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "must not contain control characters (it is written into a header)"
    return None


def redis_key_template(text: str) -> str | None:
    """subscribers.key_template: the Redis key of a user, from {username} and {domain}."""
    if "{username}" not in text:
        return "must contain {username}"
    try:
        text.format(username="u", domain="d")
    except (KeyError, IndexError, ValueError):
        return "only {username} and {domain} may be used"
    return None


def digest_algorithm(text: str) -> str:
    if text.upper() not in ("MD5", "SHA-256"):
        raise Invalid('expected "MD5" or "SHA-256" (RFC 8760)')
    return text.upper()


def tls_version(text: str) -> str | None:
    return None if text in ("1.2", "1.3") else 'expected "1.2" or "1.3"'


ADDRESSES = StringList('a list of "host:port" strings', _address)
NETWORKS = StringList('a list of CIDR strings (e.g. "10.0.0.0/8")', _network)
