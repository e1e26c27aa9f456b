"""The JSON sidecar written next to every plan, and the checks made with it before loading.

A plan only runs with the TensorRT version and GPU architecture it was built for (unless built
version- or hardware-compatible). The sidecar records both, plus what went into the build, so

* a build whose key matches an existing plan reuses it, and
* loading a plan on another TensorRT version or GPU fails with an error naming both,

and neither needs TensorRT to be checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.fileio import atomic_write_json

__all__ = ["Sidecar", "EngineMismatchError", "ProfileError", "sidecar_path", "read_sidecar"]

SIDECAR_FORMAT = "s2mlpv2-plan/1"


class EngineMismatchError(RuntimeError):
    """The plan was built for another TensorRT version or GPU architecture."""


class ProfileError(ValueError):
    """An input shape outside the plan's optimization profile."""


@dataclass(frozen=True)
class Sidecar:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    onnx_sha256: str
    plugin_sha256: str | None
    batch_profile: tuple[int, int, int]  # min, opt, max
    input_shape: tuple[int, int, int]  # C, H, W
    precision: str
    version_compatible: bool = False
    hardware_compatible: bool = False
    workspace_bytes: int = 0
    input_name: str = "input"
    output_name: str = "logits"

    def key(self) -> str:
        """What a plan depends on; equal keys mean the existing plan can be reused."""
        fields = dataclasses.asdict(self)
        fields.pop("gpu_name")  # the architecture decides, not the marketing name
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"format": SIDECAR_FORMAT, **dataclasses.asdict(self), "key": self.key()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sidecar:
        if d.get("format") != SIDECAR_FORMAT:
            raise EngineMismatchError(f"not a plan sidecar of this project (format {d.get('format')!r}); rebuild the plan")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["batch_profile"] = tuple(values["batch_profile"])
        values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)

    def write(self, plan_path: str | os.PathLike) -> None:
        atomic_write_json(sidecar_path(plan_path), self.to_dict())

    def check_runtime(self, tensorrt_version: str, compute_capability: str) -> None:
        """Raise ``EngineMismatchError`` if this plan cannot run with that TensorRT on that GPU."""
        built_major = self.tensorrt_version.split(".")[0]
        same_trt = self.tensorrt_version == tensorrt_version or (
            self.version_compatible and built_major == tensorrt_version.split(".")[0]
        )
        if not same_trt:
            raise EngineMismatchError(
                f"plan built with TensorRT {self.tensorrt_version}, but this machine has TensorRT {tensorrt_version}; "
                "rebuild the plan here (or build it with --version-compatible)"
            )
        if self.compute_capability != compute_capability and not (self.hardware_compatible and float(compute_capability) >= 8.0):
            raise EngineMismatchError(
                f"plan built for GPU compute capability {self.compute_capability} ({self.gpu_name}), but this GPU is "
                f"{compute_capability}; rebuild the plan on this GPU (or build it with --hardware-compatible)"
            )

    def check_batch(self, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.batch_profile
        if len(shape) != 4 or tuple(shape[1:]) != tuple(self.input_shape):
            raise ProfileError(
                f"input shape {tuple(shape)} does not match the plan's (batch, {', '.join(map(str, self.input_shape))})"
            )
        if not lo <= shape[0] <= hi:
            raise ProfileError(
                f"batch {shape[0]} is outside the plan's profile [{lo}, {hi}]; rebuild with --batch covering it or split the batch"
            )


def sidecar_path(plan_path: str | os.PathLike) -> Path:
    return Path(plan_path).with_suffix(".json")


def read_sidecar(plan_path: str | os.PathLike) -> Sidecar:
    path = sidecar_path(plan_path)
    if not path.is_file():
        raise EngineMismatchError(
            f"{path} is missing: a plan is loaded only with the sidecar written beside it; rebuild the plan"
        )
    try:
        return Sidecar.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise EngineMismatchError(f"{path} is not a valid plan sidecar ({e}); rebuild the plan") from None
