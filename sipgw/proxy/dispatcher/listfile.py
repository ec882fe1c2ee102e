"""Kamailio's ``dispatcher.list``, read as Kamailio reads it, so an existing file works.

One destination per line: ``setid uri [flags] [priority] [attrs]``, separated by blanks.
``#`` starts a comment anywhere on a line. ``flags`` are the initial state bits (decimal
or ``0x`` hex; see ``state.py``), ``priority`` orders a set (higher first, file order among
equals, as Kamailio's ``add_dest2list``), ``attrs`` is ``name=value;...``.

Attributes sipgw uses: ``weight`` (algorithm 9), ``rweight`` (11), ``maxload`` (10),
``duid``. ``socket``/``sockname`` pick a sending socket in Kamailio; sipgw has one per
transport, so they are ignored with a warning. Others are kept and shown by
``dispatcher.list`` unchanged.

Any bad line refuses the whole file with ``path:line: reason``: a reload must never run
half a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sipgw.sip.errors import ParseError
from sipgw.sip.uri import SipURI, parse_uri

# Attributes whose value must be an integer in a range (Kamailio's limits).
_INT_ATTRS = {"weight": (0, 100), "rweight": (0, 100), "maxload": (0, 2**31 - 1)}
_IGNORED_ATTRS = ("socket", "sockname")
# The flag bits a list file may set (dispatcher.h: inactive..noping).
_KNOWN_FLAGS = 0x3F


class ListFileError(ValueError):
    """A list sipgw refuses, naming the file and the line."""

    def __init__(self, reason: str, *, path: str, line: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Attrs:
    body: str = ""  # as written, shown as ATTRS.BODY
    weight: int = 0
    rweight: int = 0
    maxload: int = 0
    duid: str = ""
    other: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One line of the list."""

    setid: int
    uri: str
    flags: int = 0
    priority: int = 0
    attrs: Attrs = field(default_factory=Attrs)
    line: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatcherList:
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...] = ()
    source: str = "<config>"

    def sets(self) -> dict[int, list[Entry]]:
        """Entries by set id, each set ordered by priority, higher first (stable)."""
        out: dict[int, list[Entry]] = {}
        for entry in self.entries:
            out.setdefault(entry.setid, []).append(entry)
        return {k: sorted(v, key=lambda e: -e.priority) for k, v in sorted(out.items())}


def _integer(text: str, what: str) -> int:
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise ValueError(f"{what}: expected a decimal or 0x hex integer, got {text!r}") from None


def check_uri(text: str) -> SipURI:
    """A destination must be a sip:/sips: URI with a host and no user-visible headers."""
    try:
        uri = parse_uri(text)
    except ParseError as e:
        raise ValueError(f"bad destination URI {text!r}: {e}") from None
    if not isinstance(uri, SipURI):
        raise ValueError(f"destination {text!r} is not a sip: or sips: URI")
    return uri


def parse_attrs(body: str, warn: list[str], where: str) -> Attrs:
    values: dict[str, object] = {}
    other = []
    for part in body.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        value = value.strip()
        if not sep or not name:
            raise ValueError(f"attrs: expected name=value, got {part.strip()!r}")
        if name in _INT_ATTRS:
            low, high = _INT_ATTRS[name]
            number = _integer(value, f"attrs {name}")
            if not low <= number <= high:
                raise ValueError(f"attrs {name}: must be between {low} and {high}, got {number}")
            values[name] = number
        elif name == "duid":
            values[name] = value
        else:
            if name in _IGNORED_ATTRS:
                warn.append(f"{where}: attrs {name}={value} ignored: sipgw sends from its "
                            "own listener for the destination's transport")
            other.append((name, value))
    return Attrs(body=body, other=tuple(other), **values)  # type: ignore[arg-type]


def parse_line(text: str, *, line: int | None, warn: list[str], where: str) -> Entry | None:
    """One line: an ``Entry``, None for a blank or comment line, or ValueError."""
    text = text.split("#", 1)[0].strip()
    if not text:
        return None
    fields = text.split(None, 4)
    if len(fields) < 2:
        raise ValueError("expected 'setid uri [flags] [priority] [attrs]'")
    setid = _integer(fields[0], "setid")
    if setid < 0:
        raise ValueError(f"setid: must not be negative, got {setid}")
    check_uri(fields[1])
    flags = _integer(fields[2], "flags") if len(fields) > 2 else 0
    if flags < 0 or flags & ~_KNOWN_FLAGS:
        raise ValueError(f"flags: unknown bits in {fields[2]} (known: 0x{_KNOWN_FLAGS:x})")
    priority = _integer(fields[3], "priority") if len(fields) > 3 else 0
    body = fields[4].strip() if len(fields) > 4 else ""
    if " " in body or "\t" in body:
        raise ValueError(f"attrs: blanks are not allowed in {body!r}")
    attrs = parse_attrs(body, warn, where) if body else Attrs()
    return Entry(setid=setid, uri=fields[1], flags=flags, priority=priority, attrs=attrs,
                 line=line)


def parse_list(text: str, path: str = "<string>") -> DispatcherList:
    """The whole file, or ListFileError at the first bad line."""
    warnings: list[str] = []
    entries = []
    seen: dict[tuple[int, str], int | None] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            entry = parse_line(raw, line=number, warn=warnings, where=where)
        except ValueError as e:
            raise ListFileError(str(e), path=path, line=number) from None
        if entry is None:
            continue
        key = (entry.setid, entry.uri)
        if key in seen:
            raise ListFileError(f"{entry.uri} is already in set {entry.setid} (line {seen[key]})",
                                path=path, line=number)
        seen[key] = number
        entries.append(entry)
    if not entries:
        raise ListFileError("no destinations", path=path)
    return DispatcherList(entries=tuple(entries), warnings=tuple(warnings), source=path)


def load_list(path: str | Path) -> DispatcherList:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ListFileError(f"cannot read: {e}", path=str(path)) from None
    return parse_list(text, str(path))


def from_destinations(uris: tuple[str, ...] | list[str], setid: int = 1) -> DispatcherList:
    """``[dispatcher] destinations``: one set, equal priority, in the order given."""
    entries = []
    for uri in uris:
        try:
            check_uri(uri)
        except ValueError as e:
            raise ListFileError(str(e), path="dispatcher.destinations") from None
        entries.append(Entry(setid=setid, uri=uri))
    if not entries:
        raise ListFileError("no destinations", path="dispatcher.destinations")
    return DispatcherList(entries=tuple(entries), source="dispatcher.destinations")
