"""The Kamailio guide's troubleshooting, as written, against a running sipgw.

Every kamcmd command the guide gives (tests/data/guide-kamcmd.txt, kept a true copy of the
guide by tests/test_guide_commands.py) runs as ``sipgw ctl <the same words>`` and must
answer something sensible; then, after ``sipgw log level debug``, a SIPp caller behind a
"NAT" (its Via and Contact name 10.0.0.5, it sends from 127.0.0.1) calls a SIPp backend
through sipgw and a second address floods it, and each of the guide's log greps finds its
line in sipgw's log.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sipgw.tools.process import run_cli
from tests.helpers.guide import copied
from tests.integration.sipp import LOOPBACK, SippRunner, assert_all_calls_succeeded, free_port
from tests.integration.test_pike_sipp import FLOODER, Flooder
from tests.integration.test_ws_sipp import WsSipgw
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration

NAT_IP = "10.0.0.5"
DENSITY = 20  # pike: requests per second from one address before it is blocked

# What each command must answer (a regular expression searched in its output), given the
# backend's URI; the issue's forms of the same commands are run as well.
EXPECTED = {
    "dispatcher.list": r"URI: {backend}\n.*FLAGS: A",
    "core.printi": r"\A\s*\Z",
    "core.printi 42": r"\A42\n\Z",
    "mod.stats auth_db": r"\Aauth_db\n.*nonces\n.*entries: \d+\n.*bytes: \d+\n(.|\n)*Total: \d+",
    "mod.stats auth_db all": r"\Aauth_db\n(.|\n)*Total: \d+",
    "dispatcher.reload": r"\A\Z",
    "log.level 4": r"level +3\s+name +debug",
    "cfg.get core debug": r"\A3\n\Z",
    "stats.get_statistics active_dialogs": r"\Adialog:active_dialogs = 0\n\Z",
    "stats.get_statistics ws.ws_current_connections":
        r"\Awebsocket:ws_current_connections = 1\n\Z",
    "stats.get_statistics auth.authorized": r"\Aauth:authorized = \d+\n\Z",
    "stats.get_statistics auth.failed": r"\Aauth:failed = \d+\n\Z",
    "cfg.get": r"listen\n(.|\n)*dispatcher\n",
    "cfg.reload": r"\Areloaded: /\S+\nnot_in_effect: \[\]\n\Z",  # the path, cut to fit
}
ISSUE_FORMS = ["core.printi 42", "mod.stats auth_db all", "log.level 4", "cfg.get core debug"]


@pytest.fixture
def gw(sipp: SippRunner, tmp_path: Path):
    uas = sipp.uas("uas_call.xml", timeout=30)
    gw = WsSipgw(
        tmp_path / "sipgw", ws_port=free_port("tcp"), backend=uas.address, auth=True,
        log_level="info",
        # The caller on 127.0.0.1 is trusted (no credentials); the flooder is not.
        extra_toml=(f'[auth]\ntrusted = ["{LOOPBACK}/32"]\n'
                    f'[subscribers]\nurl = "sqlite:///{tmp_path}/subscribers.db"\n'
                    f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n'
                    f"[pike]\nsampling_time_unit = 1\nreqs_density_per_unit = {DENSITY}\n"
                    "remove_latency = 2\n"))
    gw.start()
    yield gw, uas
    gw.stop()


def sipgw_ctl(gw: WsSipgw, words: str):
    return run_cli("ctl", "-c", str(gw.config_path), *shlex.split(words))


def test_every_kamcmd_command_of_the_guide_works_as_sipgw_ctl_with_the_same_words(gw):
    gw, uas = gw
    commands = copied("kamcmd")
    assert len(commands) >= 10 and "mod.stats auth_db" in commands
    assert [c for c in commands if c not in EXPECTED] == [], "a guide command with no check"
    with WsPeer(gw.ws_address) as ws:  # one browser connected, for ws_current_connections
        assert ws.status == 101
        for words in ISSUE_FORMS + commands:
            done = sipgw_ctl(gw, words)
            assert done.returncode == 0, f"sipgw ctl {words}: {done.stderr}"
            expected = EXPECTED[words].format(backend=re.escape(f"sip:{uas.address}"))
            assert re.search(expected, done.stdout, re.S if ".*" in expected else 0), (
                f"sipgw ctl {words}:\n{done.stdout}")


def test_the_guides_log_greps_find_their_lines_at_debug_with_real_traffic(gw, sipp: SippRunner):
    gw, uas = gw
    assert "NAT detected" not in gw.log_text()
    done = run_cli("log", "level", "-c", str(gw.config_path), "debug")
    assert done.returncode == 0, done.stderr
    caller = sipp.uac("uac_call_natted.xml", remote=gw.address, service="5001",
                      keys={"nat_ip": NAT_IP}, timeout=20)
    assert_all_calls_succeeded(caller, uas)
    flooder = Flooder(gw)
    try:
        flooder.send(DENSITY * 3)
        gw.wait_for_log(f"pike blocking {FLOODER}", timeout=5)
    finally:
        flooder.close()
    log = gw.log_text().splitlines()

    def grep(pattern: str) -> list[str]:
        return [line for line in log if re.search(pattern, line, re.I)]

    for pattern in copied("grep"):
        assert grep(pattern), f"grep {pattern!r} finds nothing in sipgw's log"
    # The lines name what the operator is looking for.
    source = rf"udp:{re.escape(LOOPBACK)}:{caller.port}"
    assert any(re.search(rf"DEBUG nat: NAT detected for {source} .*Via {NAT_IP}:", line)
               for line in grep("NAT detected")), grep("NAT detected")
    assert any(f"Routing to Asterisk udp:{uas.address}: INVITE sip:5001@" in line
               for line in grep("Routing to Asterisk")), grep("Routing to Asterisk")
    assert all(" WARNING pike: " in line for line in grep("pike blocking"))
