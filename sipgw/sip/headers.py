"""Header names: compact forms, the names we write, and which headers are lists.

Every header is keyed by its lowercase long name (``"via"``, ``"call-id"``); the name as
written on the wire is kept separately so untouched headers are forwarded byte for byte.
"""

from __future__ import annotations

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS: dict[str, str] = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "s": "subject",
    "e": "content-encoding",
    "k": "supported",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

# How we spell the headers we write ourselves.
_CANONICAL = {
    "via": "Via",
    "from": "From",
    "to": "To",
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "contact": "Contact",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
    "max-forwards": "Max-Forwards",
    "record-route": "Record-Route",
    "route": "Route",
    "path": "Path",
    "www-authenticate": "WWW-Authenticate",
    "proxy-authenticate": "Proxy-Authenticate",
    "proxy-authorization": "Proxy-Authorization",
    "authorization": "Authorization",
    "retry-after": "Retry-After",
    "user-agent": "User-Agent",
    "server": "Server",
    "unsupported": "Unsupported",
    "proxy-require": "Proxy-Require",
    "require": "Require",
    "supported": "Supported",
    "allow": "Allow",
    "accept": "Accept",
    "expires": "Expires",
    "sec-websocket-version": "Sec-WebSocket-Version",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1) that the proxy may need
# to split. Authorization and the like are deliberately absent: commas inside them are not
# separators.
LIST_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "path",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "service-route",
    }
)

# Headers that may appear at most once; two different copies would let two parsers on the
# path disagree about the message (RFC 4475 §3.3.8, §3.3.9).
SINGLETON_HEADERS = frozenset(
    {"call-id", "from", "to", "cseq", "max-forwards", "content-length", "content-type"}
)

# header_key's memory, name as written → key; read directly where a function call per
# lookup shows (Message.header). Cleared in place when full, never rebound.
KNOWN_KEYS: dict[str, str] = {}
KNOWN_KEYS_MAX = 2048
CACHED_NAME_MAX = 64  # longer names are looked up every time, never kept


def header_key(name: str) -> str:
    """Lowercase long name for a header name as written (``"i"`` → ``"call-id"``)."""
    key = KNOWN_KEYS.get(name)
    if key is not None:
        return key
    lower = name.lower()
    key = COMPACT_FORMS.get(lower, lower)
    # A peer sending random names must not grow the cache without bound, in count or in
    # bytes: 2,048 names of 60 kB each were 250 MB held for good (found by fuzzing). When
    # full it starts again, so names first seen after a flood of junk are cached too.
    if len(name) <= CACHED_NAME_MAX:
        if len(KNOWN_KEYS) >= KNOWN_KEYS_MAX:
            KNOWN_KEYS.clear()
        KNOWN_KEYS[name] = key
    return key


def display_name(key: str) -> str:
    """The spelling we use when we write a header."""
    name = _CANONICAL.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name
