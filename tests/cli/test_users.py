"""``sipgw users`` through CliRunner on the real command, on the SQLite store."""

from __future__ import annotations

import json
import sqlite3

import pytest

from sipgw.sip import digest


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "sipgw.toml"
    path.write_text(f'[subscribers]\nurl = "sqlite://{tmp_path}/state/subs.db"\n'
                    '[auth]\nrealm = "sipgw.test"\n')
    return str(path)


def rows(tmp_path):
    with sqlite3.connect(tmp_path / "state" / "subs.db") as db:
        return db.execute("SELECT username, domain, ha1, ha1_sha256, password FROM subscriber"
                          " ORDER BY username").fetchall()


def test_add_stores_the_hashes_of_the_password_read_from_stdin_and_never_the_password(
    run, config, tmp_path
):
    code, out, err = run("users", "add", "5001", "--password-stdin", "-c", config,
                         input="s3cret\n")
    assert (code, out) == (0, "")
    assert "added 5001@sipgw.test" in err
    [(user, domain, ha1, sha, password)] = rows(tmp_path)
    assert (user, domain, password) == ("5001", "sipgw.test", "")
    assert ha1 == digest.ha1("5001", "sipgw.test", "s3cret")
    assert sha == digest.ha1("5001", "sipgw.test", "s3cret", "SHA-256")


def test_the_prompt_asks_twice_and_a_mismatch_asks_again(run, config, tmp_path):
    code, _, _ = run("users", "add", "5001", "-c", config, input="a\nb\npw\npw\n")
    assert code == 0
    assert rows(tmp_path)[0][2] == digest.ha1("5001", "sipgw.test", "pw")


def test_an_empty_password_is_refused_with_a_usage_error(run, config, tmp_path):
    code, _, err = run("users", "add", "5001", "--password-stdin", "-c", config, input="\n")
    assert code == 2 and "empty password" in err


def test_adding_an_existing_user_fails_and_passwd_changes_the_hashes(run, config, tmp_path):
    run("users", "add", "5001", "--password-stdin", "-c", config, input="one\n")
    code, _, err = run("users", "add", "5001", "--password-stdin", "-c", config, input="x\n")
    assert code == 1 and "already exists" in err
    code, _, _ = run("users", "passwd", "5001", "--password-stdin", "-c", config, input="two\n")
    assert code == 0
    assert rows(tmp_path)[0][2] == digest.ha1("5001", "sipgw.test", "two")


def test_del_show_and_list_of_a_missing_user(run, config):
    assert run("users", "del", "9", "-c", config)[0] == 1
    assert run("users", "show", "9", "-c", config)[0] == 1
    code, out, _ = run("users", "list", "--json", "-c", config)
    assert (code, json.loads(out)) == (0, [])


def test_list_json_names_the_hashes_and_flags_a_legacy_plaintext_record(run, config, tmp_path):
    run("users", "add", "5001", "--password-stdin", "-c", config, input="pw\n")
    with sqlite3.connect(tmp_path / "state" / "subs.db") as db:
        db.execute("INSERT INTO subscriber (username, domain, password) "
                   "VALUES ('4000', 'sipgw.test', 'plain')")
    code, out, err = run("users", "list", "--json", "-c", config)
    assert code == 0
    assert json.loads(out) == [
        {"username": "4000", "domain": "sipgw.test", "hashes": [], "legacy": True},
        {"username": "5001", "domain": "sipgw.test",
         "hashes": ["md5", "md5-user@domain", "sha-256"], "legacy": False},
    ]
    assert "warning: 4000@sipgw.test has a plaintext password" in err
    code, out, _ = run("users", "list", "-c", config)
    assert "5001" in out and "sha-256" in out


