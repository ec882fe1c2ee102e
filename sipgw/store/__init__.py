"""Subscriber stores: where the SIP accounts live.

One small interface (``base``), three implementations: ``sqlite`` (the embedded default),
``redis`` (production, shared by every node; ``redis_link`` reaches it, directly or
through Sentinel) and ``memory`` (a verified fake for tests).
Beside the subscribers, ``bans`` keeps in Redis the failed authentications and bans the
nodes share. ``open_store`` opens the one a ``[subscribers] url`` names; the
implementations import only ``base``, never this package, so nothing here is imported in
a circle.
"""

from __future__ import annotations

from sipgw.config.redis_url import is_redis_url, parse_redis_url
from sipgw.store.base import (
    DOMAIN_INDEX,
    FIELDS,
    StoreError,
    StoreUnavailable,
    Subscriber,
    SubscriberStore,
    make_subscriber,
    subscriber_from_fields,
)

__all__ = [
    "DOMAIN_INDEX", "FIELDS", "StoreError", "StoreUnavailable", "Subscriber", "SubscriberStore",
    "make_subscriber", "open_store", "subscriber_from_fields",
]


def open_store(url: str, *, key_template: str = "subscriber:{username}",
               connect_timeout: float = 2.0, command_timeout: float = 1.0,
               clock=None, create_directory: bool = False,
               sqlite_busy_timeout: float | None = None, tls_ca_file: str = "",
               sentinel_password: str = "") -> SubscriberStore:
    """The store named by a ``[subscribers] url``; ValueError when it names none,
    ConfigError when a setting it needs is wrong (``tls_ca_file``)."""
    if url.startswith("sqlite://"):
        from sipgw.store.sqlite import BUSY_TIMEOUT, SqliteStore

        return SqliteStore(url[len("sqlite://"):], create_directory=create_directory,
                           busy_timeout=sqlite_busy_timeout or BUSY_TIMEOUT)
    if is_redis_url(url):
        from sipgw.store.redis import RedisStore

        return RedisStore(parse_redis_url(url), key_template=key_template,
                          connect_timeout=connect_timeout, command_timeout=command_timeout,
                          clock=clock, tls_ca_file=tls_ca_file,
                          sentinel_password=sentinel_password)
    if url.startswith("memory:"):
        from sipgw.store.memory import MemoryStore

        return MemoryStore()
    raise ValueError(f"unknown subscriber store URL {url!r}")
