"""``sipgw serve``: run the proxy in the foreground (systemd's Type=simple)."""

from __future__ import annotations

import os

import click

from sipgw.cli.app import EXIT_FAILED, EXIT_OK, EXIT_USAGE, App, pass_app
from sipgw.cli.options import config_option
from sipgw.config import ConfigError, config_path_from_env, load_config, parse_config
from sipgw.config.kinds import MAX_WORKERS
from sipgw.proxy.dispatcher.build import check_destinations
from sipgw.proxy.dispatcher.listfile import ListFileError
from sipgw.proxy.workers.spec import spec_from_environment


@click.command()
@config_option
@click.option("--check", is_flag=True, help="Validate the config file and exit.")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=None, metavar="N",
              help="Worker processes (overrides proxy.workers; 1 = a single process).")
@pass_app
def serve(app: App, config_path: str | None, check: bool, workers: int | None) -> None:
    """Run the SIP proxy until SIGTERM; SIGHUP re-reads the config."""
    path = config_path_from_env(config_path)
    spec = spec_from_environment()
    try:
        if spec is not None and spec.config_text and path is not None:
            # A worker runs the config its supervisor checked, not the file as it is now.
            loaded = parse_config(spec.config_text, path)
        else:
            loaded = load_config(path)
        warnings = check_destinations(loaded.config)
    except (ConfigError, ListFileError) as e:
        app.fail(str(e), EXIT_USAGE)
    if spec is not None:  # started by a supervisor: one worker of several
        raise SystemExit(_run(loaded, spec))
    if check:
        for warning in warnings:
            app.err.print(warning)
        where = loaded.path or "embedded default config"
        app.err.print(f"{where}: OK")
        for key in loaded.not_in_effect:
            app.err.print(f"{key}: not in effect yet")
        raise SystemExit(EXIT_OK)
    count = workers or loaded.config.proxy.workers or os.cpu_count() or 1
    raise SystemExit(_run(loaded) if count == 1 else _supervise(loaded, count))


def _supervise(loaded, count: int) -> int:
    """Several workers: this process opens the sockets and supervises them."""
    from twisted.internet import reactor
    from twisted.logger import Logger

    from sipgw import __version__
    from sipgw.proxy.runtime import log as sipgw_log
    from sipgw.proxy.workers.sockets import SocketError
    from sipgw.proxy.workers.supervisor import Supervisor

    sipgw_log.start_logging(loaded.config.log.level)
    log = Logger(namespace="sipgw.serve")
    log.info("sipgw {v} starting {n} workers ({cfg})", v=__version__, n=count,
             cfg=loaded.path or "embedded default config")
    try:
        _check_certificate(loaded.config)
    except ConfigError as e:
        log.critical("cannot start: {err}", err=e)
        return EXIT_FAILED
    supervisor = Supervisor(loaded, reactor, count)
    status = {"code": EXIT_OK}

    def start() -> None:
        try:
            supervisor.startService()
        except SocketError as e:
            log.critical("cannot start: {err}", err=e)
            status["code"] = EXIT_FAILED
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.callWhenRunning(_stop_once_on_signals, reactor, worker=False)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: supervisor.stopService() if supervisor.running else None)
    supervisor.install_signal_handlers()
    reactor.run()
    log.info("sipgw stopped")
    return status["code"] or supervisor.exit_code


def _stop_once_on_signals(reactor, *, worker: bool) -> None:
    """SIGTERM (and SIGINT) stop the reactor once: a terminal's Ctrl-C or a group kill
    reaches the supervisor and every worker, and then the supervisor passes SIGTERM on; a
    second signal must not stop a reactor already stopping. A worker ignores SIGINT: it
    stops when its supervisor says so."""
    import signal

    stopping: list[bool] = []

    def stop_once(*_) -> None:
        if not stopping:
            stopping.append(True)
            reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop_once)
    signal.signal(signal.SIGINT, signal.SIG_IGN if worker else stop_once)


def _check_certificate(config) -> None:
    """What a worker would fail on at start, said once by the supervisor instead."""
    if config.listen.tls or config.listen.wss:
        from sipgw.proxy.transport.tls import ServerTls

        ServerTls(config.tls)
    subscribers = config.subscribers
    if subscribers.tls_ca_file and subscribers.url.startswith("rediss"):
        from sipgw.store.redis_link import Tls

        Tls(subscribers.tls_ca_file)


def _run(loaded, worker=None) -> int:
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import Logger

    from sipgw import __version__
    from sipgw.proxy.runtime import gcpolicy
    from sipgw.proxy.runtime import log as sipgw_log
    from sipgw.proxy.service import make_service
    from sipgw.proxy.workers.sockets import SocketError, own_sockets

    sipgw_log.start_logging(loaded.config.log.level,
                            tag=f"w{worker.index}" if worker is not None else "")
    log = Logger(namespace="sipgw.serve")
    if worker is None:
        log.info("sipgw {v} starting ({cfg})", v=__version__,
                 cfg=loaded.path or "embedded default config")
    else:
        log.info("worker {i} of {n} starting", i=worker.index, n=worker.count)
    try:
        # A worker has its own sockets toward the backends from the supervisor.
        own = own_sockets(loaded.config) if worker is None else None
        svc = make_service(loaded, reactor, worker=worker, own=own)
    except SocketError as e:
        log.critical("cannot start: {err}", err=e)
        return EXIT_FAILED
    except (ConfigError, ListFileError) as e:
        # A certificate missing or not matching its key, or a dispatcher list that
        # changed since it was checked.
        log.critical("cannot start: {err}", err=e)
        return EXIT_FAILED
    status = {"code": EXIT_OK}

    def start() -> None:
        try:
            svc.startService()
        except CannotListenError as e:
            log.critical("cannot listen on {iface}:{port}: {err}", iface=e.interface or "*",
                         port=e.port, err=e.socketError)
            status["code"] = EXIT_FAILED
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.callWhenRunning(gcpolicy.start, reactor)  # once start-up garbage is gone
    if worker is not None:
        reactor.callWhenRunning(_stop_once_on_signals, reactor, worker=True)
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    svc.install_signal_handlers()
    reactor.run()
    log.info("sipgw stopped")
    return status["code"]
