"""The control server: methods of many owners, bad input answered, slow clients harmless."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.testing import MemoryReactorClock, StringTransport

from sipgw.config import load_config
from sipgw.proxy.control import ControlServer, ControlSocketInUse, owners_in
from sipgw.proxy.service import make_service
from sipgw.proxy.stats import Stats
from sipgw.rpc.client import find_socket, server_socket_path, socket_candidates
from sipgw.rpc.registry import RpcError, rpc
from sipgw.rpc.stream import Stream


class Things:
    def __init__(self) -> None:
        self.later: defer.Deferred | None = None
        self.stopped = 0
        self.emit = None

    @rpc("thing.echo", help="Its arguments back.")
    def rpc_echo(self, a, b=None):
        return [a, b]

    @rpc("thing.refuse", help="Always refused.")
    def rpc_refuse(self):
        raise RpcError("no such thing: 5")

    @rpc("thing.crash", help="A bug.")
    def rpc_crash(self):
        return 1 / 0

    @rpc("thing.later", help="Answers when the test says so.")
    def rpc_later(self):
        self.later = defer.Deferred()
        return self.later

    @rpc("thing.watch", help="A stream.")
    def rpc_watch(self):
        def start(emit):
            self.emit = emit

        def stop():
            self.stopped += 1

        return Stream({"watching": True}, start, stop)


class Client:
    """One control connection over a StringTransport."""

    def __init__(self, server: ControlServer) -> None:
        from twisted.internet.protocol import Factory

        from sipgw.proxy.control import ControlProtocol

        factory = Factory.forProtocol(ControlProtocol)
        factory.server = server
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, line: bytes | str) -> None:
        self.protocol.dataReceived(line.encode() if isinstance(line, str) else line)

    def call(self, method, params=None, rid=1):
        self.send(json.dumps({"jsonrpc": "2.0", "method": method, "params": params or [],
                              "id": rid}) + "\n")

    def answers(self) -> list:
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def things():
    return Things()


@pytest.fixture
def server(things):
    return ControlServer(MemoryReactorClock(), "/nonexistent/ctl", owners=[things, Stats()])


def test_methods_of_every_owner_are_listed_with_their_help(server):
    c = Client(server)
    c.call("system.listMethods")
    names = c.answers()[0]["result"]
    assert {"thing.echo", "stats.get_statistics", "system.listMethods",
            "system.methodHelp"} <= set(names)
    c.call("system.methodHelp", ["thing.echo"])
    assert c.answers()[0]["result"] == "Its arguments back."


def test_a_garbage_line_gets_a_parse_error_and_the_connection_stays_usable(server):
    c = Client(server)
    c.send(b"\x00\xffnot json at all\n")
    assert c.answers() == [{"jsonrpc": "2.0", "error": {"code": -32700,
                                                        "message": "Parse error: not JSON"},
                            "id": None}]
    c.call("thing.echo", [1, "x"], rid="abc")
    assert c.answers() == [{"jsonrpc": "2.0", "result": [1, "x"], "id": "abc"}]


def test_unknown_methods_and_wrong_arguments_are_told_apart(server):
    c = Client(server)
    c.call("thing.nope", rid=1)
    c.call("thing.echo", [1, 2, 3], rid=2)
    c.send('{"jsonrpc":"2.0","method":"thing.echo","params":{"a":5},"id":3}\n')
    first, second, third = c.answers()
    assert first["error"]["code"] == -32601
    assert "thing.nope" in first["error"]["message"]
    assert second["error"]["code"] == -32602
    assert third["result"] == [5, None]


def test_a_refused_call_carries_the_reason_and_a_bug_is_an_internal_error(server):
    c = Client(server)
    c.call("thing.refuse", rid=1)
    c.call("thing.crash", rid=2)
    refused, crashed = c.answers()
    assert refused["error"] == {"code": -32602, "message": "no such thing: 5"}
    assert crashed["error"]["code"] == -32603
    assert "division by zero" in crashed["error"]["message"]


def test_a_slow_method_does_not_hold_up_other_clients(server, things):
    slow, quick = Client(server), Client(server)
    slow.call("thing.later", rid=1)
    quick.call("thing.echo", ["q"], rid=2)
    assert quick.answers()[0]["result"] == ["q", None]
    assert slow.answers() == []
    things.later.callback({"done": True})
    assert slow.answers() == [{"jsonrpc": "2.0", "result": {"done": True}, "id": 1}]


def test_a_batch_is_answered_in_one_line_without_the_notifications(server):
    c = Client(server)
    c.send('[{"jsonrpc":"2.0","method":"thing.echo","params":[1],"id":1},'
           '{"jsonrpc":"2.0","method":"thing.echo","params":[2]},'
           '{"jsonrpc":"2.0","method":"thing.nope","id":3}]\n')
    (answer,) = c.answers()
    assert [a["id"] for a in answer] == [1, 3]
    assert answer[0]["result"] == [1, None]
    assert answer[1]["error"]["code"] == -32601


def test_a_notification_gets_no_answer_even_when_it_fails(server):
    c = Client(server)
    c.send('{"jsonrpc":"2.0","method":"thing.crash"}\n')
    assert c.answers() == []


def test_a_line_longer_than_the_limit_is_refused_and_the_connection_closed(server):
    from sipgw.proxy.control import MAX_LINE

    c = Client(server)
    c.send(b"[" * (MAX_LINE + 10))
    assert c.answers()[0]["error"]["code"] == -32700
    assert c.transport.disconnecting


def test_a_stream_answers_first_then_notifies_until_the_client_goes(server, things):
    c = Client(server)
    c.call("thing.watch", rid=9)
    things.emit("thing.event", {"n": 1})
    assert c.answers() == [
        {"jsonrpc": "2.0", "result": {"watching": True}, "id": 9},
        {"jsonrpc": "2.0", "method": "thing.event", "params": {"n": 1}},
    ]
    c.protocol.connectionLost(None)
    assert things.stopped == 1
    things.emit("thing.event", {"n": 2})  # after it went: nothing, no error
    assert c.answers() == []


def test_a_client_that_does_not_read_loses_notifications_instead_of_growing_a_buffer(
    server, things
):
    c = Client(server)
    c.call("thing.watch")
    c.answers()
    c.protocol.pauseProducing()  # what Twisted does when its socket buffer is full
    assert c.transport.producerState == "paused"  # and we read no more requests from it
    for n in range(100):
        things.emit("thing.event", {"n": n})
    assert c.answers() == []
    assert server.dropped == 100
    c.protocol.resumeProducing()
    things.emit("thing.event", {"n": "again"})
    assert [a["params"]["n"] for a in c.answers()] == ["again"]


def test_owners_hung_on_the_service_later_are_found_without_more_wiring(things):
    class Service:
        pass

    svc = Service()
    svc.stats = Stats()
    svc.name = "x"
    assert owners_in(svc) == [svc.stats]
    svc.things = things
    server = ControlServer(MemoryReactorClock(), "/x", owners=lambda: owners_in(svc))
    c = Client(server)
    c.call("thing.echo", ["late"])
    assert c.answers()[0]["result"] == ["late", None]


# -- the socket file -----------------------------------------------------------------------


def test_the_socket_gets_the_configured_mode_and_group(tmp_path, things):
    reactor = SelectReactor()
    path = str(tmp_path / "run" / "sipgw.ctl")
    groups = [g for g in grp.getgrall() if g.gr_gid != os.getegid()] if os.geteuid() == 0 \
        else [grp.getgrgid(os.getegid())]
    group = groups[0]
    server = ControlServer(reactor, path, owners=[things], mode=0o640, group=group.gr_name)
    server.start()
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_gid == group.gr_gid
    finally:
        server.port.socket.close()


def test_a_socket_left_by_a_dead_proxy_is_replaced_but_a_live_one_is_not_stolen(tmp_path,
                                                                                things):
    path = str(tmp_path / "sipgw.ctl")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens
    reactor = SelectReactor()
    server = ControlServer(reactor, path, owners=[things])
    server.start()
    try:
        other = ControlServer(SelectReactor(), path, owners=[things])
        with pytest.raises(ControlSocketInUse):
            other.start()
    finally:
        server.port.socket.close()


NOBODY = "nobody"  # the user a root test run checks what a user who is not root gets


@pytest.fixture
def users_directory(tmp_path) -> Iterator[Path]:
    """A directory the user who is not root owns: ``tmp_path``, or, for a root run (CI),
    a new one of ``nobody``'s outside pytest's root-only tree."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="sipgw-test-"))
    nobody = pwd.getpwnam(NOBODY)
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def as_a_user(check: Callable[[], None]) -> None:
    """``check()`` as a user who is not root: here, or for a root run in a child process
    as ``nobody`` (root may write anywhere, so what a user gets cannot be seen as root)."""
    if os.geteuid() != 0:
        check()
        return
    nobody = pwd.getpwnam(NOBODY)
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            check()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"failed as {NOBODY}: its traceback above"


