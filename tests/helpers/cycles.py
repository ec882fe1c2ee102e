"""What the cyclic garbage collector would find, told as the cycles it is made of.

``garbage()`` collects with ``gc.DEBUG_SAVEALL``; ``cycles_in`` groups the unreachable
objects into strongly connected components (the cycles proper, not what merely hangs off them);
``describe`` names each kind of cycle by its object types and the attributes linking them,
which is where a fix goes.
"""

from __future__ import annotations

import gc
import sys
from collections import Counter


def garbage() -> list[object]:
    """Collect now; every object the collector found unreachable (what is in cycles and
    what only they refer to), kept alive in the list returned."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


def cycles_in(objects: list[object]) -> list[list[object]]:
    """Tarjan's strongly connected components of the reference graph among ``objects``,
    keeping those that are cycles (more than one object, or one referring to itself)."""
    by_id = {id(o): o for o in objects}
    edges = {i: [id(r) for r in gc.get_referents(o) if id(r) in by_id] for i, o in by_id.items()}
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    found: list[list[object]] = []
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(objects) + 1000))

    def visit(v: int) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1 or v in edges[v]:
                found.append([by_id[m] for m in members])

    try:
        for v in by_id:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _label(o: object) -> str:
    kind = type(o).__qualname__
    if type(o).__name__ == "frame":
        return f"frame({o.f_code.co_qualname})"  # type: ignore[attr-defined]
    func = getattr(o, "__func__", None)
    return f"{kind}({func.__qualname__})" if func is not None else kind


def _link(src: object, dst: object) -> str:
    """The attribute, key or slot of ``src`` that refers to ``dst``, as far as it shows."""
    attrs = getattr(src, "__dict__", None)
    if isinstance(attrs, dict):
        for name, value in attrs.items():
            if value is dst:
                return f".{name}"
    if isinstance(src, dict):
        for key, value in src.items():
            if value is dst:
                return f"[{key!r}]"
    if type(src).__name__ == "frame":
        for name, value in src.f_locals.items():  # type: ignore[attr-defined]
            if value is dst:
                return f" local {name}"
    for name in ("result", "tb", "__traceback__", "tb_frame", "tb_next", "f_back", "__self__"):
        try:
            if getattr(src, name, None) is dst:
                return f".{name}"
        except Exception:  # noqa: BLE001 - a property that fails says nothing either way
            pass
    return " ->"


def describe(cycles: list[list[object]]) -> str:
    """One line per kind of cycle: how many, its types, and one example's links."""
    kinds: Counter = Counter()
    example: dict[tuple, list[object]] = {}
    for members in cycles:
        key = tuple(sorted(Counter(_label(o) for o in members).items()))
        kinds[key] += 1
        example.setdefault(key, members)
    lines = []
    for key, n in kinds.most_common():
        members = example[key]
        ids = {id(o) for o in members}
        links = [f"{_label(a)}{_link(a, b)} {_label(b)}" for a in members
                 for b in gc.get_referents(a) if id(b) in ids]
        lines.append(f"{n} x [{', '.join(label for label, _ in key)}]: {'; '.join(links)}")
    return "\n".join(lines)
