"""Run a TensorRT plan (either flavour) from Python, with the same interface as ``engines.ort.OnnxRuntimeRunner``.

``runner = TensorRTRunner("model.plan"); logits = runner(batch)`` takes a numpy array (or a torch
tensor) ``(B, C, H, W)`` and returns float32 numpy logits. Device buffers, the stream and CUDA
graphs are ``engines.device.PlanExecution``'s, through cuda-python: no torch and no pycuda build
(a plugin-form TensorRT for RTX plan is the exception: its shift plugin's Triton kernel runs on
torch tensors). The flavour (TensorRT 11 or TensorRT for RTX) comes from the plan's sidecar.
Before anything is deserialized:

1. the sidecar is read, and a plan handed to the other flavour (``flavour=``) is refused by name;
2. the plan's bytes are checked against the sidecar's hash (a truncated or replaced plan);
3. the flavour reads the plan's header (``Runtime.get_engine_validity``), which flags random
   bytes even without a GPU;
4. the sidecar is checked against this machine's version and GPU architecture;
5. the shift plugin is registered when the sidecar says the plan needs it.

Every input is checked against the plan's profile. ``runner.cuda_graph(batch)`` captures the
plan for one fixed shape and returns a callable that replays it. TensorRT for RTX compiles its
kernels for the GPU at first run; ``runtime_cache=`` keeps them in a file across processes.

Running needs a GPU, which this project's CI does not have: steps 1-3 are tested there with
real TensorRT for RTX plans; the rest runs on a GPU machine (``python -m pipeline.gpu_check``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import S2MLPv2Error

from .sidecar import EngineMismatchError, ProfileError, Sidecar, read_sidecar
from .trt import Flavour, TensorRTUnavailable, cuda_device, flavour

__all__ = ["TensorRTRunner", "check_input", "check_array", "check_plan_file", "InputError"]


class InputError(S2MLPv2Error, ValueError):
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


def _check_header(fl: Flavour, plan: Path, plan_bytes: bytes) -> None:
    """Ask the flavour whether the bytes are a plan at all, before anything deserializes them."""
    trt = fl.module()
    runtime = trt.Runtime(fl.logger(trt.ILogger.Severity.ERROR))
    if not hasattr(runtime, "get_engine_validity"):  # pragma: no cover - older TensorRT 11 bindings
        return
    _, diagnostics = runtime.get_engine_validity(plan_bytes)
    flags = trt.EngineInvalidityDiagnostics
    if int(diagnostics) & int(flags.MALFORMED_ENGINE):
        raise EngineMismatchError(
            f"{plan} is not a {fl.title} plan (its header is malformed); rebuild it with python -m engines.build"
        )
    if int(diagnostics) & int(flags.VERSION_MISMATCH):
        raise EngineMismatchError(f"{plan} was built with another {fl.title} version; rebuild it here")


def _numpy_dtype(trt, dtype, name: str):
    """numpy's type for a plan's float tensor; anything else is refused by name."""
    if dtype == trt.float16:
        return np.float16
    if dtype == trt.float32:
        return np.float32
    raise TensorRTUnavailable(f"the plan's tensor {name!r} is {dtype}; this runner takes float32 and float16 tensors")


def check_plan_file(plan: str | os.PathLike, flavour_name: str | None = None) -> Sidecar:
    """Steps 1-3 of loading, none of which needs a GPU: sidecar, flavour, hash and header. Returns the sidecar."""
    path = Path(plan)
    sidecar = read_sidecar(path)
    if flavour_name is not None:
        sidecar.check_flavour(flavour_name)
    sidecar.check_plan(path)
    _check_header(flavour(sidecar.flavour), path, path.read_bytes())
    return sidecar


class TensorRTRunner:
    """``runner(batch) -> logits`` for a plan. One execution context and stream: not safe to call from two threads at once."""

    thread_safe = False

    def __init__(
        self, plan: str | os.PathLike, flavour_name: str | None = None, runtime_cache: str | os.PathLike | None = None
    ) -> None:
        from .device import PlanExecution

        self.path = Path(plan)
        self.sidecar = check_plan_file(self.path, flavour_name)  # the checks that need no GPU come first
        fl = flavour(self.sidecar.flavour)
        self.backend = fl.name
        trt = fl.module()
        gpu = cuda_device()
        if gpu is None:
            raise TensorRTUnavailable(f"no CUDA device: running a {fl.title} plan needs an NVIDIA GPU")
        self.sidecar.check_runtime(fl.name, trt.__version__, gpu[1])
        fl.prepare_plugin(self.sidecar.plugin_sha256 is not None)  # the rule the build followed before parsing
        self._logger = fl.logger(trt.ILogger.Severity.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(
                f"{fl.title} could not deserialize {self.path} ({'; '.join(self._logger.errors()) or 'no error reported'}); "
                "rebuild it with python -m engines.build"
            )
        self._cache_path = Path(runtime_cache) if runtime_cache else None
        cached = self._cache_path.read_bytes() if self._cache_path and self._cache_path.is_file() else None
        self.context, self._cache = fl.execution_context(self.engine, cached)
        self.input_name, self.output_name = self.sidecar.input_name, self.sidecar.output_name
        self.input_shape = self.sidecar.input_shape
        self.batch_range = (self.sidecar.batch_profile[0], self.sidecar.batch_profile[2])
        self.device = f"{gpu[0]} (compute capability {gpu[1]})"
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtype = {n: _numpy_dtype(trt, self.engine.get_tensor_dtype(n), n) for n in names}
        self.extra_outputs = [n for n in outputs if n != self.output_name]  # a diagnostic plan's marked module outputs
        self._execution = PlanExecution(
            self.context,
            self.input_name,
            self.output_name,
            tuple(self.input_shape),
            self.batch_range[1],
            dtype[self.input_name],
            dtype[self.output_name],
            extra_outputs={n: dtype[n] for n in self.extra_outputs},
        )

    def save_runtime_cache(self) -> None:
        """Write the TensorRT for RTX runtime cache (kernels compiled for this GPU) to ``runtime_cache``."""
        if self._cache is not None and self._cache_path is not None:
            from common.fileio import atomic_write_bytes

            atomic_write_bytes(self._cache_path, bytes(self._cache.serialize()))

    def __call__(self, batch) -> np.ndarray:
        check_input(batch, self.sidecar)
        logits = self._execution.run(batch)
        if self._cache_path is not None and not self._cache_path.exists():
            self.save_runtime_cache()  # after the first run, which compiled the kernels
        return logits

    def outputs(self, batch) -> dict[str, np.ndarray]:
        """Every output of the plan by name, float32: the logits and any module outputs a diagnostic plan marks."""
        check_input(batch, self.sidecar)
        return self._execution.run_all(batch)

    def cuda_graph(self, batch_size: int):
        """Capture the plan for ``batch_size`` in a CUDA graph; returns ``run(batch) -> numpy``."""
        c, h, w = self.sidecar.input_shape
        self.sidecar.check_batch((batch_size, c, h, w))
        replay = self._execution.graph(batch_size)

        def run(batch) -> np.ndarray:
            check_input(batch, self.sidecar)
            if batch.shape[0] != batch_size:
                raise ProfileError(f"this CUDA graph was captured for batch {batch_size}, got {batch.shape[0]}")
            return replay(batch)

        return run

    def close(self) -> None:
        """Free the device buffers, stream and graphs now rather than when the runner is collected."""
        self._execution.close()
