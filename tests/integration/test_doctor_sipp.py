"""``sipgw doctor`` against a real sipgw and real peers (SIPp backend, Redis, nginx): it
passes on a healthy stack and names each problem, with its fix, exiting 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipgw.store import make_subscriber
from sipgw.tools.process import SipgwProcess, run_cli
from tests.helpers.certs import CertAuthority
from tests.helpers.redis_server import RedisServer
from tests.integration.sipgw_process import SipgwRunner
from tests.integration.sipp import LOOPBACK, SippRunner, free_port
from tests.integration.test_auth_sipp import REALM, add_user, auth_toml, redis  # noqa: F401
from tests.integration.test_tls_sipgw import TlsSipgw
from tests.integration.test_ws_nginx import nginx  # noqa: F401 - the fixture
from tests.integration.test_ws_sipp import WsSipgw

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


def doctor(gw: SipgwProcess, *args: str, password: str | None = None) -> tuple[int, dict]:
    """``sipgw doctor --json`` on the proxy's own config: its exit code and checks by name."""
    done = run_cli("doctor", "-c", str(gw.config_path), "--json", "--timeout", "1", *args,
                   input=None if password is None else password + "\n")
    return done.returncode, {c["check"]: c for c in json.loads(done.stdout)}


def failed(checks: dict) -> dict:
    return {name: c for name, c in checks.items() if c["status"] == "fail"}


