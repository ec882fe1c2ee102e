"""The channel between a worker and its supervisor, over Twisted's in-memory transports."""

from __future__ import annotations

from twisted.test import iosim

from sipgw.proxy.workers.channel import SupervisorChannel, WorkerChannel


def test_what_a_worker_publishes_before_its_channel_is_up_reaches_the_others():
    """The first probe's result comes as the worker starts, before its channel connects:
    it must still reach the other workers (a CI failover test lost it)."""
    published: list = []
    worker = WorkerChannel(index=0, pid=1, load=dict, reload=lambda text: "",
                           on_lost=lambda: None)
    supervisor = SupervisorChannel(slot="slot 0", on_ready=lambda slot, pid, advertised: None,
                                   on_publish=lambda slot, topic, data: published.append(
                                       (slot, topic, data)))
    worker.publish("dispatcher", {"kind": "unreachable", "host": "127.0.0.1", "port": 9})
    pump = iosim.connect(supervisor, iosim.makeFakeServer(supervisor),
                         worker, iosim.makeFakeClient(worker))
    worker.publish("dispatcher", {"kind": "state", "set": 1})
    pump.flush()
    assert [(slot, topic) for slot, topic, _ in published] == [("slot 0", "dispatcher")] * 2
    assert '"unreachable"' in published[0][2] and '"state"' in published[1][2]
