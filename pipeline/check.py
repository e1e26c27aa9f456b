"""``python -m pipeline.check``: the command's name, kept for users' scripts. Its code is ``deployment.check``
(the side that runs a build; docs/ARCHITECTURE.md)."""

from deployment.check import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