def test_without_root_an_unwritable_run_directory_sends_the_socket_to_the_state_directory(
    users_directory,
):
    locked = users_directory / "run"
    locked.mkdir()
    locked.chmod(0o500)
    configured = str(locked / "sipgw" / "sipgw.ctl")
    state = str(users_directory / "state")
    assert server_socket_path(configured, state, is_root=True) == configured
    expected = str(users_directory / "state" / "sipgw.ctl")
    writable = str(users_directory / "elsewhere" / "sipgw.ctl")

    def as_user() -> None:  # as ``sipgw serve`` run by its own user decides
        assert server_socket_path(configured, state) == expected
        assert server_socket_path(configured, state, is_root=False) == expected
        assert server_socket_path(writable, state) == writable

    as_a_user(as_user)
    assert socket_candidates(configured, state) == [configured, expected]
    # The client looks where the server could have put it: the file that exists.
    assert find_socket(configured, state) == configured
    (users_directory / "state").mkdir()
    (users_directory / "state" / "sipgw.ctl").write_text("")
    assert find_socket(configured, state) == expected


def test_the_service_opens_its_control_socket_from_the_config_and_closes_it(tmp_path):
    path = tmp_path / "sipgw.toml"
    sock = tmp_path / "ctl" / "sipgw.ctl"
    path.write_text(
        '[listen]\nudp = []\ntcp = ["127.0.0.1:25061"]\nws = []\n'
        f'[control]\nsocket = "{sock}"\nmode = "0600"\n'
    )
    reactor = MemoryReactorClock()
    svc = make_service(load_config(str(path)), reactor)
    svc.startService()
    (unix,) = reactor.unixServers
    assert (unix[0], unix[3]) == (str(sock), 0o600)
    methods = svc.control.rpc_list_methods()
    assert {"core.version", "core.uptime", "core.info", "cfg.get", "cfg.reload", "log.level",
            "stats.get_statistics", "stats.reset_statistics"} <= set(methods)
    svc.stopService()
    assert svc.control is None
