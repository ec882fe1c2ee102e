"""``sipgw serve``: run the proxy in the foreground (systemd's Type=simple)."""

from __future__ import annotations

import click

from sipgw.cli.app import EXIT_FAILED, EXIT_OK, EXIT_USAGE, App, pass_app
from sipgw.cli.options import config_option
from sipgw.config import ConfigError, config_path_from_env, load_config
from sipgw.proxy.dispatcher.build import check_destinations
from sipgw.proxy.dispatcher.listfile import ListFileError


@click.command()
@config_option
@click.option("--check", is_flag=True, help="Validate the config file and exit.")
@pass_app
def serve(app: App, config_path: str | None, check: bool) -> None:
    """Run the SIP proxy until SIGTERM; SIGHUP re-reads the config."""
    path = config_path_from_env(config_path)
    try:
        loaded = load_config(path)
        warnings = check_destinations(loaded.config)
    except (ConfigError, ListFileError) as e:
        app.fail(str(e), EXIT_USAGE)
    if check:
        for warning in warnings:
            app.err.print(warning)
        where = loaded.path or "embedded default config"
        app.err.print(f"{where}: OK")
        for key in loaded.not_in_effect:
            app.err.print(f"{key}: not in effect yet")
        raise SystemExit(EXIT_OK)
    raise SystemExit(_run(loaded))


def _run(loaded) -> int:
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import Logger

    from sipgw import __version__
    from sipgw.proxy.runtime import gcpolicy
    from sipgw.proxy.runtime import log as sipgw_log
    from sipgw.proxy.service import make_service

    sipgw_log.start_logging(loaded.config.log.level)
    log = Logger(namespace="sipgw.serve")
    log.info("sipgw {v} starting ({cfg})", v=__version__,
             cfg=loaded.path or "embedded default config")
    try:
        svc = make_service(loaded, reactor)
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
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    svc.install_signal_handlers()
    reactor.run()
    log.info("sipgw stopped")
    return status["code"]
