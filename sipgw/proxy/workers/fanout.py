"""The service's one control socket, answering for every worker.

The supervisor serves ``sipgw ctl`` on ``control.socket``; each worker serves its own
methods on a socket beside it (``control.socket.wN``, ``sipgw ctl -w N`` reaches one worker
there). A call the supervisor does not answer itself (``control.py``) goes to every running
worker over a connection of its own, and the answers are merged by the method's rule
(``rules.py``). A question fails only when no worker answers it (``ws.close ID``: the
worker holding that connection answers, the others refuse); a command that must reach
every worker (``log.level``) fails when one refuses it. A streaming method
(``trace.subscribe``) keeps its connections open and forwards every worker's
notifications until the client goes away; a worker that starts again meanwhile joins it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from sipgw.proxy.control import MAX_LINE
from sipgw.proxy.workers.rules import EVERY, Rule, rule_for
from sipgw.rpc import codec
from sipgw.rpc.registry import RpcError, RpcMethod
from sipgw.rpc.stream import Emit, Stream

log = Logger(namespace="sipgw.workers")

STREAMING = frozenset({"trace.subscribe"})
CALL_TIMEOUT = 10.0  # seconds a worker has to answer (``dispatcher.reload`` reads a file)


class WorkerCallFailed(Exception):
    def __init__(self, index: int, code: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.code = code
        self.message = message


class _OneCall(LineOnlyReceiver):
    """One call to one worker: the answer fires ``answered``; later lines are the
    notifications of a stream, given to ``notify``."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, method: str, params: Any, index: int) -> None:
        self.method = method
        self.params = params
        self.index = index
        self.answered: defer.Deferred = defer.Deferred()
        self.notify: Emit | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(codec.encode(codec.request(self.method, self.params, 1)))

    def lineReceived(self, line: bytes) -> None:
        message = codec.decode_message(line)
        if "id" not in message:
            if self.notify is not None:
                params = message.get("params")
                if isinstance(params, dict):  # which worker handled the traced message
                    params = {**params, "worker": self.index}
                self.notify(message.get("method", ""), params)
            return
        if self.answered.called:
            return
        if "error" in message:
            error = message["error"] or {}
            self.answered.errback(WorkerCallFailed(self.index, error.get("code", -32603),
                                                   error.get("message", "error")))
        else:
            self.answered.callback(message.get("result"))

    def connectionLost(self, reason=None) -> None:
        if not self.answered.called:
            self.answered.errback(WorkerCallFailed(self.index, codec.INTERNAL_ERROR,
                                                   f"worker {self.index} went away"))


class _CallFactory(ClientFactory):
    def __init__(self, call: _OneCall) -> None:
        self.call = call

    def buildProtocol(self, addr):
        self.call.factory = self
        return self.call

    def clientConnectionFailed(self, connector, reason) -> None:
        if not self.call.answered.called:
            self.call.answered.errback(WorkerCallFailed(
                self.call.index, codec.INTERNAL_ERROR,
                f"worker {self.call.index} is not answering: {reason.getErrorMessage()}"))


class _Subscription:
    """A stream the client holds: the calls to each worker, joined by a worker that
    starts (again) while it runs."""

    def __init__(self, name: str, params: Any, calls: list[_OneCall]) -> None:
        self.name = name
        self.params = params
        self.calls = calls
        self.emit: Emit | None = None


