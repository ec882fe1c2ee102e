"""``bench/`` depends on ``sipgw`` only: what it shares with the tests is a public tool in
``sipgw.tools`` (the in-process harness, the load flows, the process runners), so that a
change to the tests cannot break a benchmark, nor a benchmark hold a test helper in place."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute import of a file, anywhere in it (a function's too): (line, module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_bench_scripts_import_nothing_from_tests() -> None:
    scripts = sorted(BENCH.glob("*.py"))
    imports = {path.name: imported_modules(path) for path in scripts}
    # The scan sees the benchmarks and what they take from sipgw (not an empty folder).
    assert {"core.py", "wscore.py", "fuzz.py", "ws.py"} <= set(imports)
    assert any(module.startswith("sipgw.tools.") for found in imports.values()
               for _, module in found)
    from_tests = [f"bench/{name}:{line}: {module}" for name, found in imports.items()
                  for line, module in found if module.split(".")[0] == "tests"]
    assert from_tests == [], "bench/ imports from tests/:\n" + "\n".join(from_tests)
