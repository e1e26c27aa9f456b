"""What a result depends on, as hashes: the project code a step runs, and files by content (cached).

* :func:`code_fingerprint` follows the project's own imports (lazy ones inside functions
  included) from a step's entry modules, and hashes the source of every module it reaches: an
  edit to any of them changes the fingerprint, an edit anywhere else does not.
* :class:`HashCache` hashes files by content, remembering each hash by path, size and
  modification time, so that checking 500 evaluation images again takes milliseconds.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .fileio import atomic_write_json, sha256_file

__all__ = ["ROOT", "PROJECT_PACKAGES", "project_imports", "code_fingerprint", "file_fingerprint", "HashCache"]

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("common", "models", "calibration", "engines", "pipeline")


def _module_path(module: str) -> Path | None:
    """The source file of a project module (``pipeline.export`` -> ``pipeline/export.py``), or None."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def project_imports(module: str) -> frozenset[str]:
    """The project modules ``module`` imports directly (relative imports resolved, ``from pkg import submodule`` included)."""
    path = _module_path(module)
    if path is None:
        return frozenset()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PROJECT_PACKAGES and _module_path(name) is not None:
                found.add(name)
    return frozenset(found)


def file_fingerprint(path: str | os.PathLike) -> dict[str, str]:
    """``{relative source path: sha256}`` of one project file, without what it imports."""
    path = Path(path).resolve()
    return {str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()}


def code_fingerprint(entry_modules: Iterable[str]) -> dict[str, str]:
    """``{relative source path: sha256}`` of every project module reachable from ``entry_modules``, packages' ``__init__`` included."""
    seen: set[str] = set()
    todo = list(entry_modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a module runs its packages' __init__
        todo += project_imports(module)
    paths = sorted({_module_path(m) for m in seen} - {None})
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


class HashCache:
    """SHA-256 of files by content, remembered by (path, size, mtime) in a JSON file; ``save()`` writes it back."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None
        self._entries: dict[str, list] = {}
        self._dirty = False
        if self.path and self.path.is_file():
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}  # an unreadable cache only costs hashing again

    def sha256(self, file: str | os.PathLike) -> str:
        file = Path(file)
        st = file.stat()
        key = str(file.resolve())
        entry = self._entries.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2]
        digest = sha256_file(file)
        self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def save(self) -> None:
        if self.path and self._dirty:
            atomic_write_json(self.path, self._entries)
            self._dirty = False
