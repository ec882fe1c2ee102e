"""Loading sipgw.toml: TOML parsed by tomllib, every value checked by its key's kind, and
every refusal a ``ConfigError`` naming the file, the line and the key:
``/etc/sipgw/sipgw.toml:12: listen.udp: expected a list of "host:port" strings, got 5060``.

The rules of the file:

* every key is optional; a key that is missing takes its default;
* an unknown section or key is an error, with a "did you mean" hint;
* types are strict: a boolean is not an integer, an integer is fine where seconds are wanted.

Also ``config_to_dict``: the configuration as JSON for ``cfg.get``, secrets masked.
Pure: no Twisted and no I/O beyond reading the one file, so the CLI and the tests can use it.
"""

from __future__ import annotations

import bisect
import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipgw.config.kinds import Invalid, show
from sipgw.config.locate import StrPath
from sipgw.config.schema import SCHEMA, SECTIONS, Config

_SECTION_BY_NAME = {section.name: section for section in SECTIONS}
_KEY_BY_DOTTED = {key.dotted: key for key in SCHEMA}


class ConfigError(Exception):
    """A configuration file sipgw refuses, naming the file, the line and the key."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        self.key = key
        where = path or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        text = f"{where}: {key}: {reason}" if key else f"{where}: {reason}"
        super().__init__(text)


# --- finding the line of a key ----------------------------------------------------------------


class _Locator:
    """Line numbers of the keys in a TOML text that tomllib has already accepted.

    Follows ``[table]`` and ``[[array]]`` headers, dotted and quoted keys, inline tables and
    arrays (element ``i`` of ``a.b`` is the path ``("a", "b", i)``), and skips strings and
    comments so text inside them is never mistaken for a key. The text is known to be valid
    TOML, which keeps this a skimmer rather than a parser.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str) -> None:
        self._text = text
        self._newlines = [match.start() for match in re.finditer("\n", text)]
        self.lines: dict[tuple[object, ...], int] = {}
        self._scan()

    def _note(self, path: tuple[object, ...], pos: int) -> None:
        line = bisect.bisect_left(self._newlines, pos) + 1
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def _scan(self) -> None:
        text, i = self._text, 0
        table: tuple[object, ...] = ()
        while True:
            i = self._skip_blank(i, newlines=True)
            if i >= len(text):
                return
            start = i
            if text[i] == "[":
                width = 2 if text.startswith("[[", i) else 1
                parts, i = self._read_key(i + width)
                table = parts
                self._note(table, start)
                i += width
            else:
                parts, i = self._read_key(i)
                self._note(table + parts, start)
                i = self._skip_value(i + 1, table + parts)  # i was at the "="

    def _skip_blank(self, i: int, *, newlines: bool) -> int:
        text = self._text
        while i < len(text):
            c = text[i]
            if c in " \t" or (newlines and c in "\r\n"):
                i += 1
            elif c == "#":
                end = text.find("\n", i)
                i = len(text) if end < 0 else (end + 1 if newlines else end)
            else:
                break
        return i

    def _read_key(self, i: int) -> tuple[tuple[object, ...], int]:
        text, parts = self._text, []
        while True:
            i = self._skip_blank(i, newlines=False)
            if text[i] == '"':
                end = self._end_of_basic(i)
                parts.append(tomllib.loads(f"k = {text[i:end]}")["k"])  # unescapes for us
            elif text[i] == "'":
                end = text.index("'", i + 1) + 1
                parts.append(text[i + 1 : end - 1])
            else:
                match = self._BARE.match(text, i)
                assert match is not None
                end = match.end()
                parts.append(match.group())
            i = self._skip_blank(end, newlines=False)
            if text[i] != ".":
                return tuple(parts), i
            i += 1

    def _end_of_basic(self, i: int) -> int:
        text, i = self._text, i + 1
        while text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1

    def _end_of_multiline(self, i: int, quotes: str) -> int:
        text, i = self._text, i + 3
        while True:
            k = text.index(quotes, i)
            backslashes = 0
            while quotes == '"""' and text[k - 1 - backslashes] == "\\":
                backslashes += 1
            if backslashes % 2:
                i = k + 1
                continue
            end = k + 3
            while end < len(text) and end - k < 5 and text[end] == quotes[0]:
                end += 1  # up to two quotes just before the closing ones are content
            return end

    def _skip_value(self, i: int, path: tuple[object, ...]) -> int:
        text = self._text
        i = self._skip_blank(i, newlines=False)
        if text.startswith('"""', i) or text.startswith("'''", i):
            return self._end_of_multiline(i, text[i : i + 3])
        if text[i] == '"':
            return self._end_of_basic(i)
        if text[i] == "'":
            return text.index("'", i + 1) + 1
        if text[i] in "[{":
            return self._skip_container(i, path)
        while i < len(text) and text[i] not in ",]}\r\n#":
            i += 1  # number, boolean, date or time
        return i

    def _skip_container(self, i: int, path: tuple[object, ...]) -> int:
        text, closing, index = self._text, "]" if self._text[i] == "[" else "}", 0
        i += 1
        while True:
            i = self._skip_blank(i, newlines=True)
            if text[i] == closing:
                return i + 1
            start = i
            if closing == "]":
                sub = path + (index,)
            else:
                parts, i = self._read_key(i)
                sub = path + parts
                i += 1  # the "="
            self._note(sub, start)
            i = self._skip_value(i, sub)
            i = self._skip_blank(i, newlines=True)
            if text[i] == ",":
                i += 1
                index += 1


