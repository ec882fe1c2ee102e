"""A worker's end: its channel to the supervisor, as a child service of ``ProxyService``.

Started last, once everything before it listens, it says ``Ready``; it answers the
heartbeat with its connection and transaction counts, applies a reload the supervisor
checked, and hands what other workers publish to whoever listens for the topic
(``channel.on``). Losing the channel means the supervisor is gone: the worker stops
(draining) rather than serve on unsupervised.
"""

from __future__ import annotations

import os
import socket

from twisted.application import service
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from sipgw.proxy.workers.channel import WorkerChannel
from sipgw.proxy.workers.spec import WorkerSpec
from sipgw.sip.hostport import join_hostport

log = Logger(namespace="sipgw.workers")


class WorkerLink(service.Service):
    name = "worker link"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, root, spec: WorkerSpec, reactor) -> None:
        self.root = root
        self.spec = spec
        self.reactor = reactor
        self.channel = WorkerChannel(index=spec.index, pid=os.getpid(), load=self._load,
                                     reload=root.reload_checked, on_lost=self._lost)

    def startService(self) -> None:
        super().startService()
        factory = Factory()
        factory.buildProtocol = lambda addr: self.channel  # type: ignore[method-assign]
        try:
            self.reactor.adoptStreamConnection(self.spec.channel_fd, socket.AF_UNIX, factory)
        finally:
            os.close(self.spec.channel_fd)
        self.channel.ready(self._advertised())

    def _advertised(self) -> dict[str, str]:
        """What this worker writes toward the backends, by transport (UDP and TCP share
        one port), as ``core.workers`` shows it."""
        identity = self.root.proxy.identity
        return {lst.transport: join_hostport(lst.host, lst.port)
                for lst in (identity.backend, identity.backend_tls) if lst is not None}

    def _load(self) -> dict[str, int]:
        values = self.root.stats.values
        return {"connections": len(self.root.flows.by_id),
                "transactions": self.root.proxy.pending_requests(),
                "lag_us": values.get("load:reactor_lag_us", 0),
                "queue_us": values.get("load:udp_queue_delay_us", 0)}

    def _lost(self) -> None:
        if self.running and self.reactor.running:
            log.error("worker {i}: the supervisor is gone; stopping", i=self.spec.index)
            self.reactor.stop()
