"""contrib/systemd/sipgw.service: Type=notify, and systemd-analyze verify accepts it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "sipgw.service"


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