# --- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedConfig:
    config: Config
    path: str | None  # None: the embedded default
    not_in_effect: list[str]  # keys the file sets that the running code does not use yet


class _Where:
    """Builds errors for one file; its lines are only scanned when an error needs one."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self._text = text
        self._lines: dict[tuple[object, ...], int] | None = None

    def _line_of(self, path: tuple[object, ...]) -> int | None:
        if self._lines is None:
            try:
                self._lines = _Locator(self._text).lines
            except (IndexError, ValueError, AssertionError):
                # A TOML corner the skimmer does not know: the error goes without a line
                # rather than losing its reason to a traceback.
                self._lines = {}
        return self._lines.get(path)

    def error(self, dotted: str, reason: str, index: int | None = None) -> ConfigError:
        path = tuple(dotted.split("."))
        line = self._line_of(path + (index,)) if index is not None else None
        if line is None:
            line = self._line_of(path)
        return ConfigError(reason, path=self.path, line=line, key=dotted)


def _did_you_mean(section: str, name: str | None) -> str:
    """A hint for an unknown ``section`` or ``section.name``; "" when nothing is close."""
    if name is None:
        close = difflib.get_close_matches(section, list(_SECTION_BY_NAME), n=1)
        same = [key.dotted for key in SCHEMA if key.name == section]
    else:
        known = [key.name for key in _SECTION_BY_NAME[section].keys]
        close = [f"{section}.{m}" for m in difflib.get_close_matches(name, known, n=1)]
        same = [key.dotted for key in SCHEMA if key.name == name]
    guesses = close or same
    return f" (did you mean {guesses[0]}?)" if guesses else ""


def _parse_raw(raw: dict[str, Any], where: _Where) -> tuple[Config, list[str]]:
    values = {key.dotted: key.kind.parse(key.default) for key in SCHEMA}
    in_file: set[str] = set()
    for section_name, table in raw.items():
        if section_name not in _SECTION_BY_NAME:
            hint = _did_you_mean(section_name, None)
            if isinstance(table, dict):
                raise where.error(section_name, f"unknown section{hint}")
            raise where.error(section_name, f"unknown key outside any [section]{hint}")
        if not isinstance(table, dict):
            raise where.error(
                section_name, f"expected a table ([{section_name}]), got {show(table)}"
            )
        for name, value in table.items():
            dotted = f"{section_name}.{name}"
            key = _KEY_BY_DOTTED.get(dotted)
            if key is None:
                raise where.error(dotted, f"unknown key{_did_you_mean(section_name, name)}")
            try:
                values[dotted] = key.kind.parse(value)
            except Invalid as exc:
                raise where.error(dotted, exc.reason, exc.index) from None
            in_file.add(dotted)
    _check_together(values, in_file, where)
    if values["subscribers.url"] == "":
        directory = values["state.directory"].rstrip("/")
        values["subscribers.url"] = f"sqlite://{directory}/subscribers.db"
    sections = {
        section.name: section.cls(**{key.name: values[key.dotted] for key in section.keys})
        for section in SECTIONS
    }
    not_in_effect = [key.dotted for key in SCHEMA if key.dotted in in_file and not key.in_effect]
    return Config(**sections), not_in_effect


def _check_together(values: dict[str, Any], in_file: set[str], where: _Where) -> None:
    """Rules that involve more than one key; the error names the key the file sets."""
    _in_order(values, in_file, where, "timers.t1", "timers.t2")
    _in_order(values, in_file, where, "overload.shed_delay", "overload.drop_delay", strict=True)
    _in_order(values, in_file, where, "overload.retry_after", "overload.retry_after_max")
    if values["dispatcher.algorithm"] in (7, 12, 13):
        raise where.error("dispatcher.algorithm", f"algorithm {values['dispatcher.algorithm']} is "
                          "not supported (0-6, 8-11 are)")
    for transport in ("tls", "wss"):
        if values[f"listen.{transport}"] and not values["tls.certificate"]:
            raise where.error(f"listen.{transport}", "needs tls.certificate, which is not set")
    if not any(values[f"listen.{t}"] for t in ("udp", "tcp", "tls", "ws", "wss")):
        raise where.error("listen", "every listener is off: sipgw would accept nothing")


def _in_order(values: dict[str, Any], in_file: set[str], where: _Where, low: str, high: str,
              *, strict: bool = False) -> None:
    """``low`` must not be more than ``high`` (with ``strict``, must be less)."""
    lo, hi = values[low], values[high]
    if hi > lo or (hi == lo and not strict):
        return
    if high in in_file:
        rule = "be more than" if strict else "not be less than"
        raise where.error(high, f"must {rule} {low} ({lo:g}), got {hi:g}")
    rule = "be less than" if strict else "not be more than"
    raise where.error(low, f"must {rule} {high} ({hi:g}), got {lo:g}")


def parse_config(text: str, path: str = "<string>") -> LoadedConfig:
    """Load configuration from TOML ``text``; ``path`` is only used in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(str(exc), text, path) from None
    config, not_in_effect = _parse_raw(raw, _Where(path, text))
    return LoadedConfig(config=config, path=path, not_in_effect=not_in_effect)


def _syntax_error(message: str, text: str, path: str) -> ConfigError:
    match = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", message)
    if match:
        reason, line, column = match.groups()
        return ConfigError(f"{reason} (column {column})", path=path, line=int(line))
    match = re.fullmatch(r"(?s)(.*) \(at end of document\)", message)
    if match:
        last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
        return ConfigError(f"{match.group(1)} (at the end of the file)", path=path,
                           line=max(last_line, 1))  # fmt: skip
    return ConfigError(message, path=path)


def load_config(path: StrPath | None) -> LoadedConfig:
    """Load the file at ``path``; ``None`` means the embedded default (every key default)."""
    if path is None:
        return LoadedConfig(config=default_config(), path=None, not_in_effect=[])
    shown = os.fspath(path)
    try:
        data = Path(shown).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=shown) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", path=shown, line=line) from None
    return parse_config(text, shown)


def default_config() -> Config:
    """The embedded default: runs without root and without any other server."""
    return parse_config("", "<default>").config


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The configuration as JSON (for ``cfg.get``), secrets masked as "***"."""
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        values = getattr(config, section.name)
        out[section.name] = {
            key.name: key.kind.dump(getattr(values, key.name)) for key in section.keys
        }
    return out
