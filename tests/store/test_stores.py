"""One contract, every embedded store: the in-memory fake must behave as SQLite does
(the Redis store is held to the same behaviour through ``sipgw users`` and the proxy in
``tests/integration/test_auth_sipp.py``)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sipgw.sip import digest
from sipgw.store import StoreUnavailable, Subscriber, make_subscriber, open_store
from sipgw.store.memory import MemoryStore
from sipgw.store.sqlite import SqliteStore


def result(d: Deferred):
    box = []
    d.addBoth(box.append)
    assert box, "an embedded store answers at once"
    return box[0]


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return SqliteStore(str(tmp_path / "subs.db"))


def test_a_new_subscriber_is_stored_as_hashes_only_and_found_again(store):
    sub = make_subscriber("5001", "sipgw.test", "secret")
    assert result(store.put(sub)) is None
    found = result(store.get("5001", "sipgw.test"))
    assert found == sub
    assert found.ha1 == digest.ha1("5001", "sipgw.test", "secret")
    assert found.ha1b == digest.ha1b("5001", "sipgw.test", "sipgw.test", "secret")
    assert found.ha1_sha256 == digest.ha1("5001", "sipgw.test", "secret", "SHA-256")
    assert found.password == "" and not found.legacy


def test_the_same_user_in_another_domain_is_another_account(store):
    result(store.put(make_subscriber("5001", "a.test", "x")))
    assert result(store.get("5001", "b.test")) is None


def test_put_replaces_and_delete_says_whether_there_was_one(store):
    result(store.put(make_subscriber("5001", "d", "one")))
    result(store.put(make_subscriber("5001", "d", "two")))
    assert result(store.get("5001", "d")).ha1 == digest.ha1("5001", "d", "two")
    assert result(store.delete("5001", "d")) is True
    assert result(store.delete("5001", "d")) is False


def test_all_lists_every_account_sorted_by_domain_then_user(store):
    for user, domain in [("b", "y"), ("a", "y"), ("z", "x")]:
        result(store.put(make_subscriber(user, domain, "pw")))
    assert [(s.domain, s.username) for s in result(store.all())] == [
        ("x", "z"), ("y", "a"), ("y", "b")]


def test_a_domain_is_known_while_it_has_a_subscriber_and_not_after_its_last_is_deleted(store):
    assert result(store.has_domain("example.com")) is False
    result(store.put(make_subscriber("5001", "example.com", "pw")))
    result(store.put(make_subscriber("5002", "example.com", "pw")))
    assert result(store.has_domain("example.com")) is True
    assert result(store.has_domain("example.org")) is False
    result(store.delete("5001", "example.com"))
    assert result(store.has_domain("example.com")) is True
    result(store.delete("5002", "example.com"))
    assert result(store.has_domain("example.com")) is False


def test_the_domain_lookup_of_sqlite_uses_an_index_not_a_table_scan(tmp_path):
    store = SqliteStore(str(tmp_path / "subs.db"))
    result(store.has_domain("example.com"))
    with sqlite3.connect(tmp_path / "subs.db") as db:
        plan = db.execute("EXPLAIN QUERY PLAN SELECT 1 FROM subscriber WHERE domain = ? "
                          "LIMIT 1", ("example.com",)).fetchall()
    assert "USING COVERING INDEX subscriber_domain" in " ".join(str(row[-1]) for row in plan)


@pytest.fixture
def umask_022():
    """The usual umask, under which SQLite alone makes a world-readable file."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(*paths) -> list[str]:
    return [oct(stat.S_IMODE(os.stat(p).st_mode)) for p in paths]


def test_a_new_database_and_its_directory_are_private_to_their_owner(tmp_path, umask_022):
    path = tmp_path / "state" / "subs.db"
    store = SqliteStore(str(path), create_directory=True)
    result(store.put(make_subscriber("5001", "d", "pw")))
    wal, shm = f"{path}-wal", f"{path}-shm"
    assert modes(tmp_path / "state", path, wal, shm) == ["0o700", "0o600", "0o600", "0o600"]


def test_a_database_made_by_root_belongs_to_the_owner_of_its_directory(tmp_path, umask_022):
    """``sudo sipgw users add`` in the service's /var/lib/sipgw (owned by sipgw): the
    service must still open the file (as non-root, the directory is the test's own)."""
    directory = tmp_path / "state"
    directory.mkdir()
    if os.geteuid() == 0:
        os.chown(directory, 4242, 4343)
    path = directory / "subs.db"
    result(SqliteStore(str(path)).put(make_subscriber("5001", "d", "pw")))
    owner = os.stat(directory)
    for made in (path, f"{path}-wal", f"{path}-shm"):
        st = os.stat(made)
        assert (st.st_uid, st.st_gid) == (owner.st_uid, owner.st_gid), made


