"""The versions of the tools a result depends on, and the CPU it ran on, as recorded in manifests and reports."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

__all__ = ["tool_versions", "cpu_name"]

# module name -> the distributions that may provide it (the first one installed wins)
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "onnxslim": ("onnxslim",),
    "onnxscript": ("onnxscript",),
    "timm": ("timm",),
    "pillow": ("pillow", "Pillow"),
    "modelopt": ("nvidia-modelopt",),
    "tensorrt": ("tensorrt",),
    "tensorrt_rtx": ("tensorrt-rtx", "tensorrt_rtx"),
    "openvino": ("openvino",),
}


def tool_versions() -> dict[str, str]:
    """``{"python": ..., "torch": ..., ...}`` for every tool that is installed (read from package metadata, nothing imported)."""
    out = {"python": platform.python_version()}
    for module, distributions in _DISTRIBUTIONS.items():
        for dist in distributions:
            try:
                out[module] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
