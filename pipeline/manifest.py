"""The output directory's ``manifest.json``: what each stage consumed and produced, and a lock.

A stage is recorded only after its outputs are completely written, so an interrupted or
failed stage is never marked done. A stage whose inputs (by content hash), settings and
outputs are unchanged is skipped. ``OutputLock`` keeps two runs out of one directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import S2MLPv2Error
from common.fileio import atomic_write_json, sha256_file

__all__ = ["Manifest", "OutputLock", "LockedError", "StageRecord"]

StageRecord = dict[str, Any]


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


class Manifest:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "manifest.json"
        self.stages: dict[str, StageRecord] = {}
        if self.path.is_file():
            try:
                self.stages = json.loads(self.path.read_text()).get("stages", {})
            except (OSError, json.JSONDecodeError):
                self.stages = {}  # an unreadable manifest means every stage runs again

    @staticmethod
    def hashes(paths: dict[str, Path | None]) -> dict[str, str | None]:
        return {name: (sha256_file(p) if p is not None and Path(p).is_file() else None) for name, p in paths.items()}

    def is_current(self, stage: str, inputs: dict[str, str | None], settings: dict[str, Any]) -> bool:
        record = self.stages.get(stage)
        if not record or record.get("inputs") != inputs or record.get("settings") != settings:
            return False
        for name, digest in record.get("outputs", {}).items():
            path = self.directory / name
            if not path.is_file() or sha256_file(path) != digest:
                return False
        return True

    def record(
        self,
        stage: str,
        inputs: dict[str, str | None],
        settings: dict[str, Any],
        outputs: list[str],
        seconds: float,
        versions: dict[str, str],
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.stages[stage] = {
            "inputs": inputs,
            "settings": settings,
            "outputs": {name: sha256_file(self.directory / name) for name in outputs},
            "seconds": round(seconds, 2),
            "tool_versions": versions,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            **(extra or {}),
        }
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path, {"format": "s2mlpv2-manifest/1", "stages": self.stages})

    def run(
        self,
        stage: str,
        inputs: dict[str, str | None],
        settings: dict[str, Any],
        versions: dict[str, str],
        work: Callable[[], tuple[list[str], dict[str, Any] | None]],
        force: bool = False,
    ) -> tuple[StageRecord, bool]:
        """Run ``work`` unless the stage is current; returns (record, skipped)."""
        if not force and self.is_current(stage, inputs, settings):
            return self.stages[stage], True
        if self.stages.pop(stage, None) is not None:
            self._save()  # not done until it finishes again, on disk too
        t0 = time.perf_counter()
        outputs, extra = work()
        self.record(stage, inputs, settings, outputs, time.perf_counter() - t0, versions, extra)
        return self.stages[stage], False
