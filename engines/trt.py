"""Every TensorRT version question, answered in one place.

TensorRT 11 networks are strongly typed: precision comes from the ONNX graph (there is no
FP16/INT8 builder flag, no INT8 calibrator), and ``create_network(0)`` is the only way to make a
network. This module imports ``tensorrt`` lazily and refuses versions older than 11 with a
message that says what to install.
"""

from __future__ import annotations

import functools

__all__ = ["TensorRTUnavailable", "import_tensorrt", "is_available", "cuda_device", "MIN_MAJOR"]

MIN_MAJOR = 11


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA device is missing; the message says how to get them."""


@functools.cache
def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            f"the tensorrt package is not installed ({e}); on a machine with an NVIDIA GPU run "
            "`pip install -e .[tensorrt]` (its wheels download NVIDIA's libraries from NVIDIA's package index)"
        ) from None
    major = int(trt.__version__.split(".")[0])
    if major < MIN_MAJOR:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is installed, but this project builds strongly typed TensorRT {MIN_MAJOR}.x engines; "
            f"`pip install 'tensorrt>={MIN_MAJOR}'`"
        )
    return trt


def cuda_device() -> tuple[str, str] | None:
    """(GPU name, compute capability 'major.minor') of device 0, or None without CUDA."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def is_available() -> bool:
    """True when TensorRT 11 imports and a CUDA device exists (what an engine build needs)."""
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return cuda_device() is not None
