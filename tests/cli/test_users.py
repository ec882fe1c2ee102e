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