def test_import_is_all_or_nothing_and_export_gives_hashes_that_import_back(
    run, config, tmp_path
):
    bad = tmp_path / "bad.csv"
    bad.write_text("username,password\n6001,pw\n6002,\n")
    code, _, err = run("users", "import", str(bad), "-c", config)
    assert code == 1 and "6002: empty password refused" in err
    assert run("users", "list", "--json", "-c", config)[1].strip() == "[]"
    good = tmp_path / "good.csv"
    good.write_text("username,domain,password\n6001,,pw\n6002,other.test,pw2\n")
    assert run("users", "import", str(good), "-c", config)[0] == 0
    code, exported, _ = run("users", "export", "-c", config)
    assert exported.splitlines()[0] == "username,domain,ha1,ha1b,ha1_sha256"
    assert "pw" not in exported.replace("username", "")
    again = tmp_path / "again.csv"
    again.write_text(exported)
    run("users", "del", "6001", "-c", config)
    assert run("users", "import", str(again), "-c", config)[0] == 0
    assert [r[0] for r in rows(tmp_path)] == ["6001", "6002"]


def test_without_a_domain_or_realm_the_command_is_a_usage_error(run, tmp_path):
    path = tmp_path / "plain.toml"
    path.write_text(f'[subscribers]\nurl = "sqlite://{tmp_path}/subs.db"\n')
    code, _, err = run("users", "add", "5001", "--password-stdin", "-c", str(path),
                       input="pw\n")
    assert code == 2 and "--domain" in err


# --- names are checked before anything is stored ----------------------------------------


def test_user_at_domain_is_split_into_the_user_and_its_domain(run, config, tmp_path):
    code, _, err = run("users", "add", "5001@Example.COM", "--password-stdin", "-c", config,
                       input="pw\n")
    assert code == 0 and "added 5001@example.com" in err
    assert [(u, d) for u, d, *_ in rows(tmp_path)] == [("5001", "example.com")]
    assert rows(tmp_path)[0][2] == digest.ha1("5001", "sipgw.test", "pw")  # auth.realm
    # --domain may repeat the same domain; show, passwd and del take either form.
    assert run("users", "show", "5001", "--domain", "example.com", "-c", config)[0] == 0
    assert run("users", "passwd", "5001@example.com", "--domain", "EXAMPLE.com",
               "--password-stdin", "-c", config, input="pw2\n")[0] == 0
    assert run("users", "del", "5001@example.com", "-c", config)[0] == 0
    assert rows(tmp_path) == []


def test_user_at_domain_contradicted_by_domain_is_refused_with_a_hint(run, config, tmp_path):
    code, out, err = run("users", "add", "5001@example.com", "--domain", "other.com",
                         "--password-stdin", "-c", config, input="pw\n")
    assert (code, out) == (2, "")
    assert err == ("sipgw: '5001@example.com' is in domain example.com, but --domain says "
                   "other.com: give the domain once (sipgw users ... 5001 --domain DOMAIN)\n")
    assert not (tmp_path / "state" / "subs.db").exists() or rows(tmp_path) == []


@pytest.mark.parametrize(("name", "extra", "message"), [
    ("", (), "sipgw: an empty user name"),
    ("@example.com", (), "sipgw: an empty user name"),
    ("5001@", (), "sipgw: '5001@': nothing after @ (give USER@DOMAIN or USER)"),
    ("alice smith", (), "sipgw: 'alice smith' is not a SIP user name (RFC 3261: letters, "
                        "digits, - _ . ! ~ * ' ( ) & = + $ , ; ? / and %HH escapes)"),
    ("a<b>", (), "sipgw: 'a<b>' is not a SIP user name"),
    ("50%2", (), "sipgw: '50%2' is not a SIP user name"),
    ("a%40b", (), "sipgw: 'a%40b': its escapes must stand for printable ASCII, not @"),
    ("a%0Ab", (), "sipgw: 'a%0Ab': its escapes must stand for printable ASCII, not @"),
    ("x" * 65, (), "sipgw: a user name of 65 characters (at most 64)"),
    ("5001", ("--domain", "bad domain"),
     "sipgw: 'bad domain' is not a SIP domain (a host name, an IPv4 address or an [IPv6] "
     "address)"),
    ("5001", ("--domain", "example.com;x"), "sipgw: 'example.com;x' is not a SIP domain"),
    ("5001", ("--domain", "10.0.0.300"), "sipgw: '10.0.0.300' is not a SIP domain"),
    ("5001", ("--domain", "[::g]"), "sipgw: '[::g]' is not a SIP domain"),
    ("5001", ("--domain", ("a" * 62 + ".") * 4 + "com"),
     "sipgw: a domain of 255 characters (at most 253)"),
])
def test_a_bad_name_is_refused_with_exit_2_and_one_line_and_nothing_stored(
    run, config, tmp_path, name, extra, message
):
    code, out, err = run("users", "add", name, *extra, "--password-stdin", "-c", config,
                         input="pw\n")
    assert (code, out) == (2, "")
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "state" / "subs.db").exists() or rows(tmp_path) == []


