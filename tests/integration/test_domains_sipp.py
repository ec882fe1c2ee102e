"""The README's first hour: on the embedded default (no ``auth.realm``, no aliases),
``sipgw users add 5001 --domain example.com`` is all it takes for a real SIPp phone to
register 5001@example.com through sipgw to a backend, on SQLite and on a real Redis; a
domain with no users is still refused ``403 Not relaying``, and the log says why.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess, run_cli
from tests.helpers.poll import wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.sipgw_process import UdpPeer, build_request
from tests.integration.sipp import SippRunner
from tests.integration.test_auth_sipp import redis, store_url, users  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

_ids = itertools.count(1)


def default_toml(url: str, tmp_path: Path) -> str:
    """The embedded default but for where the store is (not /var/lib/sipgw, which the
    systemd unit creates: here its stand-in exists too, before any user)."""
    (tmp_path / "state").mkdir(exist_ok=True)
    return f'[subscribers]\nurl = "{url}"\n'


def phone_file(path: Path, user: str, domain: str, password: str) -> Path:
    path.write_text(f"SEQUENTIAL\n{user};{domain};"
                    f"[authentication username={user} password={password}]\n")
    return path


def register_status(gw: SipgwProcess, user: str, domain: str) -> int:
    """The answer to one REGISTER of user@domain (Request-URI sip:domain), no credentials."""
    with UdpPeer(gw.address) as peer:
        n = next(_ids)
        data = build_request("REGISTER", f"sip:{domain}", peer=peer, call_id=f"dom{n}",
                             branch=f"z9hG4bKdom{n}", to=f"<sip:{user}@{domain}>")
        peer.send(data.replace(f"<sip:raw@{peer.address}>".encode(),
                               f"<sip:{user}@{domain}>".encode(), 1))
        reply = peer.receive(3.0)
    assert reply is not None, gw.describe()
    return reply.status


def test_the_readme_example_registers_on_the_default_config_through_to_a_backend(
    sipgw, sipp: SippRunner, store_url: str, tmp_path: Path  # noqa: F811 - the fixture
):
    registrar = sipp.uas("uas_register", calls=1)
    gw = sipgw(backend=registrar.address, auth=True, extra_toml=default_toml(store_url, tmp_path))
    # Before the user exists, example.com is nobody's: refused, and the "no" is remembered.
    assert register_status(gw, "5001", "example.com") == 403
    done = users(gw, "add", "5001", "--domain", "example.com", "--password-stdin",
                 password="s3cret")
    assert done.returncode == 0, done.stderr
    # A user just added works within seconds (the "no" is kept 5 s).
    wait_until(lambda: register_status(gw, "5001", "example.com") == 401, timeout=10,
               what="example.com never became ours after sipgw users add", caller=gw)

    phone = sipp.uac("uac_register_auth", remote=gw.address,
                     inf=phone_file(tmp_path / "5001.csv", "5001", "example.com", "s3cret"))
    assert phone.wait() == 0, phone.describe()
    assert registrar.wait() == 0, registrar.describe()
    [register] = [m for m in registrar.messages()
                  if m.direction == "received" and m.method == "REGISTER"]
    assert register.start_line == "REGISTER sip:example.com SIP/2.0"
    assert register.header("From").startswith("<sip:5001@example.com>")


def test_a_domain_without_users_is_refused_not_relaying_and_the_log_says_why(
    sipgw, sipp: SippRunner, store_url: str, tmp_path: Path  # noqa: F811 - the fixture
):
    backend = sipp.uas("uas_register", calls=1)
    gw = sipgw(backend=backend.address, auth=True, extra_toml=default_toml(store_url, tmp_path))
    assert users(gw, "add", "5001", "--domain", "example.com", "--password-stdin",
                 password="s3cret").returncode == 0
    before = len(gw.log_text())
    phone = sipp.uac("uac_register_auth", remote=gw.address, timeout=3,
                     inf=phone_file(tmp_path / "foreign.csv", "5001", "foreign.example", "x"))
    assert phone.wait() != 0
    assert [m.status for m in phone.messages() if m.direction == "received"][:1] == [403]
    line = gw.wait_for_log(r"auth: 403 Not relaying REGISTER", after=before)
    assert ("neither the From domain foreign.example nor the Request-URI "
            "sip:foreign.example is ours") in line
    assert [m for m in backend.messages() if m.direction == "received"] == []


def test_redis_keeps_a_set_of_each_domain_s_users_beside_their_hashes(
    redis: RedisServer, tmp_path: Path  # noqa: F811 - the fixture
):
    """What ``has_domain`` asks (one EXISTS), kept by ``sipgw users`` as accounts come,
    move between domains (the default key has no domain) and go."""
    config = tmp_path / "sipgw.toml"
    config.write_text(f'[subscribers]\nurl = "{redis.url}"\n')

    def cli(*args: str) -> None:
        done = run_cli("users", *args, "-c", str(config), input="pw\n")
        assert done.returncode == 0, done.stderr

    cli("add", "5001@example.com", "--password-stdin")
    cli("add", "5002@example.com", "--password-stdin")
    assert redis.cli("SCARD", "sipgw:domain:example.com") == b":2\r\n"
    cli("del", "5001@example.com")
    assert redis.cli("SMEMBERS", "sipgw:domain:example.com") == b"*1\r\n$4\r\n5002\r\n"
    # The default key is subscriber:USER, one per user whatever the domain: it moves.
    cli("passwd", "5002@example.org", "--password-stdin")
    assert redis.cli("EXISTS", "sipgw:domain:example.com") == b":0\r\n"
    assert redis.cli("EXISTS", "sipgw:domain:example.org") == b":1\r\n"
    listed = run_cli("users", "list", "--json", "-c", str(config))
    assert [(u["username"], u["domain"]) for u in json.loads(listed.stdout)] == [
        ("5002", "example.org")]
    cli("del", "5002@example.org")
    assert redis.cli("EXISTS", "sipgw:domain:example.org") == b":0\r\n"
