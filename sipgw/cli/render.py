"""Any RPC result as rich tables and trees, without knowing the method.

The shapes met in practice, and how they print:

* ``None``: nothing; a scalar: itself;
* a list of scalars (``stats.get_statistics`` lines): one per line;
* a list of flat objects (rows): a table, one column per key; when that is wider than the
  terminal, one block of key and value lines per object;
* a flat object: a two-column table, key and value;
* scalars beside lists of flat objects (``pike.top``): the scalars as key and value, then
  each list as a table titled by its key;
* anything nested (``dispatcher.list``): a tree, flat objects inside it as ``KEY: value``.

Every string goes in as ``Text``: user data (URIs, header values) never parses as markup.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

SCALARS = (str, int, float, bool, type(None))


def scalar_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _flat(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, SCALARS) for v in value.values())


def renderable(result: Any, title: str | None = None) -> RenderableType | None:
    if result is None:
        return None
    if isinstance(result, SCALARS):
        return Text(scalar_text(result))
    if isinstance(result, list):
        if all(isinstance(v, SCALARS) for v in result):
            return Text("\n".join(scalar_text(v) for v in result))
        if all(_flat(v) for v in result):
            return rows_table(result, title)
    if _flat(result):
        return pairs_table(result, title)
    if _summary_and_rows(result):
        # Kamailio's {"max_hits": 30, "list": [{...}, ...], "number_of_rows": 1} (pike.top):
        # the scalars as pairs, each list of records as a table under its name.
        scalars = {k: v for k, v in result.items() if isinstance(v, SCALARS)}
        parts: list[RenderableType] = [pairs_table(scalars, title)] if scalars else []
        parts += [rows_table(v, title=str(k)) for k, v in result.items() if isinstance(v, list)]
        return Group(*parts)
    tree = Tree(Text(title or ""), hide_root=title is None, guide_style="dim")
    _grow(tree, result)
    return tree


def _summary_and_rows(value: Any) -> bool:
    """An object of scalars and non-empty lists of flat objects, at least one such list."""
    if not isinstance(value, dict):
        return False
    lists = [v for v in value.values() if isinstance(v, list)]
    return bool(lists) and all(v and all(_flat(r) for r in v) for v in lists) and all(
        isinstance(v, SCALARS) or isinstance(v, list) for v in value.values())


def rows_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    table = Table(title=title, box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(Text(str(column)))
    for row in rows:
        table.add_row(*[Text(scalar_text(row.get(c))) for c in columns])
    return table


def pairs_table(pairs: dict[str, Any], title: str | None = None) -> Table:
    table = Table(title=title, box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs.items():
        table.add_row(Text(str(key)), Text(scalar_text(value)))
    return table


def _grow(node: Tree, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, SCALARS):
                node.add(Text(f"{key}: {scalar_text(item)}"))
            elif isinstance(item, (dict, list)) and not item:
                node.add(Text(f"{key}: {json.dumps(item)}"))
            else:
                _grow(node.add(Text(str(key))), item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, SCALARS):
                node.add(Text(scalar_text(item)))
            elif isinstance(item, dict) and len(item) == 1 and not _flat(item):
                # Kamailio wraps records as {"SET": {...}} / {"DEST": {...}}: one level.
                (key, inner), = item.items()
                _grow(node.add(Text(str(key))), inner)
            else:
                _grow(node.add(Text(f"[{index}]")), item)
    else:
        node.add(Text(scalar_text(value)))


def _natural_width(rows: list[dict[str, Any]]) -> int:
    """The width a rows table needs without cutting anything: widest cell per column, plus
    the one-space padding either side of each column."""
    widths: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            widths[key] = max(widths.get(key, len(str(key))), len(scalar_text(value)))
    return sum(widths.values()) + 2 * max(len(widths) - 1, 0)


def show(console: Console, result: Any, title: str | None = None) -> None:
    thing = renderable(result, title)
    if thing is None:
        return
    if isinstance(thing, Table) and thing.show_header and isinstance(result, list):
        if _natural_width(result) > console.width:
            # Too wide to read as rows (dlg.list): one block of "key value" per record.
            for index, row in enumerate(result):
                if index:
                    console.print()
                console.print(pairs_table(row))
            return
    console.print(thing)


def print_json(console: Console, result: Any) -> None:
    """The result unchanged, as JSON (STYLE.md habit 10)."""
    console.out(json.dumps(result, indent=2, ensure_ascii=False), highlight=False)
