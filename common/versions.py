"""The versions of the tools a result depends on, as recorded in manifests and reports."""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["tool_versions"]

# module name -> the distributions that may provide it (the first one installed wins)
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "onnxslim": ("onnxslim",),
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
