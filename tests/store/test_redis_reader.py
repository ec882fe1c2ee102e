"""The Redis store's replies are read in one go, whatever their size.

txredisapi's pure-Python reader pauses the connection after every element of a multi-bulk
reply and resumes it from a ``callLater(0)``: an ``HGETALL`` of a subscriber (ten
elements) costs ten reactor turns and twenty ``epoll_ctl`` calls, which was a fifth of
sipgw's CPU per authenticated REGISTER (bench/register.py: 0.70 → 0.55-0.58 ms). With
``hiredis`` installed (a dependency in pyproject.toml) txredisapi uses its C reader, which
hands the whole reply over as soon as its bytes are read.
"""

from __future__ import annotations

import txredisapi


class Recorder(txredisapi.RedisFactory.protocol):  # the protocol the store's factory builds
    def __init__(self) -> None:
        super().__init__(charset="utf-8", convertNumbers=False)
        self.replies: list = []

    def replyReceived(self, reply) -> None:
        self.replies.append(reply)


def test_an_hgetall_reply_is_complete_as_soon_as_its_bytes_are_read():
    fields = ["username", "5001", "domain", "sipgw.test", "ha1", "0" * 32]
    data = f"*{len(fields)}\r\n".encode() + b"".join(
        f"${len(f)}\r\n{f}\r\n".encode() for f in fields)
    proto = Recorder()
    # No transport and no reactor turn: a reader that paused between elements would
    # need both to go on.
    proto.dataReceived(data[:7])
    proto.dataReceived(data[7:])
    assert proto.replies == [fields]
