"""``python -m pipeline.loadtest``: the command's name, kept for users' scripts. Its code is ``deployment.loadtest``
(the side that runs a build; docs/ARCHITECTURE.md)."""

from deployment.loadtest import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
