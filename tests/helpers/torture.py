"""The RFC 4475 torture messages in ``tests/data/torture``, read as bytes, never normalised.

See ``tests/data/torture/MANIFEST.md``: 49 ``.dat`` files in ``valid/``, ``invalid/`` and
``semantic/``, each the exact archive member of RFC 4475 Appendix A.1.
"""

from __future__ import annotations

import functools
from pathlib import Path

TORTURE_DIR = Path(__file__).resolve().parent.parent / "data" / "torture"
FOLDERS = ("valid", "invalid", "semantic")
CRLF = b"\r\n"
END_OF_HEADERS = b"\r\n\r\n"


@functools.cache
def torture_paths() -> dict[str, Path]:
    """Every torture message on disk, by name (``"wsinv"``), across the three folders."""
    out: dict[str, Path] = {}
    for folder in FOLDERS:
        for path in sorted((TORTURE_DIR / folder).glob("*.dat")):
            assert path.stem not in out, f"{path.stem} is in two folders"
            out[path.stem] = path
    return out


@functools.cache
def load(name: str) -> bytes:
    """The message's exact bytes (binary mode: CR, LF and NUL octets are data)."""
    return torture_paths()[name].read_bytes()


def folder_of(name: str) -> str:
    return torture_paths()[name].parent.name


def header_section(data: bytes) -> bytes:
    """Start line and header lines, without the empty line that ends them."""
    end = data.find(END_OF_HEADERS)
    return data if end < 0 else data[:end]


def after_headers(data: bytes) -> bytes:
    """Every octet after the first empty line (the body, plus any trailing octets)."""
    end = data.find(END_OF_HEADERS)
    return b"" if end < 0 else data[end + 4 :]


def insert_after_start_line(data: bytes, line: bytes) -> bytes:
    """``data`` with one more header line right after the start line."""
    first = data.index(CRLF) + 2
    return data[:first] + line + CRLF + data[first:]


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times"
    return data.replace(old, new)


def header_lines(data: bytes) -> list[bytes]:
    """The header section's logical lines, as octets: a folded field is one item."""
    out: list[bytes] = []
    for line in header_section(data).split(CRLF):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += CRLF + line
        else:
            out.append(line)
    return out
