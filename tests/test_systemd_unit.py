"""contrib/systemd/sipgw.service, the one unit file: Type=notify, systemd-analyze verify
accepts it, and the README installs it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "sipgw.service"


def test_the_unit_is_type_notify_with_a_watchdog_reload_and_hardening():
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID",
                 "RuntimeDirectory=sipgw", "StateDirectory=sipgw", "User=sipgw",
                 "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert f"\n{line}\n" in text, line
    assert re.search(r"\nWatchdogSec=\d+s\n", text)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd): run ./scripts/setup"
    sipgw = Path(sys.executable).with_name("sipgw")
    assert sipgw.exists(), sipgw
    # Installed paths differ here: the command of this checkout, and no installed man pages.
    text = UNIT.read_text().replace("/usr/local/bin/sipgw", str(sipgw))
    text = re.sub(r"(?m)^Documentation=.*\n", "", text)
    unit = tmp_path / "sipgw.service"
    unit.write_text(text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_the_unit_is_the_only_one_and_the_readme_installs_it():
    units = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.service")
             if not {".git", ".venv", "node_modules"} & set(p.relative_to(ROOT).parts)}
    assert units == {"contrib/systemd/sipgw.service"}
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running under systemd", 1)[1].split("\n## ", 1)[0]
    assert "install -m 0644 contrib/systemd/sipgw.service /etc/systemd/system/" in section
    assert "Type=notify" in section
