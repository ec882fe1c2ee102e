"""``sipgw doctor`` against a real sipgw and a real SIPp backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.sipgw_process import SipgwRunner, run_cli
from tests.integration.sipp import SippRunner

pytestmark = pytest.mark.integration


def test_doctor_passes_on_a_healthy_stack_and_names_a_backend_that_went_down(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path,
):
    uas = sipp.uas("uas_options.xml", timeout=30, calls=1000)
    gw = sipgw(backend=uas.address, extra_toml=f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    done = run_cli("doctor", "-c", str(gw.config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # The one warning allowed: no subscriber yet (these tests trust loopback instead).
    checks = [line for line in lines if not line.startswith("      fix:")]
    assert all(line.startswith("PASS") or line.startswith("WARN  subscriber store")
               for line in checks), lines
    assert any(f"backend sip:{uas.address}: OPTIONS: 200 OK in" in line for line in lines)
    assert any(f"listener udp:{gw.address}: OPTIONS to itself: 200 OK" in line
               for line in lines)
    uas.stop()
    down = run_cli("doctor", "-c", str(gw.config_path), "--json", "--timeout", "1")
    assert down.returncode == 1
    checks = {c["check"]: c for c in json.loads(down.stdout)}
    backend = checks[f"backend sip:{uas.address}"]
    assert backend["status"] == "fail"
    assert "Asterisk" in backend["fix"]
    assert checks["control socket"]["status"] == "pass"
