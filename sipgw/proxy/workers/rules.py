"""How the workers' answers to one RPC call become the service's one answer.

Every worker holds its own share of the service (its transactions, connections, dialogs,
counters) and the same copy of what they share (the config, the dispatcher's destinations,
bans and pike's blocks once they are replicated). So each method says how its answers
combine (``RULES``, one line per method):

* counters are summed; a gauge that is a level of the whole service (transactions in use)
  summed too; one each worker holds a copy of (blocked addresses, active destinations) or
  one that is a worker's own condition (the ``load:`` delays) is the largest;
* lists are joined, each entry given its ``worker`` when the operator needs to know
  where it lives (a dialog, a WebSocket connection); copies of shared entries (a ban, a
  destination) are shown once;
* what every worker answers the same (the config, the certificate) is given once;
* a command either must reach every worker (``EVERY``: ``log.level``, the dispatcher's
  ``reload`` and ``set_state``), or is for the one worker concerned (``ws.close ID``,
  ``pike.unblock``: the others refuse, and that is not an error).

A method without a rule (a new one not yet listed) gets ``agreed``: one answer when they
are all the same, else each worker's, labelled. It never adds up what should not be.
The supervisor answers some methods itself (``control.py``): ``core.workers``,
``core.uptime`` and ``core.version`` of the service, ``cfg.reload``, ``system.*``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipgw.proxy.pike import TOP_ROWS

Answers = list[tuple[int, Any]]  # (worker index, its answer), in worker order
Merge = Callable[[Answers], Any]

SOME = "some"  # a question, or a command for the worker concerned: whoever answers counts
EVERY = "every"  # a command for all: any worker's refusal is the answer


@dataclass(frozen=True, slots=True)
class Rule:
    merge: Merge
    reach: str = SOME


# -- the building blocks ---------------------------------------------------------------


def first(answers: Answers) -> Any:
    """What every worker answers alike: the first worker's answer."""
    return answers[0][1]


def each(answers: Answers) -> list[dict[str, Any]]:
    """Each worker's answer, labelled."""
    return [{"worker": i, "result": value} for i, value in answers]


def agreed(answers: Answers) -> Any:
    """One answer when all are equal, else each worker's (the safe default)."""
    values = [value for _, value in answers]
    return values[0] if all(v == values[0] for v in values) else each(answers)


def _add(values: list[Any]) -> Any:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, dict) for v in values):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: _add([v[k] for v in values if k in v]) for k in keys}
    return values[0]


def summed(answers: Answers) -> Any:
    """Numbers added, tables of numbers key by key (counters, sizes)."""
    return _add([value for _, value in answers])


def largest(answers: Answers) -> Any:
    numbers = [v for _, v in answers if isinstance(v, (int, float))]
    return max(numbers) if numbers else first(answers)


def union(answers: Answers) -> list[Any]:
    """Lists joined without repeats, in worker order."""
    out: list[Any] = []
    for _, value in answers:
        out += [item for item in value if item not in out]
    return out


def labelled(answers: Answers) -> list[Any]:
    """Lists joined, each entry given the ``worker`` that holds it."""
    return [{**item, "worker": i} if isinstance(item, dict) else item
            for i, value in answers for item in value]


def fields(**rules: Merge) -> Merge:
    """A table: each field by its rule (``first`` for the others)."""

    def merge(answers: Answers) -> dict[str, Any]:
        tables = [(i, v) for i, v in answers if isinstance(v, dict)]
        if not tables:
            return first(answers)
        keys = dict.fromkeys(k for _, v in tables for k in v)
        return {k: rules.get(k, first)([(i, v[k]) for i, v in tables if k in v])
                for k in keys}

    return merge


# -- statistics --------------------------------------------------------------------------

# Statistics that are not added up over workers but the largest taken: each worker holds
# a copy (blocked addresses, active destinations), or it is one worker's condition (how
# late its reactor runs, the share of new requests it refuses: the worst worker's). A
# name matches exactly or, ending in ":", by group.
LARGEST_STATS = ("load:", "pike:blocked_ips", "dispatcher:active_destinations",
                 "core:shed_percent", "core:shed_dropping")


def _canonical(name: str) -> str:
    """``stats.fetch`` writes ``group.name``, the rest ``group:name``."""
    return name if ":" in name else name.replace(".", ":", 1)


def stat_is_largest(name: str) -> bool:
    full = _canonical(name)
    return any(full.startswith(p) if p.endswith(":") else full == p for p in LARGEST_STATS)


def statistics(answers: Answers) -> dict[str, Any]:
    """``{name: value}`` tables of each worker → the service's (``stats.fetch``)."""
    out: dict[str, Any] = {}
    for _, table in answers:
        for name, value in table.items():
            if name not in out:
                out[name] = value
            elif stat_is_largest(name):
                out[name] = max(out[name], value)
            else:
                out[name] += value
    return out


def statistic_lines(answers: Answers) -> list[str]:
    """Kamailio's ``group:name = value`` lines (``stats.get_statistics``), merged."""
    tables = []
    for i, lines in answers:
        table = {}
        for line in lines:
            name, _, value = line.partition(" = ")
            table[name] = int(value)
        tables.append((i, table))
    return [f"{name} = {value}" for name, value in statistics(tables).items()]


