#!/usr/bin/env python3
"""CPU time per call of the route script itself: no sockets, no other processes.

The whole proxy as ``sipgw serve`` assembles it (auth over an in-memory store, dispatcher,
dialogs, NAT detection; ``sipgw.tools.fuzzproxy``) is fed the datagrams of SIPp's bench
call (bench/scenarios/uac.xml and uas.xml: INVITE, 100, 180, 200, ACK, BYE, 200) from a
trusted caller, on a fake clock. Only the time inside ``Proxy.receive`` is counted
(``time.process_time``), so the number is the proxy's own cost per call whatever else the
machine is doing; ``bench/calls.py`` adds the kernel's and Twisted's share on real sockets.

    .venv/bin/python bench/core.py                  # 20,000 calls, best of 5 rounds
    .venv/bin/python bench/core.py --profile        # and cProfile's top functions
    .venv/bin/python bench/core.py --register       # bench/register.py's digest REGISTER
    .venv/bin/python bench/core.py --auth           # the call with a 407 and digest first

Numbers go in notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipgw.proxy.runtime import gcpolicy  # noqa: E402
from sipgw.tools.fuzzproxy import FuzzProxy  # noqa: E402
from sipgw.tools.loadflows import HeapClock, one_auth_call, one_call, one_register  # noqa: E402


def run(calls: int, flow=one_call) -> float:
    """CPU seconds inside Proxy.receive for ``calls`` calls, timers run as they fall due."""
    h = FuzzProxy(clock=HeapClock())
    h.tap.inbound = None  # nobody tracing, as in production
    spent = [0.0]
    for n in range(calls):
        flow(h, n, spent)
        if n % 500 == 499:
            h.clock.advance(1.0)  # 500 calls a second: transaction timers fire in bulk
    return spent[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--register", action="store_true",
                    help="digest REGISTERs (401, then authorized; in-memory store) instead")
    ap.add_argument("--auth", action="store_true",
                    help="calls from an untrusted caller: INVITE, 407, ACK, INVITE with digest")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = ap.parse_args()
    flow, what = ((one_register, "REGISTER") if args.register else
                  (one_auth_call, "authenticated call") if args.auth else (one_call, "call"))
    run(500, flow)  # warm-up: caches, first allocations
    gcpolicy.install()  # as sipgw serve does once started
    best = min(run(args.calls, flow) for _ in range(args.rounds))
    print(f"{args.calls} {what}s: {1e6 * best / args.calls:.0f} µs of CPU per {what} in "
          f"Proxy.receive (best of {args.rounds}), i.e. {args.calls / best:.0f} {what}s/s "
          f"on one core before sockets and Twisted")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, args.calls, flow)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