def test_doctor_names_a_missing_user_a_wrong_ha1_domain_plaintext_passwords_and_redis_down(
    sipp: SippRunner, sipgw: SipgwRunner, redis: RedisServer, tmp_path: Path,
):
    uas = sipp.uas("uas_options.xml", timeout=60, calls=1000)
    gw = sipgw(backend=uas.address, auth=True,
               extra_toml=auth_toml(redis.url, nonce_secret='"shared"')
               + f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    add_user(gw, "5001", "password5001")
    # Written as a tool that hashes with the domain instead of the realm would.
    other = make_subscriber("5003", "other.example", "password5003")
    redis.cli("HSET", "subscriber:5003", *(x for kv in other.as_fields().items() for x in kv))
    redis.cli("HSET", "subscriber:5009", "username", "5009", "domain", REALM,
              "password", "plain")  # a legacy record: no hash at all

    code, checks = doctor(gw, "--user", "5001", "--password-stdin", password="password5001")
    assert (code, failed(checks)) == (0, {})
    assert checks["user 5001 ha1"]["status"] == "pass"
    plain = checks["plaintext passwords"]
    assert plain["status"] == "warn"
    assert plain["detail"] == ("1 record(s) keep a plaintext password (1 with no hash at "
                               f"all): 5009@{REALM}")
    assert f"sipgw users passwd 5009 --domain {REALM}" in plain["fix"]

    code, checks = doctor(gw, "--user", "5002")
    assert code == 1 and list(failed(checks)) == ["user 5002"]
    assert checks["user 5002"]["detail"] == f"5002 is not in {redis.url}"
    assert checks["user 5002"]["fix"] == "sipgw users add 5002"

    code, checks = doctor(gw, "--user", "5003", "--password-stdin", password="password5003")
    assert code == 1 and list(failed(checks)) == ["user 5003 domain", "user 5003 ha1"]
    assert checks["user 5003 domain"]["detail"] == \
        f"stored for domain other.example, but auth.realm is {REALM}"
    assert checks["user 5003 domain"]["fix"].startswith(f"sipgw users passwd 5003 --domain {REALM}")

    redis.stop()
    code, checks = doctor(gw)
    assert code == 1 and list(failed(checks)) == ["subscriber store"]
    store = checks["subscriber store"]
    assert store["detail"] == f"{redis.url}: Connection refused"
    assert "redis-cli" in store["fix"] and "systemctl status redis-server" in store["fix"]


def test_doctor_names_a_closed_ws_port_and_an_expired_certificate_served_on_wss(
    sipp: SippRunner, tmp_path: Path,
):
    uas = sipp.uas("uas_options.xml", timeout=60, calls=1000)
    ca = CertAuthority(tmp_path / "ca")
    chain, key, _ = ca.issue()
    gw = TlsSipgw(tmp_path / "gw", chain=chain, key=key, backend=uas.address,
                  extra_toml=f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    with gw:
        wss = f"websocket wss:{LOOPBACK}:{gw.wss_port}"
        code, checks = doctor(gw)
        assert (code, failed(checks)) == (0, {})
        assert checks[wss]["detail"].startswith(
            f"wss://{LOOPBACK}:{gw.wss_port}/: 101 with subprotocol sip over TLSv1.")

        # The file asks for a ws listener the running proxy does not have.
        ws_port = free_port("tcp")
        healthy = gw.config_path.read_text()
        gw.config_path.write_text(healthy.replace("ws = []", f'ws = ["{LOOPBACK}:{ws_port}"]'))
        code, checks = doctor(gw)
        closed = f"websocket ws:{LOOPBACK}:{ws_port}"
        assert code == 1 and list(failed(checks)) == [closed]
        assert "connection refused" in checks[closed]["detail"]
        assert "listen.ws" in checks[closed]["fix"]

        gw.config_path.write_text(healthy)
        expired, expired_key, _ = ca.issue("expired", days=-3)
        chain.write_bytes(expired.read_bytes())
        key.write_bytes(expired_key.read_bytes())
        mark = len(gw.log_text())
        gw.reload()
        gw.wait_for_log("reloaded ", after=mark)
        code, checks = doctor(gw)
        assert code == 1 and list(failed(checks)) == [wss, "tls certificate"]
        assert "the certificate it serves (CN=localhost) expired on" in checks[wss]["detail"]
        assert "systemctl reload sipgw" in checks[wss]["fix"]
        assert "3 days ago" in checks["tls certificate"]["detail"]
        assert "certbot renew" in checks["tls certificate"]["fix"]


def test_doctor_through_nginx_names_the_untrusted_proxy_until_trusted_proxies_is_set(
    sipp: SippRunner, nginx, tmp_path: Path,  # noqa: F811 - the fixture
):
    uas = sipp.uas("uas_options.xml", timeout=60, calls=1000)
    control = f'[control]\nsocket = "{tmp_path}/c.ctl"\n'
    gw = WsSipgw(tmp_path / "gw", ws_port=free_port("tcp"), backend=uas.address,
                 extra_toml=control)
    with gw:
        port = nginx(gw.ws_port)
        url = f"ws://{LOOPBACK}:{port}/ws"
        public = f'[websocket]\npublic_urls = ["{url}"]\n'
        gw.write_config(gw.config_text(extra_toml=control + public))
        code, checks = doctor(gw)
        seen = checks[f"client address via {url}"]
        assert code == 1 and list(failed(checks)) == [seen["check"]]
        assert checks[f"websocket {url}"]["status"] == "pass"
        assert seen["detail"].startswith(
            f"sipgw sees this client (127.0.0.2) as {LOOPBACK}: every browser through {url} "
            "shares that address")
        assert f'websocket.trusted_proxies = ["{LOOPBACK}/32"]' in seen["fix"]
        assert checks["trusted proxies"]["status"] == "warn"  # loopback listener, no trust

        gw.write_config(gw.config_text(
            extra_toml=control + public + f'trusted_proxies = ["{LOOPBACK}/32"]\n'))
        mark = len(gw.log_text())
        gw.reload()
        gw.wait_for_log("reloaded ", after=mark)
        code, checks = doctor(gw)
        assert (code, failed(checks)) == (0, {})
        assert checks[f"client address via {url}"]["detail"] == \
            "sipgw sees this client as 127.0.0.2, its own address"
        assert checks["trusted proxies"]["status"] == "pass"
