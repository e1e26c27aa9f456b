"""The JSON sidecar written next to every plan, and the checks made with it before loading.

A plan only runs with the TensorRT flavour and version it was built with, and on the GPU
architectures it was built for (unless built version- or hardware-compatible). The sidecar
records the flavour (TensorRT 11 or TensorRT for RTX), its version, the target compute
capabilities, how the shift plugin reaches the plan, and what went into the build, so

* a build whose key matches an existing plan reuses it,
* a plan handed to the other flavour, or loaded on another version or GPU, fails with an
  error naming both, and
* a plan changed or truncated since it was built is caught by its hash before anything
  deserializes it,

and none of these checks needs TensorRT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import S2MLPv2Error
from common.fileio import atomic_write_json, sha256_file

__all__ = ["Sidecar", "EngineMismatchError", "ProfileError", "sidecar_path", "read_sidecar"]

SIDECAR_FORMAT = "s2mlpv2-plan/2"


def _product(flavour_name: str) -> str:
    from .trt import FLAVOURS

    return FLAVOURS[flavour_name].product if flavour_name in FLAVOURS else flavour_name


class EngineMismatchError(S2MLPv2Error, RuntimeError):
    """The plan was built with another TensorRT flavour or version, for another GPU, or has changed since."""


class ProfileError(S2MLPv2Error, ValueError):
    """An input shape outside the plan's optimization profile."""


@dataclass(frozen=True)
class Sidecar:
    flavour: str  # "tensorrt" (TensorRT 11) | "tensorrt-rtx" (TensorRT for RTX)
    flavour_version: str
    gpu_name: str | None  # the GPU a TensorRT 11 plan was built on; None for a CPU-only build
    compute_capabilities: tuple[str, ...]  # what the plan runs on: ("9.0",) or ("8.0", "8.6", ...)
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
    plugin_source: str | None = None  # how the shift plugin reaches the plan (engines.trt.Flavour.plugin_source)
    plan_sha256: str | None = None  # the written plan's hash: an output, not part of the key
    card: dict[str, Any] | None = None  # the model card of the graph (preprocessing, class names); in the graph's hash already

    @property
    def title(self) -> str:
        return f"{_product(self.flavour)} {self.flavour_version}"

    def key(self) -> str:
        """What a plan depends on; equal keys mean the existing plan can be reused."""
        fields = dataclasses.asdict(self)
        fields.pop("gpu_name")  # the architecture decides, not the marketing name
        fields.pop("plan_sha256")
        fields.pop("card")
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"format": SIDECAR_FORMAT, **dataclasses.asdict(self), "key": self.key()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sidecar:
        if d.get("format") != SIDECAR_FORMAT:
            raise EngineMismatchError(
                f"not a plan sidecar of this version of the project (format {d.get('format')!r}, expected {SIDECAR_FORMAT!r}); "
                "rebuild the plan"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["batch_profile"] = tuple(values["batch_profile"])
        values["input_shape"] = tuple(values["input_shape"])
        values["compute_capabilities"] = tuple(values["compute_capabilities"])
        return cls(**values)

    def write(self, plan_path: str | os.PathLike) -> None:
        atomic_write_json(sidecar_path(plan_path), self.to_dict())

    def check_flavour(self, flavour: str) -> None:
        """Refuse, by name, a plan handed to the flavour it was not built with."""
        if flavour != self.flavour:
            raise EngineMismatchError(
                f"plan built with {self.title}, but it was handed to {_product(flavour)}; "
                f"load it with --backend {self.flavour}, or rebuild it with --backend {flavour}"
            )

    def check_plan(self, plan_path: str | os.PathLike) -> None:
        """Refuse a plan whose bytes are not the ones this sidecar was written for (truncated, replaced)."""
        if self.plan_sha256 is not None and sha256_file(plan_path) != self.plan_sha256:
            raise EngineMismatchError(
                f"{plan_path} is not the plan its sidecar describes (truncated or changed since it was built); rebuild the plan"
            )

    def check_runtime(self, flavour: str, version: str, compute_capability: str) -> None:
        """Raise ``EngineMismatchError`` if this plan cannot run with that flavour and version on that GPU."""
        self.check_flavour(flavour)
        built_major = self.flavour_version.split(".")[0]
        same_version = self.flavour_version == version or (self.version_compatible and built_major == version.split(".")[0])
        if not same_version:
            here = f"{_product(flavour)} {version}"
            raise EngineMismatchError(
                f"plan built with {self.title}, but this machine has {here}; rebuild the plan here (or build it with --version-compatible)"
            )
        from .trt import flavour as flavour_named

        fl = flavour_named(self.flavour)
        if fl.runs_plan_built_for(self.compute_capabilities, self.hardware_compatible, compute_capability):
            return
        built_for = ", ".join(self.compute_capabilities) + (f" ({self.gpu_name})" if self.gpu_name else "")
        raise EngineMismatchError(
            f"plan built for GPU compute capability {built_for}, but this GPU is {compute_capability}; "
            f"{fl.mismatch_fix(compute_capability)}"
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
