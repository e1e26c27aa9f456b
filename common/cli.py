"""What every command-line tool does with an expected error: one ``error: <problem>; <fix>`` line on stderr, exit 2.

The project's own errors already name the cause and the fix. Errors from the operating system
(a full disk, a read-only directory) do not, so :func:`describe` adds the fix for those.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import EXPECTED_ERRORS

__all__ = ["describe", "report_error", "report_interrupt", "command", "HelpFormatter"]

_ACCESS_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def _disk_of(path: str | os.PathLike) -> str:
    """The file system holding ``path``, as a phrase: `` on the disk mounted at M (F MB free)``."""
    mount = Path(path).absolute()
    while not mount.exists() and mount != mount.parent:
        mount = mount.parent
    while not os.path.ismount(mount):
        mount = mount.parent
    try:
        return f" on the disk mounted at {mount} ({shutil.disk_usage(mount).free / 1e6:,.0f} MB free)"
    except OSError:
        return f" on the disk mounted at {mount}"


def _describe_os_error(e: OSError) -> str:
    where = e.filename if e.filename is not None else "a file"
    if e.errno == errno.ENOSPC:
        disk = _disk_of(e.filename) if e.filename is not None else ""
        return f"no space left writing {where}{disk}; free some space there or write the output to another disk"
    if e.errno in _ACCESS_ERRNOS:
        return f"{where}: {e.strerror}; fix its permissions or choose another output directory"
    if e.errno == errno.ENOTDIR:
        return f"{where}: a part of this path is a file, not a directory; choose another output path"
    if e.errno == errno.ENOENT:
        return f"{where} does not exist; check the path"
    return f"{e.strerror or e} ({where}); check the path and the disk"


def describe(e: BaseException) -> str:
    """``e`` as one line that names the problem and, for operating-system errors, the fix."""
    text = _describe_os_error(e) if isinstance(e, OSError) and e.errno is not None else str(e)
    return " ".join(text.split()) or type(e).__name__


def report_error(e: BaseException) -> int:
    """Print ``error: ...`` (one line) to stderr; returns the exit status for an expected error."""
    print(f"error: {describe(e)}", file=sys.stderr)
    return 2


def report_interrupt(what_next: str = "nothing was written: run the same command again") -> int:
    """Ctrl-C: one ``error: interrupted; <what was kept and what to do>`` line, and the conventional exit status 130."""
    print(f"error: interrupted; {what_next}", file=sys.stderr)
    return 130


def command(interrupted: str = "nothing was written: run the same command again") -> Callable:
    """Wrap a command's ``main``: an expected error (:data:`common.errors.EXPECTED_ERRORS`) becomes one ``error:`` line
    and exit 2, Ctrl-C one line saying ``interrupted`` and exit 130. ``main`` returns its own status otherwise, and
    catches first what it answers differently (a failed check is 1, not 2)."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except EXPECTED_ERRORS as e:
                return report_error(e)
            except KeyboardInterrupt:
                return report_interrupt(interrupted)

        return run

    return wrap


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where there is none to show (``None``, or one the help names)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