def test_an_existing_database_and_directory_keep_their_modes(tmp_path, umask_022):
    directory = tmp_path / "state"
    directory.mkdir(mode=0o750)
    path = directory / "subs.db"
    result(SqliteStore(str(path)).all())
    os.chmod(path, 0o640)  # an operator's choice: a group of readers
    store = SqliteStore(str(path), create_directory=True)
    result(store.put(make_subscriber("5001", "d", "pw")))
    assert modes(directory, path) == ["0o750", "0o640"]


def test_an_empty_password_is_refused():
    with pytest.raises(ValueError):
        make_subscriber("5001", "d", "")


def test_a_legacy_plaintext_record_is_read_and_flagged(tmp_path):
    path = tmp_path / "subs.db"
    store = SqliteStore(str(path))
    result(store.all())  # creates the schema
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO subscriber (username, domain, password) VALUES ('old', 'd', 'pw')")
    found = result(store.get("old", "d"))
    assert found.legacy and found.password == "pw"


def test_a_database_in_a_missing_directory_is_unavailable_not_a_crash(tmp_path):
    store = SqliteStore(str(tmp_path / "missing" / "subs.db"))
    failure = result(store.get("5001", "d"))
    assert failure.check(StoreUnavailable)


def test_the_cli_and_the_proxy_can_use_one_database_at_once(tmp_path):
    """WAL mode: the proxy's reads see the CLI's committed writes, without locking."""
    url = f"sqlite://{tmp_path}/subs.db"
    proxy_side, cli_side = open_store(url), open_store(url)
    result(proxy_side.all())
    errors = []

    def writer():
        try:
            for i in range(200):
                result(cli_side.put(make_subscriber(f"u{i}", "d", "pw")))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        found = result(proxy_side.get("u0", "d"))
        assert found is None or isinstance(found, Subscriber)
    thread.join(10)
    assert errors == []
    assert len(result(proxy_side.all())) == 200
    with sqlite3.connect(tmp_path / "subs.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_cli_waits_for_a_lock_the_proxy_holds_where_the_proxy_would_not(tmp_path):
    """``sipgw users add`` while another writer holds the database: the CLI's store waits
    (it seemed "database is locked" to operators before), the proxy's gives up at once."""
    url = f"sqlite://{tmp_path}/subs.db"
    result(open_store(url).all())  # create it (WAL, table)
    holder = sqlite3.connect(tmp_path / "subs.db", isolation_level=None,
                             check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # a write lock, as a concurrent writer holds it
    release = threading.Timer(0.3, holder.execute, args=("COMMIT",))
    release.start()
    try:
        refused = result(open_store(url).put(make_subscriber("p", "d", "pw")))
        assert isinstance(refused, Failure) and refused.check(StoreUnavailable)
        assert result(open_store(url, sqlite_busy_timeout=5.0).put(
            make_subscriber("c", "d", "pw"))) is None
    finally:
        release.join(5)
        holder.close()
    assert result(open_store(url).get("c", "d")) is not None



def _provision(directory, user, rounds, start, failures):
    for n in range(rounds):
        start.wait(10)  # all four open race{n}.db at the same moment
        outcome = result(open_store(f"sqlite://{directory}/race{n}.db",
                                    sqlite_busy_timeout=5.0).put(make_subscriber(user, "d", "pw")))
        if outcome is not None:
            failures.put(f"{user} round {n}: {outcome.value}")


def test_several_cli_runs_at_once_on_a_new_database_all_succeed(tmp_path):
    """Provisioning in parallel (``sipgw users add 5071 & sipgw users add 5072``) on a
    database none of them has made yet: SQLite answered the switch to WAL with "database
    is locked" to one of them in about 3 % of such races (a CI run failed on it)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    rounds, start, failures = 60, context.Barrier(4), context.Queue()
    runs = [context.Process(target=_provision, args=(tmp_path, f"u{k}", rounds, start, failures))
            for k in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
    assert [run.exitcode for run in runs] == [0, 0, 0, 0]
    assert failures.empty(), failures.get()
    for n in range(rounds):
        assert len(result(open_store(f"sqlite://{tmp_path}/race{n}.db").all())) == 4


def test_a_redis_answer_waiting_unread_at_the_deadline_is_still_taken():
    """Twisted runs due timers before it reads sockets: an answer that came while the
    reactor was busy past the command timeout must win over the timeout (the bench saw
    every lookup in flight fail after a stall, with Redis answering in microseconds)."""
    from twisted.internet.task import Clock

    from sipgw.store.redis import with_deadline

    clock = Clock()
    late, lost = Deferred(), Deferred()
    with_deadline(late, 1.0, clock)
    with_deadline(lost, 1.0, clock)
    clock.advance(1.0)  # the reactor was busy past the deadline; due timers run first...
    late.callback({"ha1": "x"})  # ...then its poll reads the answer waiting
    clock.advance(0.1)
    assert result(late) == {"ha1": "x"}
    failure = result(lost)  # no answer by then: given up, one turn later
    assert isinstance(failure, Failure) and failure.check(defer.CancelledError)
