"""Check that every package imports only the packages below it: ``python -m common.check_imports``.

The layers, lowest first (``docs/ARCHITECTURE.md`` draws them):

==============  =============================================
package         may import
==============  =============================================
``common``      nothing of the project
``models``      ``common``
``calibration`` ``common``, ``models``
``engines``     ``common``, ``models``
``pipeline``    ``common``, ``models``, ``calibration``, ``engines``
==============  =============================================

``build_engine.py`` sits on top and may import everything. Lazy imports inside functions
count as much as those at the top of a module. Exit status 1 and one line per offending
import when the code breaks the rule.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ALLOWED", "EXCEPTIONS", "violations", "main"]

ROOT = Path(__file__).resolve().parents[1]
ALLOWED: dict[str, frozenset[str]] = {
    "common": frozenset(),
    "models": frozenset({"common"}),
    "calibration": frozenset({"common", "models"}),
    "engines": frozenset({"common", "models"}),
    "pipeline": frozenset({"common", "models", "calibration", "engines"}),
}
# Commands that check a whole path end to end, and so reach above their package; each is named here.
EXCEPTIONS: dict[str, frozenset[str]] = {
    "engines.gpu_check": frozenset({"pipeline"}),  # exports a graph and compares a plan with ONNX Runtime on a GPU
}


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.check_imports", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the repository to check")
    args = p.parse_args(argv)
    found = violations(args.root)
    for line in found:
        print(line)
    print(f"{len(found)} forbidden imports" if found else "imports follow the layers")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
