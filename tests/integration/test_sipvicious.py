"""Debian's sipvicious scanners against a real sipgw on loopback with a real subscriber
store (SQLite, users added with ``sipgw users add``) and a backend that must never hear a
thing from them.

The tools call themselves ``friendly-scanner``, which REQINIT drops unanswered
(``acl.user_agent_deny``): to them nobody is there. An attacker can change that header, so
each scan runs a second time with the tools' request builder set to a phone's User-Agent
(tests/helpers/sipvicious.py). Then sipgw answers, and its answers must give nothing away:

- svwar gets the same challenge for an extension that exists and one that does not;
- svcrack gets a user banned after auth's threshold (3 failures): every request for that
  user is then refused 403 before any check, the right password as the wrong ones, so a
  password the list holds beyond the threshold is never found. (One among the first three
  guesses would be: no threshold can stop a guess before it is reached; what it bounds is
  the number of guesses, 3 per ban period, which a real password survives.)
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess, run_cli
from tests.helpers import sipvicious
from tests.integration.sipgw_process import SipgwRunner, UdpPeer, control_toml
from tests.integration.sipp import free_port
from tests.integration.test_auth_sipp import Phone, auth_toml

pytestmark = pytest.mark.integration

PHONE_AGENT = "Yealink SIP-T46S 66.86.0.15"
PASSWORD = "pw"
EXISTING = ("5001", "5003", "5007")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory):
    """One sipgw for every scan of this module, on SQLite with the EXISTING users and the
    ones svcrack goes after (imported with ``sipgw users import``), relaying to a silent
    UDP backend; yields (gw, backend) and checks at the end that the backend heard
    nothing. Each svcrack test attacks a user of its own, so bans do not carry over."""
    workdir = tmp_path_factory.mktemp("scanned")
    runner = SipgwRunner(workdir)
    backend = UdpPeer()
    try:
        gw = runner(backend=backend.address, auth=True,
                    extra_toml=auth_toml(f"sqlite://{workdir}/subs.db") + control_toml(workdir))
        accounts = workdir / "accounts.csv"
        accounts.write_text("username,password\n" + "".join(
            f"{user},{PASSWORD}\n" for user in (*EXISTING, "raw", "quiet", "cracked")))
        done = run_cli("users", "import", str(accounts), "-c", str(gw.config_path))
        assert done.returncode == 0, done.stderr
        yield gw, backend
        assert backend.collect(0.2) == [], "a scanner's request reached the backend"
    finally:
        backend.close()
        runner.stop_all()


def target(gw: SipgwProcess) -> list[str]:
    # -P: a port of its own, not 5060, where any stray SIP on the host would look to the
    # scanner like an answer from a device.
    return ["-p", str(gw.port), "-b", "127.0.0.1", "-P", str(free_port("udp")), "127.0.0.1"]


def bans(gw: SipgwProcess) -> list[dict]:
    done = run_cli("ctl", "-c", str(gw.config_path), "--json", "auth.bans")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["BANS"]


def test_svmap_finds_nothing_while_the_same_scan_as_a_phone_does_find_a_sip_server(
    scanned, tmp_path: Path
):
    gw, _ = scanned
    home = tmp_path / "sv"
    for method in ("OPTIONS", "INVITE"):
        out = sipvicious.run("svmap", "-m", method, *target(gw), home=home, limit=20)
        assert "found nothing" in out, out
    # Not a broken scan: under another name the OPTIONS is answered (sipgw answers
    # OPTIONS addressed to itself, the keepalive of every phone).
    out = sipvicious.run("svmap", *target(gw), home=home, limit=20, user_agent=PHONE_AGENT)
    assert f"127.0.0.1:{gw.port}" in out, out


@pytest.mark.parametrize("agent", [None, PHONE_AGENT], ids=["scanner", "phone"])
@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_svwar_cannot_tell_existing_extensions_from_missing_ones(
    scanned, tmp_path: Path, method: str, agent: str | None
):
    gw, _ = scanned
    out = sipvicious.run("svwar", "--force", "-m", method, "-e", "5000-5009", *target(gw),
                         home=tmp_path / "sv", limit=30, user_agent=agent)
    assert "found nothing" in out, out
    assert not any(f"| {user}" in out for user in EXISTING), out


def failures(gw: SipgwProcess, user: str) -> int:
    return gw.log_text().count(f"auth: failed for {user}@")


def test_svcrack_as_itself_gets_no_answer_at_all(scanned, tmp_path: Path):
    gw, _ = scanned
    words = tmp_path / "words.txt"
    words.write_text("one\ntwo\nthree\npw\n")
    out = sipvicious.run("svcrack", "-u", "quiet", "-d", str(words), *target(gw),
                         home=tmp_path / "sv", limit=5)
    assert "| pw" not in out, out
    assert failures(gw, "quiet") == 0  # never got as far as a password check
    assert not [ban for ban in bans(gw) if ban["NAME"].startswith("quiet@")]


def crack_as_a_phone(gw: SipgwProcess, tmp_path: Path, user: str, words: list[str]) -> str:
    """svcrack with a phone's User-Agent on ``user`` until the user is banned, then a
    little longer (it keeps asking, and gets 403s); its output."""
    wordlist = tmp_path / "words.txt"
    wordlist.write_text("".join(f"{w}\n" for w in words))
    process = sipvicious.start("svcrack", "-u", user, "-d", str(wordlist), *target(gw),
                               home=tmp_path / "sv", user_agent=PHONE_AGENT)
    try:
        deadline = time.monotonic() + 20
        while not any(ban["NAME"].startswith(f"{user}@") for ban in bans(gw)):
            assert time.monotonic() < deadline, gw.describe()
        return sipvicious.finish(process, limit=2.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_svcrack_as_a_phone_without_the_password_finds_nothing_and_gets_the_user_banned(
    scanned, tmp_path: Path
):
    gw, _ = scanned
    out = crack_as_a_phone(gw, tmp_path, "raw", ["one", "two", "three", "four", "five"])
    assert not re.search(r"\|\s*raw\s*\|", out), out
    assert failures(gw, "raw") == 3  # the threshold; nothing was checked after it
    [ban] = [b for b in bans(gw) if b["NAME"].startswith("raw@")]
    assert ban["TYPE"] == "user" and ban["EXPIRES"] > 0
    # Banned: the right password is refused like a wrong one, before any challenge.
    phone = Phone(gw)
    try:
        phone.register()
        phone.peer.expect("403")
    finally:
        phone.close()


def test_svcrack_as_a_phone_never_reaches_a_password_listed_past_the_ban_threshold(
    scanned, tmp_path: Path
):
    gw, _ = scanned
    out = crack_as_a_phone(gw, tmp_path, "cracked", ["one", "two", "three", "four", PASSWORD])
    assert f"| {PASSWORD}" not in out, out
    assert failures(gw, "cracked") == 3  # the fourth guess and the right fifth: unchecked
