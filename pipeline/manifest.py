"""The output directory's ``manifest.json``: what each stage consumed and produced, and a lock.

A stage's key (:class:`StageKey`) is everything its output depends on: the contents of its
input files (evaluation and calibration images included, hashed by content), its settings, a
fingerprint of the project code it runs (``common.fingerprint.code_fingerprint``) and the
versions of the tools that shape its output. A stage whose key and outputs are unchanged is
skipped; otherwise :meth:`Manifest.rerun_reason` says why it runs again ("pipeline/export.py
changed", "1 evaluation image changed", "onnxruntime 1.31.1 -> 1.32.0").

A stage is recorded only after its outputs are completely written, so an interrupted or
failed stage is never marked done. ``OutputLock`` keeps two runs out of one directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import S2MLPv2Error
from common.fileio import atomic_write_json, sha256_file
from engines.package import MANIFEST_FILE

__all__ = ["Manifest", "OutputLock", "LockedError", "StageKey", "StageRecord"]

StageRecord = dict[str, Any]
MANIFEST_FORMAT = "s2mlpv2-manifest/2"


class LockedError(S2MLPv2Error, RuntimeError):
    """Another run holds the output directory."""


class OutputLock:
    """An exclusive, non-blocking lock on ``DIR/.lock`` (released when the process ends, even on a crash)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"{self.path.parent} is being written by another build (pid {holder}); wait for it to finish or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class StageKey:
    """What a stage's output depends on. An input is a content hash, or ``{file: hash}`` for a set of files."""

    inputs: dict[str, Any]
    settings: dict[str, Any]
    code: dict[str, str] = field(default_factory=dict)  # project source file -> sha256
    tools: dict[str, str] = field(default_factory=dict)  # tool -> version

    def to_record(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "settings": self.settings, "code": self.code, "tools": self.tools}


def _count(n: int, noun: str) -> str:
    singular = noun[:-1] if n == 1 and noun.endswith("s") else noun
    return f"{n} {singular}"


def _input_changes(name: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):  # a set of files: say how many changed
        changed = sum(1 for k in new if k in old and old[k] != new[k])
        added, removed = len(new.keys() - old.keys()), len(old.keys() - new.keys())
        parts = [f"{_count(n, name)} {what}" for n, what in ((changed, "changed"), (added, "added"), (removed, "removed")) if n]
        return parts
    return [f"{name} changed"] if old != new else []


def _setting_changes(name: str, old: Any, new: Any) -> list[str]:
    """The leaves of a setting that differ, each as ``path old -> new`` (``gates.labeled[0].threshold 1.0 -> 0.98``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in dict.fromkeys([*old, *new]) for c in _setting_changes(f"{name}.{k}", old.get(k), new.get(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in _setting_changes(f"{name}[{i}]", a, b)]
    return [f"{name} {old!r} -> {new!r}"] if old != new else []


def _listed(items: list[str], most: int = 3) -> list[str]:
    return items[:most] + ([f"{len(items) - most} more"] if len(items) > most else [])


class Manifest:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST_FILE
        self.stages: dict[str, StageRecord] = {}
        self._first_reason = "not run before"
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}  # an unreadable manifest means every stage runs again
            if data.get("format") == MANIFEST_FORMAT:
                self.stages = data.get("stages", {})
            else:
                self._first_reason = "manifest.json is unreadable or from an older version of this project"

    @staticmethod
    def hashes(paths: dict[str, Path | None]) -> dict[str, str | None]:
        return {name: (sha256_file(p) if p is not None and Path(p).is_file() else None) for name, p in paths.items()}

    def rerun_reason(self, stage: str, key: StageKey) -> str | None:
        """Why ``stage`` must run again (one line), or None when its record matches ``key`` and its outputs are intact."""
        record = self.stages.get(stage)
        if not record:
            return self._first_reason
        reasons: list[str] = []
        old_inputs = record.get("inputs", {})
        for name in dict.fromkeys([*old_inputs, *key.inputs]):
            reasons += _input_changes(name, old_inputs.get(name), key.inputs.get(name))
        old_settings = record.get("settings", {})
        reasons += _listed(
            [
                change
                for name in dict.fromkeys([*old_settings, *key.settings])
                for change in _setting_changes(name, old_settings.get(name), key.settings.get(name))
            ]
        )
        old_code = record.get("code", {})
        reasons += _listed(
            [f"{path} changed" for path in sorted(key.code.keys() | old_code.keys()) if old_code.get(path) != key.code.get(path)]
        )
        old_tools = record.get("tools", {})
        reasons += [
            f"{tool} {old_tools.get(tool, 'absent')} -> {key.tools.get(tool, 'absent')}"
            for tool in dict.fromkeys([*old_tools, *key.tools])
            if old_tools.get(tool) != key.tools.get(tool)
        ]
        if not reasons:
            for name, digest in record.get("outputs", {}).items():
                path = self.directory / name
                if not path.is_file() or sha256_file(path) != digest:
                    reasons.append(f"{name} was changed or removed")
        return "; ".join(reasons) or None

    def record(self, stage: str, key: StageKey, outputs: list[str], seconds: float, extra: dict[str, Any] | None = None) -> None:
        self.stages[stage] = {
            **key.to_record(),
            "outputs": {name: sha256_file(self.directory / name) for name in outputs},
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            **(extra or {}),
        }
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path, {"format": MANIFEST_FORMAT, "stages": self.stages})

    def run(
        self,
        stage: str,
        key: StageKey,
        work: Callable[[], tuple[list[str], dict[str, Any] | None]],
        force: bool = False,
        starting: Callable[[str], None] | None = None,
    ) -> tuple[StageRecord, str | None]:
        """Run ``work`` unless the stage is current; returns (record, why it ran: None when it was skipped).

        ``starting(reason)`` is called before ``work`` runs.
        """
        reason = "--force" if force else self.rerun_reason(stage, key)
        if reason is None:
            return self.stages[stage], None
        if starting is not None:
            starting(reason)
        if self.stages.pop(stage, None) is not None:
            self._save()  # not done until it finishes again, on disk too
        t0 = time.perf_counter()
        outputs, extra = work()
        self.record(stage, key, outputs, time.perf_counter() - t0, extra)
        return self.stages[stage], reason
