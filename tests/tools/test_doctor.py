"""sipgw doctor's checks without a proxy: each problem named, with its fix."""

from __future__ import annotations

import socket
import threading

from sipgw.tools.doctor import FAIL, PASS, WARN, Doctor, exit_code
from sipgw.tools.options import NoAnswer, build_options, ping


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(tmp_path, text: str) -> str:
    path = tmp_path / "sipgw.toml"
    path.write_text(text + f'\n[control]\nsocket = "{tmp_path}/none.ctl"\n'
                           f'[state]\ndirectory = "{tmp_path}"\n')
    return str(path)


def by_name(checks):
    return {c.name: c for c in checks}


def test_a_bad_config_is_the_one_failure_reported_with_file_and_line(tmp_path):
    path = tmp_path / "sipgw.toml"
    path.write_text("[proxy]\nmax_forwards = 0\n")
    (check,) = list(Doctor(str(path)).run())
    assert (check.name, check.status) == ("config", FAIL)
    assert f"{path}:2: proxy.max_forwards" in check.detail
    assert "sipgw serve --check" in check.fix


def test_no_proxy_backend_down_and_ws_port_closed_are_each_named(tmp_path):
    port, ws, backend = closed_port(), closed_port(), closed_port()
    path = write(
        tmp_path,
        f'[listen]\nudp = []\ntcp = ["127.0.0.1:{port}"]\n'
        f'ws = ["127.0.0.1:{ws}"]\n'
        f'[dispatcher]\ndestinations = ["sip:127.0.0.1:{backend};transport=tcp"]',
    )
    checks = list(Doctor(path, timeout=0.5).run())
    found = by_name(checks)
    assert found["config"].status == PASS
    assert found["control socket"].status == FAIL
    assert "systemctl start sipgw" in found["control socket"].fix
    assert found[f"listener tcp:127.0.0.1:{port}"].status == FAIL
    ws_check = found[f"websocket ws:127.0.0.1:{ws}"]
    assert ws_check.status == FAIL and "connection refused" in ws_check.detail
    down = found[f"backend sip:127.0.0.1:{backend};transport=tcp"]
    assert down.status == FAIL and "connection refused" in down.detail
    assert "Asterisk" in down.fix
    assert exit_code(checks) == 1


def test_a_redis_store_with_secrets_of_this_machine_only_is_a_warning_naming_both(tmp_path):
    base = ('[subscribers]\nurl = "redis://127.0.0.1:6379/2"\n'
            '[listen]\nudp = []\ntcp = []\nws = ["127.0.0.1:1"]\n'
            '[dispatcher]\ndestinations = ["sip:127.0.0.1:1;transport=tcp"]\n')
    checks = by_name(Doctor(write(tmp_path, base), timeout=0.2).run())
    check = checks["cluster secrets"]
    assert check.status == WARN
    assert f"{tmp_path}/route.key" in check.detail and "Record-Route" in check.detail
    assert "auth.nonce_secret" in check.fix and "proxy.route_secret" in check.fix
    # Either one in the config gives every node the same two keys (the other is derived).
    for section in ('[proxy]\nroute_secret = "r"\n', '[auth]\nnonce_secret = "n"\n'):
        path = write(tmp_path, base + section)
        assert "cluster secrets" not in by_name(Doctor(path, timeout=0.2).run())
    # On SQLite there is one node: nothing to share.
    path = write(tmp_path, base.replace("redis://127.0.0.1:6379/2",
                                        f"sqlite://{tmp_path}/subs.db"))
    assert "cluster secrets" not in by_name(Doctor(path, timeout=0.2).run())


def test_options_ping_reads_the_final_answer_and_its_latency_over_udp():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer():
        data, peer = server.recvfrom(65535)
        head = data.decode().split("\r\n")
        via = next(line for line in head if line.startswith("Via:"))
        for status in ("100 Trying", "404 Not Here"):
            server.sendto(f"SIP/2.0 {status}\r\n{via}\r\nServer: fake\r\n"
                          "Content-Length: 0\r\n\r\n".encode(), peer)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        pong = ping(f"sip:127.0.0.1:{port}", timeout=2)
    finally:
        thread.join(5)
        server.close()
    assert (pong.status, pong.reason, pong.server) == (404, "Not Here", "fake")
    assert pong.latency_ms >= 0


