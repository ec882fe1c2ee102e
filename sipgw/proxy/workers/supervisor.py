"""``sipgw serve`` with several workers: the supervisor process.

It opens every socket (``sockets.py``), starts one worker process per slot
(``sipgw serve`` again, told its place by ``SIPGW_WORKER``), and stays small: it handles no
SIP. It

* tells systemd READY=1 once every worker said it listens, and feeds the watchdog only
  while every worker answers its heartbeat (``Ping`` each second, 5 s to answer);
* restarts a worker that dies, on the same sockets (its clients do not move, the other
  workers' clients are not touched), after a back-off that doubles from 0.5 s up to 30 s
  and starts again from 0.5 s once a worker has run for a minute; each restart is logged
  and counted (``core.workers``);
* on SIGHUP checks the new config once and has every worker apply it (``Reload``, with
  the text it checked), or none when it is bad; a worker it starts again runs that same
  text too, whatever the file holds meanwhile (one that was starting during the reload
  gets it once ready); on SIGTERM closes its copies of the stream listeners (so that
  connection attempts are refused, not queued), has every worker drain and exit, then
  exits 0;
* serves the one control socket (``control.py``: its own methods, and the workers'
  answers merged, ``fanout.py`` and ``rules.py``) and the one ``/metrics`` (``metrics.py``),
  and relays what workers publish to the others (``channel.py``);
* settles the route signing key once, before any worker starts, and hands it to each: a
  key per worker (no ``route.key`` could be kept, or two made at once) would refuse an
  in-dialog request that reaches the other worker than its dialog's INVITE.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sipgw.config import ConfigError, LoadedConfig, parse_config
from sipgw.proxy.control import ControlServer, ControlSocketInUse
from sipgw.proxy.runtime.log import set_level
from sipgw.proxy.runtime.notify import Notifier
from sipgw.proxy.signing import service_route_key
from sipgw.proxy.workers.channel import Ping, Reload, SupervisorChannel
from sipgw.proxy.workers.control import ServiceControl
from sipgw.proxy.workers.fanout import FanOut
from sipgw.proxy.workers.metrics import start_service_metrics
from sipgw.proxy.workers.sockets import SocketSet
from sipgw.proxy.workers.spec import (
    CHANNEL_FD,
    ENVIRONMENT,
    FIRST_SOCKET_FD,
    WorkerSpec,
    worker_control_path,
)
from sipgw.rpc.registry import rpc
from sipgw.sip.hostport import join_hostport

log = Logger(namespace="sipgw.workers")

HEARTBEAT = 1.0  # seconds between pings
HEARTBEAT_TIMEOUT = 5.0  # a worker silent this long is unhealthy (the watchdog stops)
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long restarts without waiting again
AMP_VALUE_MAX = 0xFFFF  # bytes in one AMP value
STOP_GRACE = 5.0  # seconds past proxy.drain_timeout before a worker is killed
# What systemd gives the main process only: a worker must not answer for the service.
_NOT_FOR_WORKERS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                    "LISTEN_PID", "LISTEN_FDNAMES")


class Slot:
    """One worker's place: the same index, sockets and backend address across restarts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.process = None
        self.channel: SupervisorChannel | None = None
        self.ready = False
        self.started = 0.0  # time.monotonic() of the last start
        self.restarts = 0
        self.backoff = FIRST_BACKOFF
        self.pending_restart = None
        self.last_answer = 0.0
        self.connections = 0
        self.transactions = 0
        self.lag_us = 0
        self.queue_us = 0
        self.last_exit = ""
        self.config_text = ""  # the config it was given: at its start, or by a Reload
        # What it writes toward the backends ({"udp": "host:port", "tls": ...}), said in
        # its Ready: its own sockets' addresses, a wildcard's replaced by the one it uses.
        self.advertised: dict[str, str] = {}


class _WorkerProcess(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, slot: Slot) -> None:
        self.supervisor = supervisor
        self.slot = slot

    def processEnded(self, reason) -> None:
        self.supervisor.ended(self.slot, reason.value)


