#!/usr/bin/env python3
"""The full fuzz run of issue 7: 1,000,000 mutated messages against the parser, then
100,000 against a running sipgw over UDP, TCP and WebSocket (twice by default: a second
pass of new messages that ends at the RSS of the first shows nothing accumulates).

    .venv/bin/python bench/fuzz.py                          # both, seed 1
    .venv/bin/python bench/fuzz.py --parser 0 --proxy 100000 --seed 3
    .venv/bin/python bench/fuzz.py --jobs 2                 # the parser run on 2 cores

Parser: ``sipgw.tools.fuzz`` mutations of the built-in SIPp/JsSIP messages and the RFC 4475
torture set, each checked against the contract (parsed or ParseError, every accessor the
proxy uses works or raises ParseError, as a datagram and as a stream). Inputs that break it
are written to --crash-dir, one file per kind, for tests/data/fuzz-corpus.

Proxy: a real ``sipgw serve`` set up as ``sipgw.tools.fuzzrun`` says (auth on, pike
off, a backend answering 200), with start/peak/end RSS, the log checked for tracebacks and
internal errors, ``sipgw ctl core.uptime`` asked at the end. Everything listens on
127.0.0.1 and stops by itself. Numbers go in notes, not in test asserts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipgw.tools.fuzz import Mutator, load_seeds, run_parser  # noqa: E402
from sipgw.tools.fuzzrun import fuzz_running_sipgw  # noqa: E402

TORTURE = ROOT / "tests" / "data" / "torture"  # the RFC 4475 messages, as data


def _parser_part(seed: int, start: int, count: int):
    return run_parser(Mutator(load_seeds([TORTURE]), seed), count, start=start)


def parser_run(count: int, seed: int, jobs: int, crash_dir: Path) -> int:
    t0 = time.perf_counter()
    share = -(-count // jobs)
    with ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(_parser_part, [seed] * jobs, range(0, count, share),
                              [min(share, count - s) for s in range(0, count, share)]))
    wall = time.perf_counter() - t0
    crashes = {k: c for p in parts for k, c in p.crashes.items()}
    parsed = sum(p.parsed for p in parts)
    broke = sum(p.crash_count for p in parts)
    done = sum(p.count for p in parts)
    cpu = sum(p.seconds for p in parts)
    print(f"parser: {done} mutated messages (seed {seed}) in {wall:.1f} s wall on {jobs} "
          f"process(es) ({done / wall:.0f}/s; {cpu:.1f} s of CPU, {done / cpu:.0f}/s per "
          f"core); {parsed} parsed, {done - parsed - broke} refused with a ParseError, "
          f"{broke} broke the contract ({len(crashes)} kinds)")
    if crashes:
        from sipgw.tools.fuzz import _save

        for kind, path in zip(crashes, _save(crashes.values(), crash_dir), strict=True):
            print(f"  {kind}: {path}")
    return len(crashes)


def proxy_run(count: int, seed: int, passes: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="sipgw-fuzz-") as work:
        t0 = time.monotonic()
        report = fuzz_running_sipgw(
            Path(work) / "gw", count, seeds=[TORTURE], seed=seed, passes=passes,
            progress=lambda n, mem: print(f"  ... {n} sent, RSS {mem[0]} kB", flush=True))
        print(f"proxy ({time.monotonic() - t0:.0f} s with start and stop): {report.text()}")
    return (not report.bad_log_lines and report.uptime_answer != ""
            and report.sent.probe_failures == 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parser", type=int, default=1_000_000, metavar="N")
    ap.add_argument("--proxy", type=int, default=100_000, metavar="N")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--passes", type=int, default=2,
                    help="proxy run: N times --proxy messages, RSS read after each")
    ap.add_argument("--jobs", type=int, default=1, help="processes for the parser run")
    ap.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    args = ap.parse_args()
    ok = True
    if args.parser:
        ok = parser_run(args.parser, args.seed, args.jobs, args.crash_dir) == 0
    if args.proxy:
        ok = proxy_run(args.proxy, args.seed, args.passes) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
