"""``[subscribers] url`` when it names Redis: the four forms, parsed once for everyone.

* ``redis://[user:pass@]host[:port][/db]``: one Redis server;
* ``rediss://...``: the same over TLS;
* ``redis+sentinel://[user:pass@]host1[:port],host2[:port],.../SERVICE[/db]``: the master
  of SERVICE as the Sentinels on those hosts name it (port 26379 by default);
* ``rediss+sentinel://...``: the same with TLS to the Sentinels and to the master.

The user and password are the master's (Redis ACL, or ``requirepass`` with no user); they
may be %-escaped. Sentinels that require a password of their own get it from
``subscribers.sentinel_password``: one URL cannot carry two sets of credentials cleanly.
The config kind, the store and the doctor all read a URL through ``parse_redis_url``, so
they agree on what it means; ``shown`` is how it is printed: never the password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from sipgw.sip.hostport import join_hostport

SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
PORT = 6379
SENTINEL_PORT = 26379
MASK = "***"


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisUrl:
    """Where the store's Redis is. ``hosts`` holds the one server, or the Sentinels."""

    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    service: str = ""  # the Sentinel master name; "" for a direct URL

    @property
    def sentinel(self) -> bool:
        return bool(self.service)

    @property
    def host(self) -> str:
        return self.hosts[0][0]

    @property
    def port(self) -> int:
        return self.hosts[0][1]

    @property
    def scheme(self) -> str:
        return ("rediss" if self.tls else "redis") + ("+sentinel" if self.sentinel else "")

    def __str__(self) -> str:  # never shows the password
        hosts = ",".join(join_hostport(h, p) for h, p in self.hosts)
        path = f"/{self.service}/{self.db}" if self.sentinel else f"/{self.db}"
        return f"{self.scheme}://{hosts}{path}"


def is_redis_url(url: str) -> bool:
    return url.partition("://")[0] in SCHEMES and "://" in url


def parse_redis_url(url: str) -> RedisUrl:
    """The ``RedisUrl`` of one of the four forms; ValueError saying what is wrong (never
    quoting the password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"expected one of {', '.join(s + '://' for s in SCHEMES)}")
    sentinel = scheme.endswith("+sentinel")
    netloc, _, path = rest.partition("/")
    if "?" in path or "#" in path or "?" in netloc or "#" in netloc:
        raise ValueError("a query (?...) or fragment (#...) has no meaning here")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None  # "redis://:secret@host": a password alone
        password = unquote(secret) if colon else None
    hosts = tuple(_hostport(h, SENTINEL_PORT if sentinel else PORT)
                  for h in hostlist.split(","))
    if len(hosts) > 1 and not sentinel:
        raise ValueError(f"several hosts need {scheme}+sentinel://")
    names = [n for n in path.split("/") if n] if path else []
    service = ""
    if sentinel:
        if not names:
            raise ValueError("the Sentinel service name is missing, as in "
                             f"{scheme}://127.0.0.1:26379/mymaster/0")
        service = names.pop(0)
    if len(names) > 1 or (names and not names[0].isdigit()):
        example = (f"{scheme}://127.0.0.1:26379/mymaster/2" if sentinel
                   else f"{scheme}://127.0.0.1:6379/2")
        raise ValueError(f"the database must be a number, as in {example}")
    return RedisUrl(hosts=hosts, db=int(names[0]) if names else 0, username=username,
                    password=password, tls=scheme.startswith("rediss"), service=service)


def _hostport(text: str, default_port: int) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\w*))?|([^:\[\]]+)(?::(\w*))?", text)
    if not match:
        raise ValueError("the host is missing" if not text else f"not a host[:port]: {text!r}")
    host = match.group(1) or match.group(3)
    port = match.group(2) if match.group(1) else match.group(4)
    if port is None or port == "":
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("the port must be a number between 1 and 65535")
    return host, int(port)


def mask_url(url: str) -> str:
    """ "redis://user:secret@host:6379/2" -> "redis://user:***@host:6379/2"."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    userinfo, _, hosts = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:{MASK}" if colon else MASK
    return f"{scheme}://{masked}@{hosts}{slash}{path}"
