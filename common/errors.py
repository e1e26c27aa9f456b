"""The project's base exception.

Every expected error (bad input, a missing tool, a file that does not fit) derives from
:class:`S2MLPv2Error`, and its message is one line naming the problem and the fix. Each
command-line tool catches ``EXPECTED_ERRORS`` (this class and the operating system's
``OSError``, which ``common.cli.describe`` explains) and reports it in that one line.
"""

from __future__ import annotations

__all__ = ["S2MLPv2Error", "UsageError", "EXPECTED_ERRORS"]


class S2MLPv2Error(Exception):
    """An expected error of this project; its message names the problem and the fix."""


class UsageError(S2MLPv2Error, ValueError):
    """A setting or argument that cannot work (a bad batch profile, an unknown name)."""


EXPECTED_ERRORS = (S2MLPv2Error, OSError)