class FanOut:
    """Calls to every running worker's control socket, merged by the method's rule."""

    def __init__(self, reactor, paths: Callable[[], list[tuple[int, str]]]) -> None:
        self.reactor = reactor
        self.paths = paths  # (index, socket path) of each worker that is running
        self.subscriptions: list[_Subscription] = []

    def method(self, name: str) -> RpcMethod:
        def handler(*args, **kwargs):
            params: Any = list(args) if args or not kwargs else kwargs
            return self.call(name, params)

        return RpcMethod(name=name, help="(answered by every worker)", handler=handler)

    def _start(self, index: int, path: str, name: str, params: Any) -> _OneCall:
        call = _OneCall(name, params, index)
        self.reactor.connectUNIX(path, _CallFactory(call), timeout=2)
        call.answered.addTimeout(CALL_TIMEOUT, self.reactor)
        return call

    def answers(self, name: str, params: Any = None) -> defer.Deferred:
        """Each running worker's answer: a list of (index, answer), or (index, Failure)
        for a worker that refused or did not answer, in worker order."""
        calls = [self._start(i, path, name, params if params is not None else [])
                 for i, path in self.paths()]
        d = defer.DeferredList([c.answered for c in calls], consumeErrors=True)
        d.addCallback(lambda outcomes: [(c.index, value)
                                        for c, (_ok, value) in zip(calls, outcomes, strict=True)])
        d.addBoth(lambda outcome: (self._close(calls), outcome)[1])
        return d

    def call(self, name: str, params: Any) -> defer.Deferred:
        """One answer for the service: the workers' answers merged by ``rules``."""
        rule = rule_for(name)
        if name in STREAMING:
            return self._subscribe(name, params, rule)
        if not self.paths():
            return defer.fail(RpcError("no worker is running", code=codec.INTERNAL_ERROR))
        return self.answers(name, params).addCallback(lambda got: merged(rule, got))

    def _subscribe(self, name: str, params: Any, rule: Rule) -> defer.Deferred:
        calls = [self._start(i, path, name, params) for i, path in self.paths()]
        if not calls:
            return defer.fail(RpcError("no worker is running", code=codec.INTERNAL_ERROR))
        sub = _Subscription(name, params, calls)
        d = defer.DeferredList([c.answered for c in calls], consumeErrors=True)
        d.addCallback(lambda outcomes: merged(rule, [
            (c.index, value) for c, (_ok, value) in zip(calls, outcomes, strict=True)]))
        d.addCallback(lambda first: self._stream(first, sub))
        d.addErrback(lambda f: (self._close(calls), f)[1])
        return d

    def _stream(self, first: Any, sub: _Subscription) -> Stream:
        def start(emit: Emit) -> None:
            sub.emit = emit
            for c in sub.calls:
                c.notify = emit
            self.subscriptions.append(sub)

        def stop() -> None:
            if sub in self.subscriptions:
                self.subscriptions.remove(sub)
            self._close(sub.calls)

        return Stream(first, start, stop)

    def worker_started(self, index: int, path: str) -> None:
        """A worker (re)started: the streams that run get its messages too."""
        for sub in self.subscriptions:
            sub.calls = [c for c in sub.calls if c.index != index]
            call = self._start(index, path, sub.name, sub.params)
            call.notify = sub.emit
            call.answered.addErrback(self._not_joined, index, sub.name)
            sub.calls.append(call)

    @staticmethod
    def _not_joined(failure: Failure, index: int, name: str) -> None:
        log.warn("worker {i} did not join a {m} stream: {why}", i=index, m=name,
                 why=failure.getErrorMessage())

    @staticmethod
    def _close(calls: list[_OneCall]) -> None:
        for c in calls:
            if c.transport is not None:
                c.transport.loseConnection()


def merged(rule: Rule, outcomes: list[tuple[int, Any]]) -> Any:
    """The workers' outcomes (answers or Failures) as one answer, or the RpcError to give:
    with ``EVERY`` any refusal is the answer, else only when no worker answered."""
    answers = [(i, v) for i, v in outcomes if not isinstance(v, Failure)]
    refusals = [(i, v) for i, v in outcomes if isinstance(v, Failure)]
    if answers and not (rule.reach == EVERY and refusals):
        return rule.merge(answers)
    index, failure = refusals[0]
    error = failure.value
    prefix = f"worker {index}: " if answers else ""
    if isinstance(error, WorkerCallFailed):
        raise RpcError(prefix + error.message, code=error.code)
    raise RpcError(f"worker {index} did not answer: {failure.getErrorMessage()}",
                   code=codec.INTERNAL_ERROR)
