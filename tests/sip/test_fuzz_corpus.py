"""The fuzzer's contract on its crash corpus and on a bounded run with a fixed seed.

Contract (``sipgw.tools.fuzz.exercise``): ``parse_message`` returns a message or raises
``ParseError``, as a datagram and as a stream cut anywhere; for a message that parses, every
accessor the proxy uses works or raises ``ParseError``, and what is accepted serialises to
bytes accepted again unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipgw.tools.fuzz import BUILTIN_SEEDS, Mutator, exercise, load_seeds, run_parser
from tests.helpers.torture import TORTURE_DIR

CORPUS = Path(__file__).resolve().parent.parent / "data" / "fuzz-corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.sip"))


def test_every_corpus_file_has_a_manifest_line_and_every_line_a_file() -> None:
    manifest = (CORPUS / "MANIFEST.md").read_text()
    listed = {line.split("`")[1] for line in manifest.splitlines() if line.startswith("| `")}
    assert listed == {p.name for p in CORPUS_FILES}


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_corpus_input_is_parsed_or_refused_and_its_accessors_hold(path: Path) -> None:
    data = path.read_bytes()
    for cut in (0, 1, len(data) // 3, len(data) - 1):
        exercise(data, cut=cut)


@pytest.mark.parametrize("name", sorted(BUILTIN_SEEDS))
def test_builtin_seed_messages_are_well_formed(name: str) -> None:
    # Mutations of a message the parser already refuses, or reads only in part, would test
    # much less: each seed is read whole, as what its name says, with what a proxy routes on.
    from sipgw.sip.message import Request
    from sipgw.sip.parser import parse_message

    seed = BUILTIN_SEEDS[name]
    msg = parse_message(seed, datagram=False)
    assert msg.to_bytes() == seed
    kind = msg.method if isinstance(msg, Request) else str(msg.status)
    assert name.endswith("-" + kind.lower()), (name, kind)
    assert msg.call_id and msg.from_tag and (msg.top_via.branch or "").startswith("z9hG4bK")
    if isinstance(msg, Request):
        assert msg.cseq[1] == msg.method


def test_the_same_seed_and_index_give_the_same_mutation() -> None:
    a, b = Mutator(load_seeds(), 42), Mutator(load_seeds(), 42)
    assert [a.mutate(i) for i in range(50)] == [b.mutate(i) for i in range(50)]
    assert len({a.mutate(i) for i in range(50)}) > 45


def test_twenty_thousand_mutations_keep_the_parser_contract() -> None:
    mutator = Mutator(load_seeds([TORTURE_DIR]), seed=20261126)
    report = run_parser(mutator, 20_000)
    assert report.crashes == {}, report.text()
    # Both outcomes are reached: the mutations are neither all fatal nor all harmless.
    assert 0.1 < report.parsed / report.count < 0.9, report.text()


def test_thousands_of_unique_long_header_names_are_not_kept_in_memory() -> None:
    # Found by the fuzz run's RSS: the name caches were bounded in count, not in bytes, and
    # kept 2,048 + 4,096 names of up to 64 kB for good (a 100,000-message run: +47 MB).
    import gc
    import tracemalloc

    from sipgw.sip.parser import parse_message

    head = BUILTIN_SEEDS["sipp-bye"].split(b"\r\n\r\n")[0]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3_000):
            name = b"X-%05d-" % i + b"n" * 10_000
            parse_message(head + b"\r\n" + name + b": v\r\n\r\n")
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2_000_000, f"{kept} bytes kept after 3,000 messages"
