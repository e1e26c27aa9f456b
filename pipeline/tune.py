"""``python -m pipeline.tune``: the command's name. Its code is ``deployment.tune`` (the side that runs a build;
docs/ARCHITECTURE.md)."""

from deployment.tune import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
