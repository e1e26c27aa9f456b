"""``python -m pipeline.classify``: the command's name, kept for users' scripts. Its code is ``deployment.classify``
(the side that runs a build; docs/ARCHITECTURE.md)."""

from deployment.classify import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
