#!/usr/bin/env python3
"""Authenticated REGISTER/s through sipgw, and through Kamailio 5.6 as the same gateway.

SIPp UAC (REGISTER → 401 → REGISTER with digest → 200) → the server (UDP) → SIPp UAS
answering REGISTER (the registrar is the backend), the subscribers in a real Redis (the
same records for both servers, written by ``sipgw users import``). Each step runs at a
fixed rate for a fixed time (bench/sipprate.py); the result is the highest rate with under
0.5 % failed REGISTERs, the server's CPU-s per 1,000 REGISTERs summed over all its
processes, and the Redis commands per authenticated REGISTER (``INFO commandstats``). By
default the rates are a search: 1,000/s, ×1.25 until a step is not sustained, then two
halvings of the gap (``--start``, ``--growth``, ``--refine``); a step SIPp itself could not
drive is said so, and is no limit of the server's.

    .venv/bin/python bench/register.py                          # the search, 10 s steps
    .venv/bin/python bench/register.py --rates 1000,1200 --seconds 15
    .venv/bin/python bench/register.py --target both --rates 800,1200 --seconds 8
    .venv/bin/python bench/register.py --workers 2              # sipgw serve --workers 2

``--target kamailio`` runs Debian's Kamailio configured as the same gateway
(bench/kamailio/udp-gateway.cfg, 4 UDP + 4 TCP workers, db_redis); ``--target both``
interleaves the runs (sipgw, kamailio, sipgw, kamailio...) and ends with a table.
``--no-auth`` measures relaying alone (REGISTER → 200, loopback trusted).

Everything listens on 127.0.0.1 and every process is stopped at the end. Numbers go in
notes, not in test asserts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sipprate

SCENARIOS = Path(__file__).resolve().parent.parent / "tests" / "integration" / "scenarios"


def scenario(args: argparse.Namespace, inf: Path) -> sipprate.Scenario:
    uas = SCENARIOS / "uas_register.xml"
    if args.no_auth:
        return sipprate.Scenario("REGISTER", SCENARIOS / "uac_register.xml", uas)
    return sipprate.Scenario("REGISTER", SCENARIOS / "uac_register_auth.xml", uas,
                             ("-inf", str(inf)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sipprate.add_arguments(ap, start=1000, grain=100, max_rate=16000)
    sipprate.main(ap, scenario)


if __name__ == "__main__":
    main()
