"""The Kamailio guide's kamcmd commands and log greps: the copy in tests/data, and the guide.

The guide (``shared/reference/kamailio-webrtc-gateway-guide.md``) lives beside the sipgw
checkout, not in it: :func:`guide_path` looks for it next to the checkout and the folders
above. The copy (``tests/data/guide-kamcmd.txt``) is what the integration test runs, so that
it runs on a clone alone; ``tests/test_guide_commands.py`` keeps the two in step.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPY = ROOT / "tests" / "data" / "guide-kamcmd.txt"
GUIDE = Path("shared") / "reference" / "kamailio-webrtc-gateway-guide.md"

_KAMCMD = re.compile(r"\bkamcmd\s+(\S.*?)\s*$")


def copied(kind: str) -> list[str]:
    """The ``kamcmd:`` or ``grep:`` entries of the copy, in order."""
    out = []
    for line in COPY.read_text().splitlines():
        name, sep, value = line.partition(": ")
        if sep and name == kind and not line.startswith("#"):
            out.append(value.strip())
    return out


def guide_path() -> Path | None:
    """The guide, beside the checkout or beside a folder above it (a worktree's)."""
    for folder in ROOT.parents:
        if (folder / GUIDE).is_file():
            return folder / GUIDE
    return None


def guide_commands(text: str) -> list[str]:
    """Every kamcmd command of the guide, once each, in the order it first gives them."""
    found: list[str] = []
    for line in text.splitlines():
        match = _KAMCMD.search(line)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found
