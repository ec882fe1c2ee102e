"""``sipgw users``: the SIP accounts, straight in the subscriber store (DESIGN.md §6).

It reads the same config file as ``sipgw serve`` (``[subscribers]``, ``[auth] realm``) and
works whether the proxy runs or not: SQLite is safe to write while the proxy reads (WAL),
Redis is shared anyway. Only digest hashes are stored (``ha1``, ``ha1b``, ``ha1_sha256``),
computed over the realm the proxy will challenge with: ``auth.realm``, else the domain.
Passwords come from a hidden prompt (typed twice) or ``--password-stdin``, never from the
command line where ``ps`` would show them; an empty one is refused.

Names are checked before anything is stored (``account``): ``5001@example.com`` is user
5001 in domain example.com (``--domain`` may repeat the domain, not contradict it); the
user must be an RFC 3261 user part of at most ``MAX_USER`` characters, its %HH escapes
decoded (the account is the name phones authenticate with), and the domain a host name,
an IPv4 address or an [IPv6] address of at most ``MAX_DOMAIN``. ``del`` and ``show`` still
find an account stored under an unchecked name by an earlier release.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from operator import methodcaller
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from sipgw.cli.app import EXIT_USAGE, App, pass_app
from sipgw.cli.options import config_option
from sipgw.config import Config, ConfigError, config_path_from_env, load_config
from sipgw.config.redis_url import mask_url
from sipgw.sip.uri import check_host, check_user, unescape
from sipgw.store import StoreError, Subscriber, make_subscriber, open_store

CSV_FIELDS = ("username", "domain", "ha1", "ha1b", "ha1_sha256")
MAX_USER = 64  # characters as typed; phone numbers and e-mail-like names fit
MAX_DOMAIN = 253  # RFC 1035: the longest DNS name
USER_CHARS = "letters, digits, - _ . ! ~ * ' ( ) & = + $ , ; ? / and %HH escapes"


def account(name: str, domain: str | None, default_domain: str, *,
            given_as: str = "--domain") -> tuple[str, str]:
    """(user, domain) of ``name`` (USER or USER@DOMAIN) and ``domain`` (``--domain``, or
    what ``given_as`` names), checked; ValueError says what is wrong, in one line."""
    user, at, named = name.partition("@")
    if at:
        if not named:
            raise ValueError(f"{name!r}: nothing after @ (give USER@DOMAIN or USER)")
        if domain and domain.lower() != named.lower():
            raise ValueError(f"{name!r} is in domain {named}, but {given_as} says {domain}: "
                             f"give the domain once (sipgw users ... {user} --domain DOMAIN)")
    if not user:
        raise ValueError("an empty user name")
    if len(user) > MAX_USER:
        raise ValueError(f"a user name of {len(user)} characters (at most {MAX_USER})")
    if not check_user(user):
        raise ValueError(f"{user!r} is not a SIP user name (RFC 3261: {USER_CHARS})")
    plain = unescape(user)
    if "@" in plain or not all(" " <= c <= "~" for c in plain):
        raise ValueError(f"{user!r}: its escapes must stand for printable ASCII, not @")
    domain = (named or domain or default_domain).lower()
    if not domain:
        raise ValueError("no domain: give --domain DOMAIN (auth.realm is not set)")
    if len(domain) > MAX_DOMAIN:
        raise ValueError(f"a domain of {len(domain)} characters (at most {MAX_DOMAIN})")
    if not check_host(domain):
        raise ValueError(f"{domain!r} is not a SIP domain (a host name, an IPv4 address or "
                         "an [IPv6] address)")
    # The proxy compares the From host without its brackets.
    return plain, domain.strip("[]")


domain_option = click.option(
    "--domain", "-d", metavar="DOMAIN", default=None,
    help="The user's domain (default: the one of USER@DOMAIN, else auth.realm).",
)
password_stdin_option = click.option(
    "--password-stdin", is_flag=True,
    help="Read the password from the first line of stdin instead of prompting.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class _Session:
    """The loaded config and its store, for one command."""

    def __init__(self, app: App, config_path: str | None) -> None:
        self.app = app
        try:
            self.config: Config = load_config(config_path_from_env(config_path)).config
        except ConfigError as e:
            app.fail(str(e), EXIT_USAGE)
        s = self.config.subscribers
        self.url = s.url
        try:
            self.store = open_store(s.url, key_template=s.key_template,
                                    connect_timeout=s.connect_timeout,
                                    command_timeout=max(s.command_timeout, 5.0),
                                    create_directory=True, tls_ca_file=s.tls_ca_file,
                                    sentinel_password=s.sentinel_password,
                                    # the running proxy may hold the lock for a moment
                                    sqlite_busy_timeout=5.0)
        except ValueError as e:
            app.fail(f"subscribers.url: {e}", EXIT_USAGE)
        except ConfigError as e:  # a setting the store needs: subscribers.tls_ca_file
            app.fail(str(e), EXIT_USAGE)

        click.get_current_context().call_on_close(self.close)

    def close(self) -> None:
        """Disconnect; a reactor started for a network store is shut down, so that its
        thread pool does not keep the process alive."""
        from twisted.internet import reactor

        if not reactor.running:
            return
        self.store.close()
        reactor.stop()
        for _ in range(100):  # bounded: the shutdown triggers need a few iterations
            if not reactor.running:
                break
            reactor.iterate(0.01)

    def account(self, name: str, domain: str | None) -> tuple[str, str]:
        """(user, domain) to store, or exit 2 saying what is wrong with them."""
        try:
            return account(name, domain, self.config.auth.realm)
        except ValueError as e:
            self.app.fail(str(e), EXIT_USAGE)

    def existing(self, name: str, domain: str | None) -> tuple[str, str]:
        """(user, domain) of an account to show or delete: a checked name, or one stored
        unchecked by an earlier release (``5001@example.com`` in domain example.com)."""
        try:
            checked, error = account(name, domain, self.config.auth.realm), None
        except ValueError as e:
            checked, error = None, e
        if checked is not None and self.run(lambda store: store.get(*checked)) is not None:
            return checked
        raw = (name, (domain or self.config.auth.realm).lower())
        if "@" in name and raw[1] and self.run(lambda store: store.get(*raw)) is not None:
            return raw
        if checked is None:
            self.app.fail(str(error), EXIT_USAGE)
        return checked

    def realm(self, domain: str) -> str:
        return self.config.auth.realm or domain

    def run(self, work: Callable[[Any], Any]) -> Any:
        """``work(store)`` returns a Deferred; its result, or exit 1 naming the store."""
        try:
            return _wait(lambda: _when_ready(self.store).addCallback(lambda _: work(self.store)))
        except StoreError as e:
            self.app.fail(f"subscriber store: {e}")


def _when_ready(store):
    from twisted.internet import defer

    ready = getattr(store, "when_connected", None)
    return ready(store.command_timeout) if ready else defer.succeed(None)


def _wait(start: Callable[[], Any]) -> Any:
    """The result of the Deferred ``start()`` returns. An embedded store has answered
    already; a network store needs the reactor, run once for this process."""
    from twisted.python.failure import Failure

    box: list[Any] = []
    d = start()
    d.addBoth(box.append)
    if not box:
        from twisted.internet import reactor

        # Iterated rather than run: one command may need the store more than once (add:
        # look up, prompt, write), and a stopped reactor cannot be started again.
        if not reactor.running:
            # A method of every Twisted reactor that no interface declares.
            reactor.startRunning(installSignalHandlers=False)  # type: ignore[attr-defined]
        while not box:
            # iterate(t) polls for t whatever is due sooner; txredisapi reads every bulk
            # string of a reply through a callLater(0), which would cost t each.
            due = reactor.timeout()  # type: ignore[attr-defined]
            reactor.iterate(0.05 if due is None else min(due, 0.05))
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _read_password(app: App, from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True,
                                default="", show_default=False, err=True)
    if not password:
        app.fail("refusing an empty password", EXIT_USAGE)
    return password


def _hashes(sub: Subscriber) -> list[str]:
    return [name for name, value in (("md5", sub.ha1), ("md5-user@domain", sub.ha1b),
                                     ("sha-256", sub.ha1_sha256)) if value]


def _warn_legacy(app: App, subs: list[Subscriber]) -> None:
    for sub in subs:
        if sub.legacy:
            app.err.print(f"warning: {sub.username}@{sub.domain} has a plaintext password "
                          f"(legacy record); run: sipgw users passwd {sub.username} "
                          f"--domain {sub.domain}")


def _as_json(sub: Subscriber) -> dict:
    return {"username": sub.username, "domain": sub.domain, "hashes": _hashes(sub),
            "legacy": sub.legacy}


# --- the commands -------------------------------------------------------------------------


@click.group()
def users() -> None:
    """Manage SIP accounts in the subscriber store (works with the proxy stopped)."""


def _set_password(app: App, config_path, domain, password_stdin, username, *,
                  new: bool) -> None:
    """add (``new``: the account must not exist) and passwd (it must)."""
    session = _Session(app, config_path)
    username, domain = session.account(username, domain)
    exists = session.run(lambda store: store.get(username, domain)) is not None
    if new and exists:
        app.fail(f"{username}@{domain} already exists (change its password with passwd)")
    if not new and not exists:
        app.fail(f"no such user: {username}@{domain}")
    password = _read_password(app, password_stdin)
    sub = make_subscriber(username, domain, password, session.realm(domain))
    session.run(lambda store: store.put(sub))
    app.err.print(f"added {username}@{domain}" if new
                  else f"password of {username}@{domain} changed")


@users.command("add")
@config_option
@domain_option
@password_stdin_option
@click.argument("username")
@pass_app
def add(app: App, config_path, domain, password_stdin, username) -> None:
    """Create USER (or USER@DOMAIN); the password is prompted twice (or read from stdin)."""
    _set_password(app, config_path, domain, password_stdin, username, new=True)


@users.command("passwd")
@config_option
@domain_option
@password_stdin_option
@click.argument("username")
@pass_app
def passwd(app: App, config_path, domain, password_stdin, username) -> None:
    """Set a new password for USER (a legacy plaintext record becomes hashes)."""
    _set_password(app, config_path, domain, password_stdin, username, new=False)


@users.command("del")
@config_option
@domain_option
@click.argument("username")
@pass_app
def delete(app: App, config_path, domain, username) -> None:
    """Delete USER (or USER@DOMAIN)."""
    session = _Session(app, config_path)
    username, domain = session.existing(username, domain)
    if not session.run(lambda store: store.delete(username, domain)):
        app.fail(f"no such user: {username}@{domain}")
    app.err.print(f"deleted {username}@{domain}")


@users.command("show")
@config_option
@domain_option
@json_option
@click.argument("username")
@pass_app
def show(app: App, config_path, domain, as_json, username) -> None:
    """Show USER: domain and which hashes the record has (never the hashes)."""
    session = _Session(app, config_path)
    username, domain = session.existing(username, domain)
    sub = session.run(lambda store: store.get(username, domain))
    if sub is None:
        app.fail(f"no such user: {username}@{domain}")
    _warn_legacy(app, [sub])
    if as_json:
        app.out.print_json(json.dumps(_as_json(sub)))
        return
    table = Table.grid(padding=(0, 2))
    for name, value in (("username", sub.username), ("domain", sub.domain),
                        ("hashes", ", ".join(_hashes(sub)) or "-"),
                        ("legacy password", "yes" if sub.legacy else "no")):
        table.add_row(Text(name, style="bold"), Text(value))
    app.out.print(table)


@users.command("list")
@config_option
@json_option
@pass_app
def list_(app: App, config_path, as_json) -> None:
    """Every account, sorted by domain and user."""
    session = _Session(app, config_path)
    subs = session.run(lambda store: store.all())
    _warn_legacy(app, subs)
    if as_json:
        app.out.print_json(json.dumps([_as_json(s) for s in subs]))
        return
    table = Table("username", "domain", "hashes", "legacy")
    for sub in subs:
        table.add_row(Text(sub.username), Text(sub.domain), Text(", ".join(_hashes(sub))),
                      Text("yes" if sub.legacy else ""))
    app.out.print(table)
    app.err.print(f"{len(subs)} user{'s' if len(subs) != 1 else ''} "
                  f"in {mask_url(session.url)}")


@users.command("export")
@config_option
@pass_app
def export(app: App, config_path) -> None:
    """Every account as CSV on stdout (username,domain,ha1,ha1b,ha1_sha256).

    Legacy plaintext passwords are exported as their hashes, never as text."""
    session = _Session(app, config_path)
    subs = session.run(lambda store: store.all())
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for sub in subs:
        if sub.legacy:
            sub = make_subscriber(sub.username, sub.domain, sub.password,
                                  session.realm(sub.domain))
        writer.writerow({name: getattr(sub, name) for name in CSV_FIELDS})
    click.echo(out.getvalue(), nl=False)


@users.command("import")
@config_option
@click.argument("csv_file", metavar="FILE.csv", type=click.File("r", encoding="utf-8"))
@pass_app
def import_(app: App, config_path, csv_file) -> None:
    """Create or replace the accounts of FILE.csv, all or none.

    The first line names the columns: username, domain (default: auth.realm), and either
    password or ha1 (with ha1b and ha1_sha256 if known), as export writes them."""
    session = _Session(app, config_path)
    subs, problems = _parse_csv(csv_file, session)
    if problems:
        for problem in problems:
            app.err.print(problem)
        app.fail(f"{csv_file.name}: nothing imported ({len(problems)} bad line(s))")
    store = session.store
    if hasattr(store, "put_many"):
        session.run(lambda s: s.put_many(subs))
    else:
        for sub in subs:
            session.run(methodcaller("put", sub))
    app.err.print(f"imported {len(subs)} user{'s' if len(subs) != 1 else ''}")


def _parse_csv(stream, session: _Session) -> tuple[list[Subscriber], list[str]]:
    reader = csv.DictReader(stream)
    columns = set(reader.fieldnames or ())
    name = getattr(stream, "name", "FILE.csv")
    if "username" not in columns or not ({"password", "ha1"} & columns):
        return [], [f"{name}:1: the first line must name username and password (or ha1)"]
    subs, problems = [], []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        try:
            username, domain = account((row.get("username") or "").strip(),
                                       (row.get("domain") or "").strip(),
                                       session.config.auth.realm, given_as="its domain column")
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        password = row.get("password") or ""
        if password:
            subs.append(make_subscriber(username, domain, password, session.realm(domain)))
        elif row.get("ha1"):
            subs.append(Subscriber(username=username, domain=domain,
                                   ha1=row["ha1"].strip().lower(),
                                   ha1b=(row.get("ha1b") or "").strip().lower(),
                                   ha1_sha256=(row.get("ha1_sha256") or "").strip().lower()))
        else:
            problems.append(f"{where}: {username}: empty password refused")
    return subs, problems
