"""Small file helpers shared by every stage: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "atomic_path",
    "atomic_paths",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_figure",
    "new_figure",
    "sha256_file",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A failure or interrupt inside the block removes the temporary file, so ``path`` is either
    the old file or the complete new one, never a partial write.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """:func:`atomic_path` for files that belong together (a report and its figure): all of them or none appear.

    If one of the final renames fails, the files already renamed are put back as they were
    (the old file, or no file), so no target ever mixes this run's files with an earlier run's.
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            except OSError as e:
                _raise_about(e, target)
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        for tmp in temps:
            # mkstemp makes 0600 (and some writers, like safetensors, replace the file with their own
            # 0600 one): give the result the permissions open() would
            os.chmod(tmp, 0o666 & ~umask)
        _replace_all(temps, targets)
    except BaseException as e:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        target_of = {str(tmp): target for tmp, target in zip(temps, targets)}
        if isinstance(e, OSError) and (e.filename is None or e.filename in target_of):
            _raise_about(e, target_of.get(e.filename, targets[0]))  # a failed write names no file
        raise


def _raise_about(e: OSError, path: Path) -> NoReturn:
    """Re-raise ``e`` naming ``path``: a failed write (a full disk) names no file, or only the temporary one."""
    if e.errno is None:
        raise e
    raise OSError(e.errno, e.strerror, str(path)) from e


def _replace_all(temps: list[Path], targets: list[Path]) -> None:
    """Rename each temporary file over its target; if one rename fails, undo the ones before it."""
    done: list[tuple[Path, Path | None]] = []  # (target, a copy of the file it replaces, or None if there was none)
    try:
        for tmp, target in zip(temps, targets):
            done.append((target, _keep_old(target) if len(targets) > 1 else None))
            os.replace(tmp, target)
    except BaseException:
        for target, old in reversed(done):
            if old is not None:
                os.replace(old, target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
        raise
    finally:
        for _, old in done:
            if old is not None:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()


def _keep_old(target: Path) -> Path | None:
    """A hard link (or, where links are not possible, a copy) of ``target`` beside it; None if it does not exist."""
    if not target.exists():
        return None
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    try:
        os.link(target, old)
    except OSError:
        shutil.copy2(target, old)
    return old


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def new_figure(*args, **kwargs):
    """``plt.subplots`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def atomic_save_figure(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG atomically, then free it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
