"""Reaching the running proxy: the socket path from the config, one client, clean failures.

Every command that talks to ``sipgw serve`` goes through here, so they all find the socket
the way the server chose it (``sipgw.rpc.client.find_socket``) and all fail the same way:
exit 3 with a one-line hint when nothing answers, exit 1 when a method refuses the call.
"""

from __future__ import annotations

import tomllib
from typing import Any, NoReturn

from sipgw.cli.app import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, App
from sipgw.config import SCHEMA, ConfigError, config_path_from_env, load_config
from sipgw.rpc.client import Client, ProtocolError, RemoteError, Unreachable, find_socket


def socket_path(app: App, config_path: str | None) -> str:
    path = config_path_from_env(config_path)
    try:
        loaded = load_config(path)
    except ConfigError as e:
        # A file being edited may be wrong elsewhere; the socket is still where it says,
        # and "sipgw ctl cfg.reload" must be able to tell the operator what is wrong.
        raw = _raw_socket_keys(path)
        if raw is None:
            app.fail(str(e), EXIT_USAGE)
        return find_socket(*raw)
    control = loaded.config.control
    return find_socket(control.socket, loaded.config.state.directory)


def _raw_socket_keys(path: str | None) -> tuple[str, str] | None:
    """control.socket and state.directory straight from the TOML, when both are sane."""
    defaults = {key.dotted: key.default for key in SCHEMA}
    try:
        with open(path or "", "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    socket_ = raw.get("control", {}).get("socket", defaults["control.socket"])
    state = raw.get("state", {}).get("directory", defaults["state.directory"])
    if not (isinstance(socket_, str) and socket_ and isinstance(state, str)):
        return None
    return socket_, state


def connect(app: App, config_path: str | None, *, timeout: float | None = 10.0,
            worker: int | None = None) -> Client:
    """A client of the service's control socket, or of worker ``worker``'s own."""
    path = socket_path(app, config_path)
    if worker is None:
        try:
            return Client(path, timeout=timeout)
        except Unreachable as e:
            unreachable(app, e)
    from sipgw.proxy.workers.spec import worker_control_path

    try:
        return Client(worker_control_path(path, worker), timeout=timeout)
    except Unreachable as e:
        _no_such_worker(app, path, worker, timeout)
        unreachable(app, e)


def _no_such_worker(app: App, path: str, worker: int, timeout: float | None) -> None:
    """Worker ``worker``'s socket is not there: say so as a bad ``-w`` (exit 2) when the
    service answers and has no such worker; return if it has (restarting) or is down."""
    try:
        with Client(path, timeout=timeout) as client:
            methods = client.call("system.listMethods")
            count = len(client.call("core.workers")) if "core.workers" in methods else 0
    except (Unreachable, RemoteError, ProtocolError, TimeoutError):
        return
    if not count:
        app.fail(f"-w {worker}: this sipgw runs as a single process, without workers",
                 EXIT_USAGE)
    if worker >= count:
        app.fail(f"-w {worker}: this sipgw has {count} workers, 0 to {count - 1}", EXIT_USAGE)


def unreachable(app: App, e: Unreachable) -> NoReturn:
    app.fail(f"cannot reach sipgw at {e.path}: {e.why} ({e.hint})", EXIT_UNREACHABLE)


def call(app: App, client: Client, method: str, params: list[Any] | dict | None = None) -> Any:
    """One call; the errors a user can meet become one line and the right exit code."""
    try:
        return client.call(method, params)
    except Unreachable as e:
        unreachable(app, e)
    except RemoteError as e:
        app.fail(f"{method}: {e.message}", EXIT_FAILED)
    except TimeoutError:
        app.fail(f"{method}: no answer from sipgw within {client.timeout:g}s", EXIT_FAILED)
    except ProtocolError as e:
        app.fail(f"{method}: bad answer from sipgw: {e}", EXIT_FAILED)


def call_once(app: App, config_path: str | None, method: str, params=None) -> Any:
    client = connect(app, config_path)
    try:
        return call(app, client, method, params)
    finally:
        client.close()
