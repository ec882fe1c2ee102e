"""The client side of digest authentication, for tests and load flows: answer a challenge as
a phone does."""

from __future__ import annotations

from sipgw.sip import digest
from sipgw.sip.grammar import quote


def challenges(message, name: str) -> list[digest.Challenge]:
    """Every Digest challenge of ``name`` (WWW-Authenticate / Proxy-Authenticate)."""
    return [digest.parse_challenge(v) for v in message.headers(name)]


def authorization(
    *,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = "auth",
    nc: int = 1,
    cnonce: str = "0a4f113b",
    ha1: str | None = None,
) -> str:
    """An Authorization / Proxy-Authorization value, as RFC 7616 §3.4 builds it."""
    key = ha1 or digest.ha1(username, realm, password, algorithm)
    nc_text = f"{nc:08x}"
    resp = digest.response(key, method, uri, nonce, nc_text if qop else None,
                           cnonce if qop else None, qop, algorithm)
    parts = [f"Digest username={quote(username)}", f"realm={quote(realm)}",
             f"nonce={quote(nonce)}", f"uri={quote(uri)}", f"response={quote(resp)}",
             f"algorithm={algorithm}"]
    if qop:
        parts += [f"qop={qop}", f"nc={nc_text}", f"cnonce={quote(cnonce)}"]
    return ", ".join(parts)
