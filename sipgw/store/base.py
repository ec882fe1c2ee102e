"""The subscriber store interface, its records and its errors (``sipgw.store``).

One small interface, three implementations: ``sqlite`` (the embedded default), ``redis``
(production, shared by every node) and ``memory`` (a verified fake for tests). Every
method returns a Twisted ``Deferred`` so that a networked store never blocks the reactor;
an embedded one may answer with an already-fired Deferred.

A store keeps digest hashes only, never a password (``make_subscriber``). A legacy record
that has nothing but a plaintext ``password`` still authenticates (Kamailio's
``calculate_ha1``); ``Subscriber.legacy`` lets the CLI and ``sipgw doctor`` flag it.

Failures are two exceptions the proxy turns into replies: ``StoreUnavailable`` (the store
cannot be reached now: 503 with Retry-After) and ``StoreError`` (anything else: 500).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sipgw.sip import digest

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class StoreError(Exception):
    """The store answered, but not with a subscriber (corrupt record, SQL error...)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; asking again later may work."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscriber:
    """One account. Hash fields are lowercase hex, "" when the record lacks them."""

    username: str
    domain: str
    ha1: str = ""  # MD5(username:realm:password)
    ha1b: str = ""  # MD5(username@domain:realm:password)
    ha1_sha256: str = ""  # SHA-256(username:realm:password), RFC 8760
    password: str = ""  # legacy plaintext; never written by sipgw

    @property
    def legacy(self) -> bool:
        """A record that authenticates only through its plaintext password."""
        return bool(self.password) and not (self.ha1 or self.ha1_sha256)

    def as_fields(self) -> dict[str, str]:
        """The stored columns / hash fields, without empty ones."""
        out = {"username": self.username, "domain": self.domain}
        for name in ("ha1", "ha1b", "ha1_sha256", "password"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out


FIELDS = ("username", "domain", "ha1", "ha1b", "ha1_sha256", "password")
# Redis: + domain, the set of the domain's user names (has_domain; not a subscriber hash).
DOMAIN_INDEX = "sipgw:domain:"


def subscriber_from_fields(fields: dict[str, str], username: str, domain: str) -> Subscriber:
    """A record as read from a store; missing names default to the key's own."""
    return Subscriber(
        username=fields.get("username") or username,
        domain=fields.get("domain") or domain,
        ha1=(fields.get("ha1") or "").lower(),
        ha1b=(fields.get("ha1b") or "").lower(),
        ha1_sha256=(fields.get("ha1_sha256") or "").lower(),
        password=fields.get("password") or "",
    )


def make_subscriber(username: str, domain: str, password: str, realm: str = "") -> Subscriber:
    """The hashes of a new password; ``realm`` defaults to the domain (Kamailio's rule)."""
    if not password:
        raise ValueError("refusing an empty password")
    realm = realm or domain
    return Subscriber(
        username=username,
        domain=domain,
        ha1=digest.ha1(username, realm, password),
        ha1b=digest.ha1b(username, domain, realm, password),
        ha1_sha256=digest.ha1(username, realm, password, "SHA-256"),
    )


class SubscriberStore(Protocol):
    """What the proxy and ``sipgw users`` need from a store."""

    def get(self, username: str, domain: str) -> Deferred:
        """Fires with the ``Subscriber`` or None; errbacks StoreError/StoreUnavailable."""

    def put(self, subscriber: Subscriber) -> Deferred:
        """Create or replace the record; fires with None."""

    def delete(self, username: str, domain: str) -> Deferred:
        """Fires with True if a record was removed."""

    def all(self) -> Deferred:
        """Fires with every ``Subscriber``, sorted by (domain, username)."""

    def has_domain(self, domain: str) -> Deferred:
        """Fires with True when at least one subscriber has ``domain`` (one cheap query:
        the proxy asks it for requests whose domain is not configured as ours)."""

    def close(self) -> Deferred:
        """Release connections; fires once done."""
