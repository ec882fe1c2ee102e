#!/usr/bin/env python3
"""Authenticated calls/s through sipgw, and through Kamailio 5.6 as the same gateway.

SIPp UAC → the server (UDP) → SIPp UAS as the backend: INVITE, 407, ACK, INVITE with
digest, 100, 180, 200, ACK, BYE, 200; the subscribers in a real Redis (the same records
for both servers), the INVITE record-routed so that ACK and BYE come through the server.
Each step runs at a fixed rate for a fixed time (bench/sipprate.py); the result is the
highest rate with under 0.5 % failed calls, the server's CPU-s per 1,000 calls summed over
all its processes, and the Redis commands per call. By default the rates are a search:
500/s, ×1.25 until a step is not sustained, then two halvings of the gap (``--start``,
``--growth``, ``--refine``); a step SIPp itself could not drive is said so, and is no
limit of the server's.

    .venv/bin/python bench/calls.py                       # the search, 10 s steps
    .venv/bin/python bench/calls.py --rates 800,1000,1200 --seconds 15
    .venv/bin/python bench/calls.py --target both --rates 800,1200 --seconds 8
    .venv/bin/python bench/calls.py --no-auth             # INVITE→200→ACK→BYE, trusted
    .venv/bin/python bench/calls.py --profile prof.out    # cProfile of sipgw, for the note

``--target kamailio`` runs Debian's Kamailio configured as the same gateway
(bench/kamailio/udp-gateway.cfg, 4 UDP + 4 TCP workers, db_redis); ``--target both``
interleaves the runs (sipgw, kamailio, sipgw, kamailio...) and ends with a table.
``--no-auth`` is the relaying bench of the earlier measurements: the caller trusted (no
digest), bench/scenarios/uac.xml and uas.xml (no 180). ``--workers N`` is passed to
``sipgw serve`` (else its ``proxy.workers``: one per CPU); ``--profile`` runs one.

Everything listens on 127.0.0.1 and every process is stopped at the end. Numbers go in
notes, not in test asserts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sipprate

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def scenario(args: argparse.Namespace, inf: Path) -> sipprate.Scenario:
    if args.no_auth:
        return sipprate.Scenario("call", SCENARIOS / "uac.xml", SCENARIOS / "uas.xml")
    return sipprate.Scenario("call", SCENARIOS / "uac_auth.xml", SCENARIOS / "uas_ringing.xml",
                             ("-inf", str(inf)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sipprate.add_arguments(ap, start=500, grain=50, max_rate=8000)
    sipprate.main(ap, scenario)


if __name__ == "__main__":
    main()