@pytest.mark.parametrize(("name", "domain", "stored"), [
    ("+49301234567", "example.com", ("+49301234567", "example.com")),
    ("alice.o'neil", "example.com", ("alice.o'neil", "example.com")),
    ("5001;x=1", "example.com", ("5001;x=1", "example.com")),
    ("a%20b", "example.com", ("a b", "example.com")),
    ("x" * 64, "example.com", ("x" * 64, "example.com")),
    ("5001", "192.0.2.7", ("5001", "192.0.2.7")),
    ("5001", "[2001:DB8::1]", ("5001", "2001:db8::1")),
    ("5001", "sip-gw_1.example.com.", ("5001", "sip-gw_1.example.com.")),
    ("5001", ("a" * 61 + ".") * 4 + "abcde", ("5001", ("a" * 61 + ".") * 4 + "abcde")),
])
def test_rfc_3261_user_and_host_forms_are_accepted(run, config, tmp_path, name, domain, stored):
    code, _, err = run("users", "add", name, "--domain", domain, "--password-stdin", "-c",
                       config, input="pw\n")
    assert code == 0, err
    assert [(u, d) for u, d, *_ in rows(tmp_path)] == [stored]


def test_an_account_stored_unchecked_by_an_earlier_release_can_still_be_shown_and_deleted(
    run, config, tmp_path
):
    run("users", "add", "5001", "--password-stdin", "-c", config, input="pw\n")
    with sqlite3.connect(tmp_path / "state" / "subs.db") as db:
        db.execute("INSERT INTO subscriber (username, domain, ha1) "
                   "VALUES ('5001@example.com', 'sipgw.test', 'x')")
    code, out, _ = run("users", "show", "5001@example.com", "-c", config, "--json")
    assert (code, json.loads(out)["username"]) == (0, "5001@example.com")
    assert run("users", "del", "5001@example.com", "-c", config)[0] == 0
    assert [(u, d) for u, d, *_ in rows(tmp_path)] == [("5001", "sipgw.test")]


def test_import_refuses_a_bad_name_by_its_line_and_splits_user_at_domain(run, config, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("username,domain,password\n6001,,pw\nbad name,,pw\n6003@x.test,y.test,pw\n")
    code, _, err = run("users", "import", str(bad), "-c", config)
    assert code == 1
    assert f"{bad}:3: 'bad name' is not a SIP user name" in err
    assert f"{bad}:4: '6003@x.test' is in domain x.test, but its domain column says y.test" \
        in err
    good = tmp_path / "good.csv"
    good.write_text("username,password\n6001@x.test,pw\n")
    assert run("users", "import", str(good), "-c", config)[0] == 0
    assert [(u, d) for u, d, *_ in rows(tmp_path)] == [("6001", "x.test")]


def test_an_unreadable_tls_ca_file_is_a_usage_error_naming_the_key(run, tmp_path):
    path = tmp_path / "tls.toml"
    missing = tmp_path / "nowhere" / "ca.pem"
    path.write_text('[subscribers]\nurl = "rediss://127.0.0.1:1/2"\n'
                    f'tls_ca_file = "{missing}"\n[auth]\nrealm = "sipgw.test"\n')
    code, _, err = run("users", "list", "-c", str(path))
    assert code == 2
    assert f"subscribers.tls_ca_file: cannot read {missing}: No such file or directory" in err
    (tmp_path / "not.pem").write_text("not a certificate\n")
    path.write_text(path.read_text().replace(str(missing), str(tmp_path / "not.pem")))
    code, _, err = run("users", "list", "-c", str(path))
    assert code == 2 and "no PEM certificate in it" in err