def test_options_ping_to_nothing_says_so_within_its_timeout():
    try:
        ping(f"sip:127.0.0.1:{closed_port()};transport=tcp", timeout=0.5)
    except NoAnswer as e:
        assert "connection refused" in e.why
    else:
        raise AssertionError("no NoAnswer")


def test_the_options_request_is_well_formed_sip():
    from sipgw.sip.parser import parse_message

    req = parse_message(build_options("sip:10.0.0.5:5060", "udp", ("192.0.2.1", 5062),
                                      "abc123def456", "x@doctor"))
    assert req.method == "OPTIONS" and req.call_id == "x@doctor"
    assert req.top_via.branch == "z9hG4bKabc123def456"


def certificate(tmp_path, *, days: float, host: str = "sip.example.com"):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=400))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    path = tmp_path / f"cert-{days}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def cert_check(tmp_path, cert, advertise="sip.example.com"):
    path = write(tmp_path, f'[tls]\ncertificate = "{cert}"\n'
                           f'[listen]\nudp = []\ntcp = ["127.0.0.1:{closed_port()}"]\nws = []\n'
                           f'advertise = "{advertise}"\n'
                           '[dispatcher]\ndestinations = ["sip:127.0.0.1:1;transport=tcp"]')
    return by_name(Doctor(path, timeout=0.2).run())["tls certificate"]


def test_an_expired_certificate_fails_naming_the_date_and_the_fix(tmp_path):
    check = cert_check(tmp_path, certificate(tmp_path, days=-3))
    assert check.status == FAIL
    assert "expired on" in check.detail and "3 days ago" in check.detail
    assert "renew" in check.fix


def test_a_certificate_for_another_host_fails_and_one_expiring_soon_warns(tmp_path):
    other = cert_check(tmp_path, certificate(tmp_path, days=90, host="other.example.com"))
    assert other.status == FAIL and "does not name sip.example.com" in other.detail
    soon = cert_check(tmp_path, certificate(tmp_path, days=5))
    assert soon.status == WARN and "valid for 5 more days" in soon.detail
    good = cert_check(tmp_path, certificate(tmp_path, days=90))
    assert good.status == PASS and "valid for 90 more days" in good.detail


def test_redis_down_is_named_with_its_address_and_the_fix(tmp_path):
    port = closed_port()
    path = write(tmp_path, f'[subscribers]\nurl = "redis://127.0.0.1:{port}/2"\n'
                           f'[listen]\nudp = []\ntcp = ["127.0.0.1:{closed_port()}"]\nws = []\n'
                           '[dispatcher]\ndestinations = ["sip:127.0.0.1:1;transport=tcp"]')
    check = by_name(Doctor(path, timeout=0.5).run())["subscriber store"]
    assert check.status == FAIL
    assert f"redis://127.0.0.1:{port}/2: Connection refused" in check.detail
    assert "redis-cli" in check.fix


