"""The service's one control socket, answering for every worker.

The supervisor serves ``sipgw ctl`` on ``control.socket``; each worker serves its own
methods on a socket beside it (``control.sock.wN``, ``sipgw ctl -s`` reaches one worker
there). A call the supervisor does not answer itself goes to every running worker over a
connection of its own, and the answers are merged (``merge``): numbers summed, lists
joined, tables merged key by key, the same answer from all given once. A call that
fails in every worker fails with the first worker's error; one that some answer (``ws.close
ID``: the worker holding that connection) succeeds with theirs. A streaming method
(``trace.subscribe``) keeps its connections open and forwards every worker's
notifications until the client goes away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from sipgw.proxy.control import MAX_LINE
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
                self.notify(message.get("method", ""), message.get("params"))
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


def merge(results: list[Any]) -> Any:
    """One answer from the workers' answers (see the module's docstring)."""
    if not results:
        return None
    if all(isinstance(r, bool) for r in results):
        return results[0] if all(r == results[0] for r in results) else any(results)
    if all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in results):
        return sum(results)
    if all(isinstance(r, list) for r in results):
        return [item for r in results for item in r]
    if all(isinstance(r, dict) for r in results):
        keys = dict.fromkeys(k for r in results for k in r)
        return {k: merge([r[k] for r in results if k in r]) for k in keys}
    if all(r == results[0] for r in results):
        return results[0]
    return results


class FanOut:
    """Calls to every running worker's control socket, merged."""

    def __init__(self, reactor, paths: Callable[[], list[tuple[int, str]]]) -> None:
        self.reactor = reactor
        self.paths = paths  # (index, socket path) of each worker that is running

    def method(self, name: str) -> RpcMethod:
        def handler(*args, **kwargs):
            params: Any = list(args) if args or not kwargs else kwargs
            return self.call(name, params)

        return RpcMethod(name=name, help="(answered by every worker)", handler=handler)

    def _start(self, name: str, params: Any) -> list[_OneCall]:
        calls = []
        for index, path in self.paths():
            call = _OneCall(name, params, index)
            self.reactor.connectUNIX(path, _CallFactory(call), timeout=2)
            call.answered.addTimeout(CALL_TIMEOUT, self.reactor)
            calls.append(call)
        return calls

    def call(self, name: str, params: Any) -> defer.Deferred:
        calls = self._start(name, params)
        if not calls:
            return defer.fail(RpcError("no worker is running", code=codec.INTERNAL_ERROR))
        d = defer.DeferredList([c.answered for c in calls], consumeErrors=True)
        d.addCallback(self._merged)
        if name in STREAMING:
            d.addCallback(lambda first: self._stream(first, calls))
        else:
            d.addBoth(lambda outcome: (self._close(calls), outcome)[1])
        return d

    @staticmethod
    def _merged(outcomes: list[tuple[bool, Any]]) -> Any:
        answers = [value for ok, value in outcomes if ok]
        if answers:
            return merge(answers)
        failure = outcomes[0][1]
        error = failure.value
        if isinstance(error, WorkerCallFailed):
            raise RpcError(error.message, code=error.code)
        raise RpcError(f"workers did not answer: {failure.getErrorMessage()}",
                       code=codec.INTERNAL_ERROR)

    def _stream(self, first: Any, calls: list[_OneCall]) -> Stream:
        def start(emit: Emit) -> None:
            for c in calls:
                c.notify = emit

        return Stream(first, start, lambda: self._close(calls))

    @staticmethod
    def _close(calls: list[_OneCall]) -> None:
        for c in calls:
            if c.transport is not None:
                c.transport.loseConnection()
