"""ARCHITECTURE.md stays a true map: every file and folder it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "ARCHITECTURE.md").read_text()

# `proxy/relay/`, `sip/parser.py`, `sipgw/proxy/service.py`, `man/sipgw-rpc.7`...
NAMED = re.compile(r"`((?:sipgw/|man/|etc/)?[a-z_]+(?:/[a-z_.0-9-]+)*(?:\.py|\.\d|/))`")


def _exists(name: str) -> bool:
    return any((base / name).exists() for base in (ROOT, ROOT / "sipgw", ROOT / "sipgw" / "proxy"))


def test_every_path_architecture_md_names_exists():
    names = {m.group(1) for m in NAMED.finditer(TEXT) if "/" in m.group(1)}
    assert len(names) > 30  # the map names files, and this test reads it
    missing = sorted(name for name in names if not _exists(name))
    assert missing == [], f"ARCHITECTURE.md names what is not there: {missing}"


def test_every_package_of_sipgw_is_on_the_map():
    packages = [p.name for p in (ROOT / "sipgw").iterdir() if (p / "__init__.py").exists()]
    proxy = [p.name for p in (ROOT / "sipgw" / "proxy").iterdir() if (p / "__init__.py").exists()]
    assert [p for p in packages if f"sipgw/{p}/" not in TEXT] == []
    assert [p for p in proxy if f"{p}/" not in TEXT] == []
