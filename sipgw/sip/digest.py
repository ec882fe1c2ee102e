"""Digest credentials and challenges (RFC 3261 §22.4, §25.1; RFC 2617; RFC 7616; RFC 8760).

Parsing, formatting and the hash maths only. Policy (which realm, nonce lifetime, replay
checks, comparing responses with ``hmac.compare_digest``) belongs to the proxy's auth module.

Text arguments of the hash functions are encoded as UTF-8 (RFC 7616 §4, charset=UTF-8);
pass ``bytes`` to hash exact octets, e.g. a username taken off the wire in the latin-1
convention: ``username.encode("latin-1")``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from sipgw.sip.errors import ParseError
from sipgw.sip.grammar import quote

# Algorithm names (case-insensitive on the wire) and their hashlib names. RFC 8760 adds
# SHA-256 and SHA-512-256 to SIP. SHA-512-256 is FIPS 180-4 SHA-512/256, not truncated
# SHA-512 (the RFC 7616 §3.9.2 example values were computed with the latter).
ALGORITHMS = {
    "MD5": "md5",
    "MD5-SESS": "md5",
    "SHA-256": "sha256",
    "SHA-256-SESS": "sha256",
    "SHA-512-256": "sha512_256",
    "SHA-512-256-SESS": "sha512_256",
}

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_SCHEME_RE = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|\Z)")
_PARAM_RE = re.compile(
    rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:"((?:[^"\\]|\\[\s\S])*)"|({_TOKEN}))[ \t]*'
)
_QUOTED_PAIR_RE = re.compile(r"\\([\s\S])")
_REQUIRED = ("realm", "nonce", "uri", "response")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """An Authorization or Proxy-Authorization value.

    ``params`` maps lowercased names to unquoted values; it is empty for schemes other than
    Digest, whose text is only kept in ``raw`` (everything after the scheme, as written).
    """

    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    raw: str = ""

    @property
    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"

    @property
    def username(self) -> str | None:
        return self.params.get("username")

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def nonce(self) -> str | None:
        return self.params.get("nonce")

    @property
    def uri(self) -> str | None:
        return self.params.get("uri")

    @property
    def response(self) -> str | None:
        return self.params.get("response")

    @property
    def algorithm(self) -> str:
        """RFC 2617 §3.2.2: absent means MD5."""
        return self.params.get("algorithm", "MD5")


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """A WWW-Authenticate or Proxy-Authenticate value; same shape as ``Credentials``."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    raw: str = ""


def parse_credentials(value: str, *, what: str = "Authorization header") -> Credentials:
    """Parse credentials; Digest ones must carry username, realm, nonce, uri, response
    (and cnonce and nc when qop is present), else ParseError("Bad Authorization header")."""
    scheme, raw, params = _parse_auth(value, what)
    if params is not None:
        missing = [name for name in _REQUIRED if name not in params]
        if "username" not in params and "username*" not in params:
            missing.insert(0, "username")
        if "qop" in params:
            missing += [name for name in ("cnonce", "nc") if name not in params]
        if missing:
            raise ParseError(f"Bad {what}: missing {', '.join(missing)}")
    return Credentials(scheme=scheme, params=params or {}, raw=raw)


def parse_challenge(value: str, *, what: str = "WWW-Authenticate header") -> Challenge:
    """Parse a challenge; Digest ones must carry realm and nonce."""
    scheme, raw, params = _parse_auth(value, what)
    if params is not None:
        missing = [name for name in ("realm", "nonce") if name not in params]
        if missing:
            raise ParseError(f"Bad {what}: missing {', '.join(missing)}")
    return Challenge(scheme=scheme, params=params or {}, raw=raw)