def test_a_redis_that_answers_passes_after_auth_and_select(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    seen: list[bytes] = []

    def redis():
        conn, _ = server.accept()
        with conn:
            for _ in range(3):
                seen.append(conn.recv(4096))
                conn.sendall(b"+PONG\r\n" if b"PING" in seen[-1] else b"+OK\r\n")

    thread = threading.Thread(target=redis)
    thread.start()
    try:
        path = write(tmp_path, f'[subscribers]\nurl = "redis://:pw@127.0.0.1:{port}/2"\n'
                               f'[auth]\nnonce_secret = "s"\n'
                               f'[listen]\nudp = []\ntcp = ["127.0.0.1:{closed_port()}"]\n'
                               'ws = []\n'
                               '[dispatcher]\ndestinations = ["sip:127.0.0.1:1;transport=tcp"]')
        check = by_name(Doctor(path, timeout=2).run())["subscriber store"]
    finally:
        thread.join(5)
        server.close()
    assert check.status == PASS, check
    assert seen == [b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n", b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n",
                    b"*1\r\n$4\r\nPING\r\n"]


def test_an_sqlite_store_counts_its_subscribers(tmp_path):
    import sqlite3

    db = tmp_path / "subs.db"
    path = write(tmp_path, f'[subscribers]\nurl = "sqlite://{db}"\n'
                           f'[listen]\nudp = []\ntcp = ["127.0.0.1:{closed_port()}"]\nws = []\n'
                           '[dispatcher]\ndestinations = ["sip:127.0.0.1:1;transport=tcp"]')
    missing = by_name(Doctor(path, timeout=0.2).run())["subscriber store"]
    assert missing.status == WARN and "does not exist yet" in missing.detail
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE subscriber (username TEXT)")
    con.execute("INSERT INTO subscriber VALUES ('5001')")
    con.commit()
    con.close()
    found = by_name(Doctor(path, timeout=0.2).run())["subscriber store"]
    assert found.status == PASS and "1 subscriber(s)" in found.detail


def user_store(tmp_path, *, domain="192.168.210.54", password="password5001", extra=""):
    import sqlite3

    from sipgw.store import make_subscriber

    db = tmp_path / "subs.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE subscriber (username TEXT, domain TEXT, ha1 TEXT, ha1b TEXT, "
                "ha1_sha256 TEXT, password TEXT)")
    sub = make_subscriber("5001", domain, password)
    con.execute("INSERT INTO subscriber VALUES (?, ?, ?, ?, ?, ?)",
                (sub.username, sub.domain, sub.ha1, sub.ha1b, sub.ha1_sha256, extra))
    con.commit()
    con.close()
    return write(tmp_path, f'[subscribers]\nurl = "sqlite://{db}"\n'
                           '[auth]\nrealm = "192.168.210.54"\n'
                           f'[listen]\nudp = []\ntcp = ["127.0.0.1:{closed_port()}"]\nws = []\n'
                           '[dispatcher]\ndestinations = ["sip:127.0.0.1:1;transport=tcp"]')


def test_user_checks_name_a_missing_user_a_wrong_domain_and_a_wrong_ha1(tmp_path):
    good = by_name(Doctor(user_store(tmp_path), user="5001", password="password5001",
                          timeout=0.2).run())
    assert good["user 5001"].status == PASS and good["user 5001 ha1"].status == PASS
    (tmp_path / "b").mkdir()
    missing = by_name(Doctor(user_store(tmp_path / "b"), user="5002", timeout=0.2).run())
    assert missing["user 5002"].status == FAIL
    assert missing["user 5002"].fix == "sipgw users add 5002"
    (tmp_path / "c").mkdir()
    local = by_name(Doctor(user_store(tmp_path / "c", domain="localhost"), user="5001",
                           password="password5001", timeout=0.2).run())
    assert local["user 5001 domain"].status == FAIL
    assert "stored for domain localhost, but auth.realm is 192.168.210.54" in \
        local["user 5001 domain"].detail
    assert local["user 5001 ha1"].status == FAIL
    (tmp_path / "d").mkdir()
    plain = by_name(Doctor(user_store(tmp_path / "d", extra="secret"), user="5001",
                           password="wrong", timeout=0.2).run())
    assert plain["user 5001 password"].status == WARN
    assert plain["user 5001 ha1"].status == FAIL


def test_plaintext_passwords_anywhere_in_a_sqlite_store_are_a_warning_naming_the_users(
    tmp_path,
):
    import sqlite3

    path = user_store(tmp_path, extra="secret")
    con = sqlite3.connect(tmp_path / "subs.db")
    con.executemany("INSERT INTO subscriber (username, domain, password) VALUES (?, ?, ?)",
                    [(f"6{n:03}", "legacy.example", "pw") for n in range(11)])
    con.commit()
    con.close()
    check = by_name(Doctor(path, timeout=0.2).run())["plaintext passwords"]
    assert check.status == WARN
    assert check.detail.startswith("12 record(s) keep a plaintext password (11 with no hash "
                                   "at all): 5001@192.168.210.54, 6000@legacy.example, ")
    assert check.detail.endswith("6008@legacy.example and 2 more")
    assert "sipgw users passwd" in check.fix
    (tmp_path / "clean").mkdir()
    clean = by_name(Doctor(user_store(tmp_path / "clean"), timeout=0.2).run())
    assert clean["plaintext passwords"].status == PASS