# -- one method each ---------------------------------------------------------------------


def destinations(answers: Answers) -> Any:
    """``dispatcher.list``: the workers hold the same destinations, shown once; each
    destination's request counters summed, its probe latency from the worker that probes
    (the largest: the others measured nothing)."""
    listing = answers[0][1]
    seen: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for _, other in answers:
        for record in other.get("RECORDS", []):
            s = record["SET"]
            for target in s.get("TARGETS", []):
                dest = target["DEST"]
                seen.setdefault((s["ID"], dest["URI"]), []).append(dest)
    records = []
    for record in listing.get("RECORDS", []):
        s = record["SET"]
        targets = []
        for target in s.get("TARGETS", []):
            copies = seen[(s["ID"], target["DEST"]["URI"])]
            dest = dict(target["DEST"])
            if "STATS" in dest:
                dest["STATS"] = summed([(0, d["STATS"]) for d in copies if "STATS" in d])
            if "LATENCY" in dest:
                dest["LATENCY"] = fields(**dict.fromkeys(dest["LATENCY"], largest))(
                    [(0, d["LATENCY"]) for d in copies if "LATENCY" in d])
            targets.append({"DEST": dest})
        records.append({"SET": {**s, "TARGETS": targets}})
    return {**listing, "RECORDS": records}


def bans(answers: Answers) -> dict[str, Any]:
    """``auth.bans``: a ban every worker holds a copy of is listed once, with the longest
    time left."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for _, value in answers:
        for ban in value.get("BANS", []):
            key = (ban["TYPE"], ban["NAME"])
            if key not in out or ban["EXPIRES"] > out[key]["EXPIRES"]:
                out[key] = ban
    return {"BANS": list(out.values())}


_HEAT = {"HOT": 2, "WARM": 1, "": 0}


def pike_rows(answers: Answers) -> dict[str, Any]:
    """``pike.top``: one row per address, its hits in each worker added (each worker
    counts what it received), the hottest status and the longest expiry."""
    rows: dict[str, dict[str, Any]] = {}
    for _, value in answers:
        for row in value.get("list", []):
            have = rows.get(row["ip_addr"])
            if have is None:
                rows[row["ip_addr"]] = dict(row)
                continue
            have["leaf_hits_prev"] += row["leaf_hits_prev"]
            have["leaf_hits_curr"] += row["leaf_hits_curr"]
            have["expires"] = max(have["expires"], row["expires"])
            if _HEAT.get(row["status"], 0) > _HEAT.get(have["status"], 0):
                have["status"] = row["status"]
    listed = sorted(rows.values(), key=lambda r: r["leaf_hits_prev"] + r["leaf_hits_curr"],
                    reverse=True)[:TOP_ROWS]
    return {**answers[0][1], "list": listed, "number_of_rows": len(listed)}


_MEMORY_TOTALS = ("rss_kb", "peak_rss_kb", "python_blocks")


def memory(answers: Answers) -> dict[str, Any]:
    """``core.memory``: the sizes summed over the workers, and each worker's answer."""
    out: dict[str, Any] = {}
    for key in _MEMORY_TOTALS:
        values = [v.get(key) for _, v in answers]
        out[key] = None if None in values else sum(values)
    out["workers"] = [{"worker": i, **v} for i, v in answers]
    return out


RULES: dict[str, Rule] = {
    # The supervisor puts its pid and socket in; toward_backends: each worker's own address.
    "core.info": Rule(fields(listen=union, toward_backends=union)),
    "core.memory": Rule(memory),
    "core.connections": Rule(fields(connections=summed, total=summed)),
    "core.printi": Rule(first),
    "cfg.get": Rule(first),
    "log.level": Rule(agreed, EVERY),
    "mod.stats": Rule(summed),
    "stats.get_statistics": Rule(statistic_lines),
    "stats.fetch": Rule(statistics),
    "stats.describe": Rule(fields()),
    "stats.reset_statistics": Rule(first, EVERY),
    "trace.subscribe": Rule(first, EVERY),  # a trace missing a worker's messages is wrong
    "dlg.list": Rule(labelled),
    "dlg.stats_active": Rule(summed),
    "dispatcher.list": Rule(destinations),
    "dispatcher.reload": Rule(first, EVERY),
    "dispatcher.set_state": Rule(first, EVERY),
    "auth.bans": Rule(bans),
    "auth.unban": Rule(fields(REMOVED=largest), EVERY),  # bans are copies: not summed
    "pike.top": Rule(pike_rows),
    "pike.list": Rule(pike_rows),
    "pike.unblock": Rule(largest),  # blocks are copies; a worker not blocking it refuses
    "ws.dump": Rule(fields(connections=labelled, info=summed)),
    "ws.close": Rule(first),  # the worker holding the connection answers, the others refuse
    "tls.info": Rule(first),
    "system.listMethods": Rule(union),
    "system.methodHelp": Rule(first),
}

DEFAULT = Rule(agreed)


def rule_for(method: str) -> Rule:
    return RULES.get(method, DEFAULT)
