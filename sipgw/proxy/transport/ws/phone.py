"""The test phone page shipped in the package: a small WebRTC phone on JsSIP.

The WS and WSS listeners answer a plain HTTP GET with it (the guide's step 7: open the
browser, enter credentials, click Register), so an operator can test the whole chain from
any browser. The files live in ``sipgw/data/phone/``:

- ``index.html`` and ``phone.js``: the page, in the repository;
- ``vendor/jssip.js``: JsSIP bundled for browsers from npm's ``jssip`` by
  ``tests/browser/build.mjs``, kept in the repository so that the wheel and the sdist carry
  it (``./scripts/setup`` checks that it is what the locked npm packages build). Without it
  :func:`phone_asset` answers ``None`` for it (a 404), and the page says that it is missing.

:func:`phone_asset` is the whole interface: a request path in, the file's bytes and content
type out, or ``None`` for anything that is not one of the page's files. Only plain names
below the phone directory are served: no ``..``, no hidden files, no other file types.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from urllib.parse import unquote

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

INDEX = "index.html"


def phone_root() -> Traversable:
    """The phone page's directory inside the installed package."""
    return resources.files("sipgw").joinpath("data", "phone")


def phone_asset(path: str) -> tuple[bytes, str] | None:
    """The phone page's file for a request path: ``(content, content_type)``, or ``None``.

    ``path`` is the path of the HTTP request target (``"/"``, ``"/phone.js"``,
    ``"/vendor/jssip.js"``); a query string or fragment is ignored, percent-escapes are
    decoded first. ``"/"`` (or ``""``) is ``index.html``. ``None`` means 404: a name that is
    not a file of the page, a file type not in :data:`CONTENT_TYPES`, or any attempt to
    leave the directory (``..``, ``.``, empty or hidden segments, backslashes, NUL).
    """
    segments = _segments(path)
    if segments is None:
        return None
    if not segments:
        segments = [INDEX]
    name = segments[-1]
    content_type = CONTENT_TYPES.get(name[name.rfind(".") :] if "." in name else "")
    if content_type is None:
        return None
    node = phone_root().joinpath(*segments)
    try:
        if not node.is_file():
            return None
        return node.read_bytes(), content_type
    except OSError:
        return None


def _segments(path: str) -> list[str] | None:
    """The path's segments below the phone directory, or ``None`` if it is not allowed."""
    for mark in "?#":
        path = path.split(mark, 1)[0]
    try:
        path = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\\" in path or "\x00" in path:
        return None
    if path.startswith("/"):
        path = path[1:]
    if path == "":
        return []
    segments = path.split("/")
    for segment in segments:
        # Empty ("a//b", a trailing "/"), "." and "..", and hidden names (".gitignore").
        if segment == "" or segment.startswith("."):
            return None
    return segments
