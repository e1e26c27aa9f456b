"""Check that every package imports only the packages below it: ``python -m common.check_imports``.

The layers, lowest first (``docs/ARCHITECTURE.md`` draws them):

==============  =============================================
package         may import
==============  =============================================
``common``      nothing of the project
``models``      ``common``
``calibration`` ``common``, ``models``
``engines``     ``common``, ``models``
``deployment``  ``common``, ``models``, ``calibration``, ``engines``
``pipeline``    ``common``, ``models``, ``calibration``, ``engines``, ``deployment``
==============  =============================================

``build_engine.py`` sits on top and may import everything. Lazy imports inside functions
count as much as those at the top of a module. And no two files import each other, directly or
around a longer circle (:func:`circles`). Exit status 1 and one line per offending import or
circle when the code breaks a rule.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ALLOWED", "EXCEPTIONS", "violations", "circles", "main"]

ROOT = Path(__file__).resolve().parents[1]
ALLOWED: dict[str, frozenset[str]] = {
    "common": frozenset(),
    "models": frozenset({"common"}),
    "calibration": frozenset({"common", "models"}),
    "engines": frozenset({"common", "models"}),
    "deployment": frozenset({"common", "models", "calibration", "engines"}),
    "pipeline": frozenset({"common", "models", "calibration", "engines", "deployment"}),
}
# Modules allowed to reach above their package, each named here (none today).
EXCEPTIONS: dict[str, frozenset[str]] = {}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level project package) of every import in ``path``, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            name = package if node.level else (node.module or "")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name.split(".")[0]))
            continue
        else:
            continue
        found.append((node.lineno, name.split(".")[0]))
    return [(line, top) for line, top in found if top in ALLOWED]


def violations(root: Path = ROOT) -> list[str]:
    """``path:line: package imports other`` for every import the layers forbid."""
    out = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            extra = EXCEPTIONS.get(module, frozenset())
            for line, top in _imports(path, package):
                if top != package and top not in allowed and top not in extra:
                    out.append(f"{path.relative_to(root)}:{line}: {package} imports {top}, which sits above it")
    return out


def _module_imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The project modules (files) that ``path`` imports, lazily or not; ``from pkg import name`` counts the submodule
    ``pkg.name`` where one exists, else the package's ``__init__``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(filter(None, [*parts, base]))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != module}


def circles(root: Path = ROOT) -> list[str]:
    """``a -> b -> a`` for every group of project files that import each other (strongly connected, Tarjan)."""
    paths = {}
    for package in ALLOWED:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: sorted(_module_imports(p, m, set(paths))) for m, p in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(" -> ".join(sorted(group)) + " -> " + sorted(group)[0] + ": these files import each other")

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.check_imports", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the repository to check")
    args = p.parse_args(argv)
    found, loops = violations(args.root), circles(args.root)
    for line in found + loops:
        print(line)
    print(f"{len(found)} forbidden imports" if found else "imports follow the layers")
    print(f"{len(loops)} import circles" if loops else "no two files import each other")
    return 1 if found or loops else 0


if __name__ == "__main__":
    sys.exit(main())
