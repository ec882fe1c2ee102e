"""The supervisor's control socket: the service's one ``control.socket``.

What is the service's and not any worker's is answered here: its version, its uptime (the
supervisor's: a worker restarted a minute ago does not make the service a minute old),
``core.workers`` (the supervisor's), ``cfg.reload`` (checked once, applied by every worker,
as SIGHUP), and the ``system.*`` methods over what the workers serve too. ``log.level``
is set here as well as in every worker. Every other call goes to the workers
(``fanout.py``) and their answers are merged by the method's rule (``rules.py``).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from sipgw.config import ConfigError, load_config
from sipgw.proxy.control import ControlServer
from sipgw.proxy.control.admin import UPTIME_HELP, VERSION_HELP, uptime, version_line
from sipgw.proxy.runtime.log import LogControl
from sipgw.proxy.workers.fanout import FanOut
from sipgw.rpc.registry import RpcError, rpc

if TYPE_CHECKING:
    from sipgw.proxy.workers.supervisor import Supervisor


class ServiceControl(ControlServer):
    """The supervisor's own methods, and every other one answered by the workers."""

    def __init__(self, reactor, path: str, *, supervisor: Supervisor, fanout: FanOut,
                 **kwargs) -> None:
        self.supervisor = supervisor
        self.fanout = fanout
        self.log_control = LogControl()
        super().__init__(reactor, path, owners=[supervisor], **kwargs)

    def lookup(self, name: str):
        return super().lookup(name) or self.fanout.method(name)

    @rpc("system.listMethods", help="The names of every method this service serves.")
    def rpc_list_methods(self):
        own = set(self.methods)
        d = self.fanout.call("system.listMethods", [])
        d.addErrback(lambda _: [])  # no worker running: what the supervisor serves
        return d.addCallback(lambda theirs: sorted(own | set(theirs)))

    @rpc("system.methodHelp", help="One line of help for METHOD.")
    def rpc_method_help(self, method: str):
        own = self.methods.get(method)
        if own is not None:
            return own.help
        return self.fanout.call("system.methodHelp", [method])

    @rpc("core.version", help=VERSION_HELP)
    def rpc_version(self) -> str:
        return version_line()

    @rpc("core.uptime", help=UPTIME_HELP)
    def rpc_uptime(self) -> dict[str, Any]:
        started = self.supervisor.started_at
        return uptime(started, time.time() - started)

    @rpc("core.info", help="Version, pid, config file, listeners, backend and control socket.")
    def rpc_info(self):
        def ours(info: dict[str, Any]) -> dict[str, Any]:
            return {**info, "pid": os.getpid(), "control": self.path,
                    "up_since": int(self.supervisor.started_at),
                    "workers": len(self.supervisor.slots)}

        return self.fanout.call("core.info", []).addCallback(ours)

    @rpc("cfg.reload", help="Read the config file again (as SIGHUP); a bad file is refused "
                            "with its error and the running config kept.")
    def rpc_reload(self):
        from sipgw.proxy.dispatcher.build import check_destinations
        from sipgw.proxy.dispatcher.listfile import ListFileError

        path = self.supervisor.loaded.path
        if path is None:
            raise RpcError("running on the embedded default config: there is no file to read")
        try:
            check_destinations(load_config(path).config)
        except (ConfigError, ListFileError, ValueError) as e:
            raise RpcError(f"reload refused, running config kept: {e}") from None
        d = defer.maybeDeferred(self.supervisor.reload)
        return d.addCallback(lambda _: {
            "reloaded": path, "not_in_effect": list(self.supervisor.loaded.not_in_effect)})

    @rpc("log.level", help="The log level; with LEVEL (a name, or a number from -5; 3 and "
                           "above are debug), set it until the next reload.")
    def rpc_level(self, level: str | int | None = None):
        if level is not None:
            self.log_control.rpc_level(level)  # the supervisor's lines too; refuses a bad one
        return self.fanout.call("log.level", [] if level is None else [level])
