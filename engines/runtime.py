"""Run a TensorRT plan from Python, with the same interface as ``pipeline.onnx_runtime.OnnxRuntimeRunner``.

``runner = TensorRTRunner("model.plan"); logits = runner(batch)`` takes a numpy array or a torch
tensor ``(B, C, H, W)`` and returns float32 numpy logits. Device buffers are torch CUDA tensors
(no pycuda build). Before anything is deserialized, the sidecar is checked against this
machine's TensorRT version and GPU architecture, and every input against the plan's profile.
``runner.cuda_graph(batch)`` captures the plan for one fixed shape and returns a callable that
replays it.

This module has not run in this project's CI (no TensorRT or GPU there). Its checks that need
neither (sidecar, profile, input validation) are tested there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .sidecar import ProfileError, Sidecar, read_sidecar
from .trt import TensorRTUnavailable, cuda_device, import_tensorrt

__all__ = ["TensorRTRunner", "check_input", "check_array", "InputError"]


class InputError(ValueError):
    """A batch the model cannot take (wrong dtype, rank, channels, or NaN/Inf values)."""


def check_array(batch: Any, input_shape: Sequence[int | str | None], what: str = "the plan") -> None:
    """Validate a batch's dtype, rank, size and values against ``input_shape`` ``(C, H, W)``; a size that is not an int is not checked."""
    shape = tuple(batch.shape)
    dtype = str(getattr(batch, "dtype", ""))
    if not any(t in dtype for t in ("float32", "float16", "float64")):
        raise InputError(f"input dtype {dtype} is not a float type; pass float32 images (preprocessed as the model card says)")
    if len(shape) != 4:
        raise InputError(f"input must be (batch, C, H, W), got rank {len(shape)} shape {shape}; add the batch dimension")
    if isinstance(input_shape[0], int) and shape[1] != input_shape[0]:
        raise InputError(
            f"input has {shape[1]} channels, {what} expects {input_shape[0]}; convert images to RGB as the model card's preprocessing does"
        )
    if any(isinstance(want, int) and got != want for got, want in zip(shape[2:], input_shape[1:])):
        raise InputError(
            f"input images are {shape[2]}x{shape[3]}, {what} expects {input_shape[1]}x{input_shape[2]}; "
            "preprocess them with the card of the model it was built from"
        )
    finite = bool(np.isfinite(np.asarray(batch.detach().cpu() if hasattr(batch, "detach") else batch)).all())
    if not finite:
        raise InputError("input contains NaN or Inf; check the preprocessing (division by a zero std, corrupt images)")


def check_input(batch: Any, sidecar: Sidecar) -> None:
    """Validate a batch against the plan before it reaches the GPU."""
    check_array(batch, sidecar.input_shape)
    sidecar.check_batch(tuple(batch.shape))


class TensorRTRunner:
    backend = "tensorrt"

    def __init__(self, plan: str | os.PathLike) -> None:
        import torch

        self.path = Path(plan)
        self.sidecar = read_sidecar(self.path)  # the TensorRT-free checks come first
        trt = import_tensorrt()
        gpu = cuda_device()
        if gpu is None:
            raise TensorRTUnavailable("no CUDA device: running a TensorRT plan needs an NVIDIA GPU")
        self.sidecar.check_runtime(trt.__version__, gpu[1])
        if self.sidecar.plugin_sha256:
            from . import plugin  # noqa: F401  (AOT plans do not need it; JIT plans do)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(f"TensorRT could not deserialize {self.path}; rebuild it with python -m engines.build")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = self.sidecar.input_name, self.sidecar.output_name
        self._in_dtype = torch.float16 if self.engine.get_tensor_dtype(self.input_name) == trt.float16 else torch.float32
        self._out_dtype = torch.float16 if self.engine.get_tensor_dtype(self.output_name) == trt.float16 else torch.float32
        self.stream = torch.cuda.Stream()

    def _bind(self, x, out) -> None:
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())

    def __call__(self, batch) -> np.ndarray:
        import torch

        check_input(batch, self.sidecar)
        x = torch.as_tensor(batch).to("cuda", self._in_dtype).contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self._out_dtype, device="cuda")
        self._bind(x, out)
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed; see the TensorRT log above")
        self.stream.synchronize()
        return out.float().cpu().numpy()

    def cuda_graph(self, batch_size: int):
        """Capture the plan for ``batch_size`` in a CUDA graph; returns ``run(batch) -> numpy``."""
        import torch

        c, h, w = self.sidecar.input_shape
        self.sidecar.check_batch((batch_size, c, h, w))
        static_in = torch.zeros((batch_size, c, h, w), dtype=self._in_dtype, device="cuda")
        self.context.set_input_shape(self.input_name, tuple(static_in.shape))
        static_out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self._out_dtype, device="cuda")
        self._bind(static_in, static_out)
        with torch.cuda.stream(self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)  # TensorRT must run once before capture
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)

        def run(batch) -> np.ndarray:
            check_input(batch, self.sidecar)
            if batch.shape[0] != batch_size:
                raise ProfileError(f"this CUDA graph was captured for batch {batch_size}, got {batch.shape[0]}")
            static_in.copy_(torch.as_tensor(batch).to("cuda", self._in_dtype))
            graph.replay()
            torch.cuda.current_stream().wait_stream(self.stream)
            return static_out.float().cpu().numpy()

        run.graph = graph  # keep the capture alive with the callable
        return run