class Supervisor(service.Service):
    name = "supervisor"  # type: ignore[assignment]  # Twisted types Service.name as None

    def __init__(self, loaded: LoadedConfig, reactor, count: int, *,
                 environ=None, argv: list[str] | None = None) -> None:
        self.loaded = loaded
        self.reactor = reactor
        self.count = count
        self.environ = dict(os.environ if environ is None else environ)
        self.notifier = Notifier(self.environ)
        self.argv = argv or [sys.executable, "-m", "sipgw", "serve"]
        self.sockets: SocketSet | None = None
        self.route_key = b""  # made at start (signing.service_route_key)
        self.config_text = ""  # the file's text as checked: what workers run (reloads too)
        self.slots = [Slot(i) for i in range(count)]
        self.stopping = False
        self.exit_code = 0  # what sipgw serve exits with
        self.started_at = time.time()
        self._announced = False
        self._heartbeat = LoopingCall(self._ping_all)
        self._heartbeat.clock = reactor
        self._stopped: dict[int, defer.Deferred] = {}
        self.control: ControlServer | None = None
        self.metrics = None  # the listening port of metrics.listen
        self.fanout = FanOut(reactor, self._worker_sockets)

    # -- start ----------------------------------------------------------------------

    def startService(self) -> None:
        """Opens every socket first: a port in use fails here, before any worker starts."""
        self.sockets = SocketSet(self.loaded.config, self.count)
        self._snapshot()
        # Made once here, so every worker signs routes and nonces with the same key.
        self.route_key = service_route_key(self.loaded.config)
        super().startService()
        self._open_control()
        self.metrics = start_service_metrics(self)
        for slot in self.slots:
            self._spawn(slot)
        self._heartbeat.start(HEARTBEAT, now=False)
        self.notifier.start_watchdog(self.reactor, healthy=self.healthy)
        listening = ", ".join(f"{s.kind}:{s.host}:{s.port}" for s in self.sockets.for_worker(0)
                              if not s.kind.startswith("backend"))
        log.info("{n} workers on {listening}", n=self.count, listening=listening)

    def _snapshot(self) -> None:
        """The text of the file serve checked, to hand to the workers. The file changed
        meanwhile into one that does not load: the workers read it, as before, and say so."""
        path = self.loaded.path
        if path is None:
            return
        try:
            text = Path(path).read_text(encoding="utf-8")
            self.loaded = parse_config(text, path)
        except (OSError, UnicodeDecodeError, ConfigError):
            return
        self.config_text = text

    def _spawn(self, slot: Slot) -> None:
        assert self.sockets is not None
        slot.pending_restart = None
        inherited = self.sockets.for_worker(slot.index)
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = WorkerSpec(
            index=slot.index, count=self.count,
            sockets=tuple(replace(s, fd=FIRST_SOCKET_FD + n) for n, s in enumerate(inherited)),
            peers=tuple(self.sockets.peer_addresses),
            control_socket=worker_control_path(self.control_path, slot.index),
            route_key=self.route_key.hex(), config_text=self.config_text)
        env = {k: v for k, v in self.environ.items() if k not in _NOT_FOR_WORKERS}
        env[ENVIRONMENT] = spec.to_json()
        fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, CHANNEL_FD: child_end.fileno()}
        for n, s in enumerate(inherited):
            fds[FIRST_SOCKET_FD + n] = s.fd
        args = [*self.argv, *(["-c", self.loaded.path] if self.loaded.path else [])]
        try:
            process = self.reactor.spawnProcess(_WorkerProcess(self, slot), args[0], args,
                                                env=env, childFDs=fds)
        finally:
            child_end.close()
        slot.process = process
        slot.config_text = self.config_text
        slot.pid = process.pid
        slot.started = time.monotonic()
        slot.last_answer = time.monotonic()
        slot.ready = False
        channel = SupervisorChannel(slot, self._ready, self._publish)
        slot.channel = channel
        self.reactor.adoptStreamConnection(parent_end.fileno(), socket.AF_UNIX,
                                           _Only(channel))
        parent_end.close()
        log.info("worker {i} started, pid {pid}", i=slot.index, pid=slot.pid)

    def _ready(self, slot: Slot, pid: int, advertised: dict[str, str]) -> None:
        slot.ready = True
        slot.advertised = advertised
        slot.last_answer = time.monotonic()
        self.fanout.worker_started(slot.index, worker_control_path(self.control_path,
                                                                   slot.index))
        if slot.config_text != self.config_text:
            # A reload came while it was starting, and passed it by: it gets it now.
            self._send_reload([slot]).addCallback(
                lambda _: log.info("worker {i} started before the last reload: reloaded",
                                   i=slot.index))
        if not self._announced and all(s.ready for s in self.slots):
            self._announced = True
            self.notifier.ready(status=self.status_line())
            log.info("all {n} workers listening", n=self.count)

    def status_line(self) -> str:
        running = sum(1 for s in self.slots if s.ready)
        return f"running: {running}/{self.count} workers"

    # -- workers that end -----------------------------------------------------------

    def ended(self, slot: Slot, why) -> None:
        code = getattr(why, "exitCode", None)
        sig = getattr(why, "signal", None)
        slot.last_exit = f"signal {sig}" if sig else f"exit code {code}"
        slot.process = None
        slot.pid = None
        slot.ready = False
        slot.channel = None
        slot.connections = slot.transactions = slot.lag_us = slot.queue_us = 0
        waiting = self._stopped.pop(slot.index, None)
        if waiting is not None:
            waiting.callback(None)
        if self.stopping:
            return
        if not self._announced:
            # Never got as far as listening: a certificate, a file, a port -- the same for
            # every restart. Give up as a single process would, rather than loop.
            log.critical("worker {i} could not start ({why}); stopping the service",
                         i=slot.index, why=slot.last_exit)
            self.exit_code = 1
            os.kill(os.getpid(), signal.SIGTERM)  # stops once, as any SIGTERM does
            return
        ran = time.monotonic() - slot.started
        if ran >= STABLE_AFTER:
            slot.backoff = FIRST_BACKOFF
        delay, slot.backoff = slot.backoff, min(slot.backoff * 2, MAX_BACKOFF)
        slot.restarts += 1
        log.error("worker {i} ended ({why}) after {ran:.1f} s; restarting it in {d:.1f} s "
                  "(restart {n})", i=slot.index, why=slot.last_exit, ran=ran, d=delay,
                  n=slot.restarts)
        self.notifier.status(self.status_line())
        slot.pending_restart = self.reactor.callLater(delay, self._spawn, slot)

    # -- heartbeat and watchdog -----------------------------------------------------

    def _ping_all(self) -> None:
        for slot in self.slots:
            if slot.channel is None or not slot.ready:
                continue
            d = slot.channel.callRemote(Ping)
            d.addTimeout(HEARTBEAT_TIMEOUT, self.reactor)
            d.addCallbacks(lambda answer, s=slot: self._answered(s, answer), lambda _: None)

    def _answered(self, slot: Slot, answer: dict) -> None:
        slot.last_answer = time.monotonic()
        slot.connections = answer["connections"]
        slot.transactions = answer["transactions"]
        slot.lag_us = answer["lag_us"]
        slot.queue_us = answer["queue_us"]

    def healthy(self) -> bool:
        """Every worker running and answering: only then is systemd's watchdog fed."""
        now = time.monotonic()
        return all(s.process is not None and now - s.last_answer < HEARTBEAT_TIMEOUT
                   for s in self.slots)

    # -- what workers publish -------------------------------------------------------

    def _publish(self, origin: Slot, topic: str, data: str) -> None:
        for slot in self.slots:
            if slot is not origin and slot.channel is not None:
                slot.channel.deliver(topic, data, origin.index)

    # -- reload ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def reload(self) -> defer.Deferred:
        """SIGHUP: the new file is checked here once; every worker applies it, or none."""
        self.notifier.reloading()
        d = self._reload()
        d.addBoth(lambda _: self.notifier.ready(status=self.status_line()))
        return d

    def _reload(self) -> defer.Deferred:
        from sipgw.proxy.dispatcher.build import check_destinations
        from sipgw.proxy.dispatcher.listfile import ListFileError

        path = self.loaded.path
        if path is None:
            log.info("reload: running on the embedded default config; nothing to read")
            return defer.succeed(None)
        try:
            text = Path(path).read_text(encoding="utf-8")
            new = parse_config(text, path)
            check_destinations(new.config)
        except OSError as e:
            log.error("reload refused, keeping the running config in every worker: {path}: "
                      "cannot read the file: {err}", path=path, err=e.strerror or e)
            return defer.succeed(None)
        except UnicodeDecodeError:
            log.error("reload refused, keeping the running config in every worker: {path}: "
                      "not UTF-8 text", path=path)
            return defer.succeed(None)
        except (ConfigError, ListFileError, ValueError) as e:
            log.error("reload refused, keeping the running config in every worker: {err}",
                      err=e)
            return defer.succeed(None)
        if new.config.proxy.workers != self.loaded.config.proxy.workers:
            log.warn("reload: proxy.workers changes need a restart; {n} workers kept",
                     n=self.count)
        self.loaded = new
        set_level(new.config.log.level)  # as each worker does: log.level lasts to a reload
        self.config_text = text
        running = [s for s in self.slots if s.channel is not None and s.ready]
        d = self._send_reload(running)
        d.addCallback(lambda _: log.info("reloaded {path} in {n} workers", path=path,
                                         n=len(running)))
        return d

    def _send_reload(self, slots: list[Slot]) -> defer.Deferred:
        """``Reload`` with the config text checked last to each of ``slots``; errors logged.
        (One AMP value holds 64 KiB: a longer file is read by each worker itself.)"""
        text = self.config_text
        given = text if len(text.encode("utf-8")) < AMP_VALUE_MAX else ""
        calls = []
        for slot in slots:
            assert slot.channel is not None
            slot.config_text = text
            calls.append(slot.channel.callRemote(Reload, config=given))

        def report(outcomes) -> None:
            for slot, (ok, value) in zip(slots, outcomes, strict=True):
                error = value["error"] if ok else value.getErrorMessage()
                if error:
                    log.error("worker {i} did not apply the reload: {err}", i=slot.index,
                              err=error)

        return defer.DeferredList(calls, consumeErrors=True).addCallback(report)

    # -- stop -----------------------------------------------------------------------

    def stopService(self):
        """SIGTERM: every worker drains and exits; the last one out closes the sockets."""
        super().stopService()
        self.stopping = True
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self.sockets is not None:
            self.sockets.stop_accepting()
        waits = []
        deadline = self.loaded.config.proxy.drain_timeout + STOP_GRACE
        for slot in self.slots:
            if slot.pending_restart is not None and slot.pending_restart.active():
                slot.pending_restart.cancel()
            if slot.process is None:
                continue
            done: defer.Deferred = defer.Deferred()
            self._stopped[slot.index] = done
            waits.append(done)
            slot.process.signalProcess("TERM")
            kill = self.reactor.callLater(deadline, self._kill, slot)
            done.addBoth(lambda r, k=kill: (k.cancel() if k.active() else None, r)[1])
        d = defer.DeferredList(waits)
        d.addCallback(lambda _: self._closed())
        return d

    def _kill(self, slot: Slot) -> None:
        if slot.process is not None:
            log.error("worker {i} did not stop in time; killing it", i=slot.index)
            slot.process.signalProcess("KILL")

    def _closed(self) -> None:
        if self.control is not None:
            self.control.stop()
        if self.metrics is not None:
            self.metrics.stopListening()
        if self.sockets is not None:
            self.sockets.close()
        log.info("all workers stopped")

    # -- control --------------------------------------------------------------------

    @property
    def control_path(self) -> str:
        from sipgw.rpc.client import server_socket_path

        config = self.loaded.config
        return server_socket_path(config.control.socket, config.state.directory)

    def _worker_sockets(self) -> list[tuple[int, str]]:
        return [(s.index, worker_control_path(self.control_path, s.index))
                for s in self.slots if s.ready]

    def _open_control(self) -> None:
        config = self.loaded.config
        server = ServiceControl(self.reactor, self.control_path, supervisor=self,
                                fanout=self.fanout, mode=config.control.mode,
                                group=config.control.group)
        try:
            server.start()
        except (ControlSocketInUse, OSError) as e:
            log.error("control socket not opened: {why}; sipgw ctl will not reach this "
                      "service", why=e)
            return
        self.control = server

    @rpc("core.workers", help="Each worker: index, pid, uptime, restarts, load, "
                              "connections, the address it writes toward the backends.")
    def rpc_workers(self) -> list[dict]:
        now = time.monotonic()
        assert self.sockets is not None
        own = self.sockets.backend_addresses
        own_tls = self.sockets.backend_tls_addresses

        def bound(sock) -> str:
            return join_hostport(sock.host, sock.port)

        return [{
            "index": s.index, "pid": s.pid, "running": s.process is not None,
            "ready": s.ready,
            "uptime": round(now - s.started, 1) if s.process is not None else 0,
            "restarts": s.restarts, "last_exit": s.last_exit,
            "connections": s.connections, "transactions": s.transactions,
            "reactor_lag_us": s.lag_us, "udp_queue_delay_us": s.queue_us,
            # Until its first Ready, where it is bound (the same but for a wildcard).
            "backend_address": s.advertised.get("udp", bound(own[s.index])),
            "backend_bound": bound(own[s.index]),
            **({"tls_address": s.advertised.get("tls", bound(own_tls[s.index])),
                "tls_bound": bound(own_tls[s.index])} if own_tls else {}),
            "heartbeat_age": round(now - s.last_answer, 1),
        } for s in self.slots]


class _Only(Factory):
    """A factory for one protocol instance made in advance."""

    def __init__(self, protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        self.protocol_instance.factory = self
        return self.protocol_instance
