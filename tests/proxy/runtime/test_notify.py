"""systemd notify: READY, RELOADING/READY, STOPPING and WATCHDOG on a real unix socket."""

from __future__ import annotations

import socket

from twisted.internet.task import Clock

from sipgw.config import load_config
from sipgw.proxy.runtime.notify import Notifier
from sipgw.proxy.service import make_service
from tests.proxy.test_service import GOOD, Reactor


def listener(tmp_path, abstract: bool = False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"sipgw-notify-test-{id(s)}"
        s.bind("\0" + name)
        env = {"NOTIFY_SOCKET": "@" + name}
    else:
        path = str(tmp_path / "notify.sock")
        s.bind(path)
        env = {"NOTIFY_SOCKET": path}
    s.settimeout(2)
    return s, env


def received(s) -> dict[str, str]:
    return dict(line.split("=", 1) for line in s.recv(4096).decode().splitlines())


def test_ready_and_stopping_reach_the_socket_systemd_gives(tmp_path):
    s, env = listener(tmp_path)
    with s:
        n = Notifier(env)
        n.ready(status="running")
        assert received(s) == {"READY": "1", "STATUS": "running"}
        n.stopping()
        assert received(s) == {"STOPPING": "1", "STATUS": "stopping"}


def test_an_abstract_socket_name_works_too(tmp_path):
    s, env = listener(tmp_path, abstract=True)
    with s:
        Notifier(env).status("hello")
        assert received(s) == {"STATUS": "hello"}


def test_the_service_says_ready_when_it_listens_and_announces_reloads_even_bad_ones(tmp_path):
    s, env = listener(tmp_path)
    path = tmp_path / "sipgw.toml"
    path.write_text(GOOD + f'[state]\ndirectory = "{tmp_path}"\n')
    reactor = Reactor()
    with s:
        svc = make_service(load_config(str(path)), reactor, environ=env)
        svc.startService()
        ready = received(s)
        assert ready["READY"] == "1" and "relaying to sip:127.0.0.1:25080" in ready["STATUS"]
        assert reactor.udpPorts  # READY=1 came once the listeners were open
        path.write_text("[proxy]\nmax_forwards = 0\n")  # refused: the running one stays
        svc.reload()
        first, second = received(s), received(s)
        svc.stopService()
        stopping = received(s)
    assert first["RELOADING"] == "1" and first["MONOTONIC_USEC"].isdigit()
    assert second["READY"] == "1"
    assert stopping["STOPPING"] == "1"


def test_the_watchdog_pings_every_half_watchdog_usec_until_stopped(tmp_path):
    s, env = listener(tmp_path)
    clock = Clock()
    with s:
        n = Notifier({**env, "WATCHDOG_USEC": "10000000"})
        assert n.watchdog_interval == 5.0
        n.start_watchdog(clock)
        assert received(s) == {"WATCHDOG": "1"}
        clock.advance(5)
        assert received(s) == {"WATCHDOG": "1"}
        n.stop_watchdog()
        assert clock.getDelayedCalls() == []


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    n = Notifier({})
    assert not n.enabled
    assert n.send(READY="1") is False
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent/sock"}).send(READY="1") is False