def trust(tmp_path, websocket: str, ws: str = "127.0.0.1"):
    path = write(tmp_path, f'[listen]\nudp = []\ntcp = []\nws = ["{ws}:{closed_port()}"]\n'
                           f'[websocket]\n{websocket}\n'
                           '[dispatcher]\ndestinations = ["sip:127.0.0.1:1;transport=tcp"]')
    return by_name(Doctor(path, timeout=0.2).run())["trusted proxies"]


def test_trusted_proxies_that_cover_everyone_fail_and_a_proxy_left_untrusted_warns(tmp_path):
    everyone = trust(tmp_path, 'trusted_proxies = ["0.0.0.0/0"]', ws="0.0.0.0")
    assert everyone.status == FAIL and "any client can pose as any address" in everyone.detail
    hidden = trust(tmp_path, "")
    assert hidden.status == WARN and "loopback only" in hidden.detail
    assert 'trusted_proxies = ["127.0.0.1/32"]' in hidden.fix
    unchecked = trust(tmp_path, 'trusted_proxies = ["127.0.0.1/32"]')
    assert unchecked.status == WARN and "websocket.public_urls" in unchecked.fix
    direct = trust(tmp_path, "", ws="0.0.0.0")
    assert direct.status == PASS and "each connection's own address" in direct.detail


def test_a_store_file_others_can_read_is_a_warning_naming_the_file_and_the_chmod(tmp_path):
    """Modes read with os.stat, not by failing to open: CI runs as root, who reads all."""
    import os

    path = user_store(tmp_path)
    db = tmp_path / "subs.db"
    os.chmod(db, 0o644)
    check = by_name(Doctor(path, timeout=0.2).run())["subscriber store file mode"]
    assert check.status == WARN
    assert check.detail == (f"{db} is 0644: its group and everyone can read the HA1 hashes "
                            "in it, as good as the passwords for digest authentication")
    assert check.fix == f"chmod 600 {db} (sipgw creates it 0600)"
    os.chmod(db, 0o640)
    check = by_name(Doctor(path, timeout=0.2).run())["subscriber store file mode"]
    assert check.status == WARN and "0640: its group can read" in check.detail
    os.chmod(db, 0o600)
    check = by_name(Doctor(path, timeout=0.2).run())["subscriber store file mode"]
    assert (check.status, check.detail) == (PASS, f"{db} is 0600: only its owner reads it")


def test_a_path_address_no_backend_can_use_is_named_with_what_to_set():
    from sipgw.tools.doctor import _unreachable_address

    # The route's own address on this host, listened on: nothing to say.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        assert _unreachable_address("127.0.0.1", "udp", "127.0.0.1", port, "127.0.0.1", 1) is None
    status, why, fix = _unreachable_address("127.0.0.1", "udp", "127.0.0.1", port, "127.0.0.1", 1)
    assert (status, why) == (FAIL, "nothing listens there over UDP: the port is not one sipgw "
                                   "listens on")
    status, why, fix = _unreachable_address("198.51.100.10", "udp", "0.0.0.0", 5060,
                                            "192.0.2.2", 1)
    assert status == FAIL and "wildcard" in why
    assert fix == 'set listen.advertise = "192.0.2.2" (this host\'s address toward 198.51.100.10)'
    status, why, fix = _unreachable_address("198.51.100.10", "udp", "sip.example.com", 5060,
                                            None, 1)
    assert status == WARN and why.startswith("sip.example.com is a name")
    assert fix == "route 198.51.100.10 (ip route get 198.51.100.10)"
    status, why, _ = _unreachable_address("198.51.100.10", "tcp", "127.0.0.1", 5060, None, 1)
    assert status == FAIL and why.startswith("a loopback address, which 198.51.100.10 cannot")
