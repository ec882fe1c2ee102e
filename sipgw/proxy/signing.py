"""Signed routes: the Record-Route and contact alias sipgw writes carry a MAC, so that only
what sipgw itself wrote can steer a request.

Without it, "an in-dialog request must name our Record-Route" is met by anyone who writes
sipgw's address in a Route, and a forged ``;alias=`` aims a request at any address: sipgw
becomes an open relay for ACK, BYE, INVITE with a To tag, or MESSAGE, to any host.

- A Record-Route URI gets ``;sg=MAC`` over the dialog's Call-ID and the tag of the request
  that created it (its From tag). In-dialog requests carry that tag as their From tag
  (from the caller) or their To tag (from the callee), so both are tried; a Route copied
  from another dialog fails on its Call-ID.
- A contact alias ``ip~port~proto`` becomes ``ip~port~proto~MAC``: the MAC covers the
  address, so a client cannot write one of its own.

The key comes from ``proxy.route_secret``; without one, from ``auth.nonce_secret``;
without either, from a file under ``state.directory`` made on first start, so a restart
keeps the routes of dialogs in progress valid. Nodes that share dialogs (a cluster behind
one name) must share the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable

from twisted.logger import Logger

from sipgw.config import Config

log = Logger(namespace="sipgw.signing")

PARAM = "sg"  # the Record-Route URI parameter that carries the MAC
_DIGITS = 16  # 64 bits: guessing online is hopeless, and pike blocks the attempt first
KEY_FILE = "route.key"


class RouteSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, kind: str, *parts: str) -> str:
        text = "\x00".join((kind, *parts)).encode("utf-8", "surrogateescape")
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()[:_DIGITS]

    def dialog(self, call_id: str, tag: str | None) -> str:
        """The MAC of the Record-Route written for the dialog a request creates."""
        return self._mac("d", call_id, tag or "")

    def dialog_ok(self, mac: str | None, call_id: str, tags: Iterable[str | None]) -> bool:
        if not mac or len(mac) != _DIGITS:
            return False
        mac = mac.lower()
        return any(hmac.compare_digest(mac, self.dialog(call_id, tag)) for tag in tags)

    def alias(self, value: str) -> str:
        """The MAC appended to an alias value ``ip~port~proto``."""
        return self._mac("a", value)

    def alias_ok(self, value: str, mac: str | None) -> bool:
        if not mac or len(mac) != _DIGITS:
            return False
        return hmac.compare_digest(mac.lower(), self.alias(value))


def route_key(route_secret: str, nonce_secret: str, state_directory: str, *,
              random: Callable[[int], bytes] = os.urandom) -> bytes:
    """The signing key, from configuration or the state directory (see the module doc).

    Derived rather than used as given, so that the nonce secret and the route key are
    never the same key used for two purposes."""
    if route_secret:
        return _derive(route_secret.encode("utf-8"), b"sipgw route_secret")
    if nonce_secret:
        return _derive(nonce_secret.encode("utf-8"), b"sipgw nonce_secret")
    path = os.path.join(state_directory, KEY_FILE)
    try:
        return _key_file(path, random)
    except OSError as e:
        log.warn("proxy.route_secret is not set and {path} cannot be used ({err}): routes are "
                 "signed with a key of this start only; dialogs in progress lose their "
                 "in-dialog requests at the next restart", path=path, err=e.strerror or e)
        return random(32)


def _derive(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, label, hashlib.sha256).digest()


def _key_file(path: str, random: Callable[[int], bytes]) -> bytes:
    """The key in ``path``, made there first if needed. Several processes starting at once
    (workers, or a service and ``sipgw doctor``) all end with the same key: a new key is
    written whole to a file of its own and linked into place, which fails if another
    process linked one first -- so nobody ever reads a file half written, nor keeps a key
    that is not the one in the file."""
    existing = _read_key(path)
    if existing is not None:
        return existing
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    partial = f"{path}.{os.getpid()}.new"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(random(32))
    try:
        try:
            os.link(partial, path)
        except FileExistsError:
            if _read_key(path) is None:  # too short: left by a crash of an older sipgw
                os.replace(partial, path)
        else:
            log.info("route signing key made in {path}", path=path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    key = _read_key(path)
    if key is None:
        raise OSError(f"{path} holds no key")
    return key


def _read_key(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            key = f.read()
    except FileNotFoundError:
        return None
    return key if len(key) >= 32 else None


def service_route_key(config: Config) -> bytes:
    """The key the configuration gives (``route_key``). A supervisor reads it once and
    hands it to its workers, so every worker signs and checks with the same key even when
    it is random."""
    return route_key(config.proxy.route_secret, config.auth.nonce_secret,
                     config.state.directory)