def format_challenge(
    realm: str,
    nonce: str,
    algorithm: str = "MD5",
    qop: str | None = "auth",
    stale: bool = False,
    opaque: str | None = None,
) -> str:
    """A WWW-Authenticate / Proxy-Authenticate value, in RFC 2617 §3.2.1 order."""
    parts = [f"Digest realm={quote(realm)}", f"nonce={quote(nonce)}"]
    if opaque is not None:
        parts.append(f"opaque={quote(opaque)}")
    if stale:
        parts.append("stale=TRUE")
    parts.append(f"algorithm={algorithm}")
    if qop:
        parts.append(f"qop={quote(qop)}")
    return ", ".join(parts)


def ha1(username: str | bytes, realm: str | bytes, password: str | bytes,
        algorithm: str = "MD5") -> str:
    """H(username:realm:password), the value a subscriber store keeps (RFC 7616 §3.4.2).

    For ``-sess`` algorithms ``response`` folds in nonce and cnonce itself.
    """
    return _h(algorithm, username, realm, password)


def ha1b(username: str | bytes, domain: str | bytes, realm: str | bytes,
         password: str | bytes, algorithm: str = "MD5") -> str:
    """H(username@domain:realm:password), for clients that send ``user@domain`` as username."""
    return _h(algorithm, _b(username) + b"@" + _b(domain), realm, password)


def userhash(username: str | bytes, realm: str | bytes, algorithm: str = "MD5") -> str:
    """H(username:realm), sent in place of the username when userhash=true (RFC 7616 §3.4.4)."""
    return _h(algorithm, username, realm)


def response(
    ha1: str,
    method: str | bytes,
    uri: str | bytes,
    nonce: str | bytes,
    nc: str | bytes | None = None,
    cnonce: str | bytes | None = None,
    qop: str | None = None,
    algorithm: str = "MD5",
    *,
    body: bytes = b"",
) -> str:
    """The request-digest (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1); ``body`` is for auth-int.

    Raises ValueError for an unknown algorithm or qop, or when qop or a -sess algorithm
    needs nc/cnonce and they are missing: the caller checks what the client sent first.
    """
    if algorithm.upper().endswith("-SESS"):
        if cnonce is None:
            raise ValueError("a -sess algorithm needs cnonce")
        ha1 = _h(algorithm, ha1, nonce, cnonce)
    if qop is None:
        ha2 = _h(algorithm, method, uri)
        return _h(algorithm, ha1, nonce, ha2)
    if qop == "auth":
        ha2 = _h(algorithm, method, uri)
    elif qop == "auth-int":
        ha2 = _h(algorithm, method, uri, _h(algorithm, body))
    else:
        raise ValueError(f"unsupported qop {qop!r}")
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    return _h(algorithm, ha1, nonce, nc, cnonce, qop, ha2)


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _h(algorithm: str, *parts: str | bytes) -> str:
    try:
        name = ALGORITHMS[algorithm.upper()]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}") from None
    return hashlib.new(name, b":".join(map(_b, parts))).hexdigest()


def _parse_auth(value: str, what: str) -> tuple[str, str, dict[str, str] | None]:
    """Split ``scheme params``; params are parsed (dict) only for Digest, else None."""
    m = _SCHEME_RE.match(value)
    if m is None:
        raise ParseError(f"Bad {what}: no scheme")
    scheme = m.group(1)
    raw = value[m.end() :].strip(" \t")
    if scheme.lower() != "digest":
        return scheme, raw, None
    return "Digest", raw, _parse_params(raw, what)


def _parse_params(text: str, what: str) -> dict[str, str]:
    """auth-param *(COMMA auth-param), values token or quoted-string (unquoted here)."""
    params: dict[str, str] = {}
    pos = 0
    n = len(text)
    while True:
        m = _PARAM_RE.match(text, pos)
        if m is None:
            raise ParseError(f"Bad {what}: empty or malformed parameter")
        name = m.group(1).lower()
        if name in params:
            raise ParseError(f"Bad {what}: duplicate {name}")
        quoted = m.group(2)
        if quoted is None:
            params[name] = m.group(3)
        else:
            params[name] = _QUOTED_PAIR_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
        pos = m.end()
        if pos >= n:
            return params
        if text[pos] != ",":
            raise ParseError(f"Bad {what}: parameters must be separated by commas")
        pos += 1
