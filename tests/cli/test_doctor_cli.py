"""``sipgw doctor``'s command line: lines, fixes, --json, the password from stdin."""

from __future__ import annotations

import json

from tests.tools.test_doctor import user_store


def test_doctor_prints_each_check_with_its_fix_and_exits_1_on_a_failure(run, tmp_path):
    config = user_store(tmp_path)
    code, out, err = run("doctor", "-c", config, "--timeout", "0.2", "--user", "5001",
                         "--password-stdin", input="password5001\n")
    assert code == 1  # no proxy running
    assert out.splitlines()[0] == f"PASS  config: {config} is valid"
    assert "FAIL  control socket: " in out and "      fix: start the proxy" in out
    assert "PASS  user 5001 ha1: HA1 matches MD5(5001:192.168.210.54:password)" in out
    assert err.endswith("failed\n")
    code, out, _ = run("doctor", "-c", config, "--timeout", "0.2", "--json")
    assert {c["check"] for c in json.loads(out)} >= {"config", "control socket",
                                                    "subscriber store"}


def test_password_stdin_without_user_is_a_usage_error(run, tmp_path):
    code, _, _ = run("doctor", "-c", user_store(tmp_path), "--password-stdin", input="x\n")
    assert code == 2
