"""The serving settings ``pipeline.tune`` chose for a build, recorded in it as ``serving.json``.

``serve`` takes them as its defaults (a flag given on its command line still wins) and says so on its ready line;
``--triton-repo`` (``deployment.triton_repo``) writes them into ``config.pbtxt``. A build without the file serves with
the defaults below.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import S2MLPv2Error

__all__ = ["ServingChoice", "DEFAULT_QUEUE_DELAY_US", "TunedError"]

DEFAULT_QUEUE_DELAY_US = 100


class TunedError(S2MLPv2Error, ValueError):
    """A ``serving.json`` that cannot be used; the message says how to make a new one."""


@dataclass(frozen=True)
class ServingChoice:
    """How a build is served: Triton's dynamic batcher, model instances, and the CPU runtime's threads and streams."""

    max_batch: int | None = None  # None: the build's profile
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    threads: int | None = None  # per instance; None: the runtime's default
    streams: int | None = None  # OpenVINO requests that run at once; None: one
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)  # what pipeline.tune measured

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch", tuple(int(b) for b in self.preferred_batch))

    def describe(self) -> str:
        parts = [f"queue delay {self.queue_delay_us} us"]
        if self.max_batch is not None:
            parts.append(f"batches up to {self.max_batch}")
        if self.preferred_batch:
            parts.append(f"preferred {', '.join(map(str, self.preferred_batch))}")
        parts.append(f"{self.instances} instance{'s' if self.instances > 1 else ''}")
        if self.threads:
            parts.append(f"{self.threads} threads each")
        if self.streams:
            parts.append(f"{self.streams} streams")
        return ", ".join(parts)

    def settings(self) -> dict[str, Any]:
        """The choice without its provenance: what tells two choices apart."""
        d = asdict(self)
        d.pop("provenance")
        return d | {"preferred_batch": list(self.preferred_batch)}

    @classmethod
    def read(cls, build: str | os.PathLike) -> ServingChoice | None:
        """The build's recorded choice, or None where it has none (a single file, or never tuned)."""
        from engines.package import SERVING_FILE

        path = Path(build) / SERVING_FILE
        if not Path(build).is_dir() or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(
                max_batch=data.get("max_batch"),
                preferred_batch=tuple(int(b) for b in data.get("preferred_batch") or ()),
                queue_delay_us=int(data.get("queue_delay_us", DEFAULT_QUEUE_DELAY_US)),
                instances=int(data.get("instances", 1)),
                threads=data.get("threads"),
                streams=data.get("streams"),
                provenance=dict(data.get("provenance") or {}),
            )
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise TunedError(
                f"{path} is not a serving choice ({type(e).__name__}: {e}); delete it or run python -m pipeline.tune again"
            ) from None

    def write(self, build: str | os.PathLike) -> Path:
        from common.fileio import atomic_write_json
        from engines.package import SERVING_FILE

        path = Path(build) / SERVING_FILE
        atomic_write_json(path, {**asdict(self), "preferred_batch": list(self.preferred_batch)})
        return path
