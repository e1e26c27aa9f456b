"""``python -m pipeline.serve``: the command's name, kept for users' scripts. Its code is ``deployment.serve``
(the side that runs a build; docs/ARCHITECTURE.md)."""

from deployment.serve import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
