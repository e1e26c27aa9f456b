"""Device memory, a CUDA stream and CUDA graphs around one TensorRT execution context, through cuda-python.

``engines.runtime.TensorRTRunner`` deserializes a plan and hands its execution context to
:class:`PlanExecution`, which owns everything on the GPU side of a run:

* one device buffer for the input and one per output (the logits, and any further outputs a
  diagnostic plan marks), each sized for the largest batch of the plan's profile and allocated
  once (``cudaMalloc``), so a call allocates nothing on the GPU;
* one non-blocking stream, on which the copies in, TensorRT's ``execute_async_v3`` and the copy
  out are queued, then waited for once;
* :meth:`PlanExecution.graph`, which captures ``execute_async_v3`` for one batch size in a CUDA
  graph (``cudaStreamBeginCapture`` / ``cudaStreamEndCapture`` / ``cudaGraphInstantiate``) with
  buffers of its own, and replays it with ``cudaGraphLaunch``.

Host arrays are numpy arrays in the plan's input and output types (float16 or float32); the
result is returned as float32. The CUDA runtime API comes from NVIDIA's ``cuda-bindings`` package
(``cuda.bindings.runtime``; the runtime API shares the device's primary context with TensorRT),
so running a plan needs neither torch nor a compiled pycuda. Every call's error code is checked and
a failure is one line naming the call and CUDA's error name.

Running needs an NVIDIA GPU, which this project's CI does not have. There, the tests drive
``PlanExecution`` through a stand-in for ``cuda.bindings.runtime`` whose "device" memory is host
memory and whose graphs record the work queued during capture: the buffer sizes, pointers, copies,
dtypes and the order of the calls are tested, the CUDA driver is not (``python -m
pipeline.gpu_check`` runs a plan on a GPU machine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from common.errors import S2MLPv2Error

__all__ = ["CudaError", "PlanExecution", "cudart"]


class CudaError(S2MLPv2Error, RuntimeError):
    """A CUDA runtime call failed (or the CUDA runtime bindings are missing)."""


def cudart() -> Any:
    """``cuda.bindings.runtime``, or a one-line error that names the package to install."""
    try:
        from cuda.bindings import runtime
    except ImportError as e:
        raise CudaError(
            f"running a TensorRT plan needs NVIDIA's CUDA runtime bindings ({e}); pip install cuda-bindings "
            "(its major version must match the CUDA of the TensorRT wheel: 13 for tensorrt-rtx's default cu13 build)"
        ) from None
    return runtime


def _call(rt: Any, name: str, *args: Any) -> Any:
    """Call ``rt.name(*args)``; raise :class:`CudaError` on an error code, else return the values after it."""
    err, *values = getattr(rt, name)(*args)
    if err != rt.cudaError_t.cudaSuccess:
        _, label = rt.cudaGetErrorName(err)
        label = label.decode() if isinstance(label, bytes) else str(label)
        raise CudaError(f"CUDA {name} failed: {label}")
    return values[0] if len(values) == 1 else tuple(values)


class _DeviceBuffer:
    """``nbytes`` of device memory (``cudaMalloc``), freed by :meth:`free`."""

    def __init__(self, rt: Any, nbytes: int) -> None:
        self._rt, self.nbytes = rt, nbytes
        self.ptr = int(_call(rt, "cudaMalloc", nbytes))

    def upload(self, host: np.ndarray, stream: Any) -> None:
        if host.nbytes > self.nbytes:
            raise CudaError(f"{host.nbytes} bytes do not fit a {self.nbytes}-byte device buffer")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _call(self._rt, "cudaMemcpyAsync", self.ptr, host.ctypes.data, host.nbytes, kind, stream)

    def download(self, host: np.ndarray, stream: Any) -> None:
        if host.nbytes > self.nbytes:
            raise CudaError(f"{host.nbytes} bytes do not fit a {self.nbytes}-byte device buffer")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _call(self._rt, "cudaMemcpyAsync", host.ctypes.data, self.ptr, host.nbytes, kind, stream)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            _call(self._rt, "cudaFree", ptr)


class PlanExecution:
    """Runs an execution context on device buffers and one stream; ``run(host) -> float32 logits``.

    ``input_shape`` is ``(C, H, W)``; ``max_batch`` the profile's largest batch; the dtypes are
    the plan's input and output types. ``extra_outputs`` (name -> dtype) are further outputs of the
    plan, such as the module outputs a diagnostic plan marks; every output gets a buffer and is bound
    at every run, and :meth:`run_all` returns them all. One stream and one set of buffers: not for two
    threads at once.
    """

    def __init__(
        self,
        context: Any,
        input_name: str,
        output_name: str,
        input_shape: tuple[int, int, int],
        max_batch: int,
        input_dtype: type = np.float32,
        output_dtype: type = np.float32,
        extra_outputs: dict[str, Any] | None = None,
    ) -> None:
        self._rt = cudart()
        self.context, self.input_name, self.output_name = context, input_name, output_name
        self.input_shape, self.max_batch = tuple(input_shape), max_batch
        self.input_dtype = np.dtype(input_dtype)
        self.output_dtypes = {output_name: np.dtype(output_dtype), **{k: np.dtype(v) for k, v in (extra_outputs or {}).items()}}
        self._buffers: list[_DeviceBuffer] = []
        self._graphs: list[tuple[Any, Any]] = []
        self.stream = _call(self._rt, "cudaStreamCreateWithFlags", self._rt.cudaStreamNonBlocking)
        self._input, self._outputs = self._buffers_for(max_batch)

    def _output_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        self.context.set_input_shape(self.input_name, (batch_size, *self.input_shape))
        return {name: tuple(self.context.get_tensor_shape(name)) for name in self.output_dtypes}

    def _buffers_for(self, batch_size: int) -> tuple[_DeviceBuffer, dict[str, _DeviceBuffer]]:
        in_bytes = batch_size * int(np.prod(self.input_shape)) * self.input_dtype.itemsize
        shapes = self._output_shapes(batch_size)
        inp = _DeviceBuffer(self._rt, in_bytes)
        self._buffers.append(inp)
        outs = {}
        for name, dtype in self.output_dtypes.items():
            outs[name] = _DeviceBuffer(self._rt, int(np.prod(shapes[name])) * dtype.itemsize)
            self._buffers.append(outs[name])
        return inp, outs

    def _bind(self, batch_size: int, inp: _DeviceBuffer, outs: dict[str, _DeviceBuffer]) -> dict[str, tuple[int, ...]]:
        shapes = self._output_shapes(batch_size)
        self.context.set_tensor_address(self.input_name, inp.ptr)
        for name, buffer in outs.items():
            self.context.set_tensor_address(name, buffer.ptr)
        return shapes

    def _execute(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise CudaError("TensorRT execution failed; see the TensorRT log above")

    def _host(self, batch: Any) -> np.ndarray:
        array = batch.detach().cpu().numpy() if hasattr(batch, "detach") else batch  # a torch tensor, if one is given
        return np.ascontiguousarray(array, dtype=self.input_dtype)

    def _download(self, outs: dict[str, _DeviceBuffer], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        found = {name: np.empty(shapes[name], dtype=dtype) for name, dtype in self.output_dtypes.items()}
        for name, host in found.items():
            outs[name].download(host, self.stream)
        _call(self._rt, "cudaStreamSynchronize", self.stream)
        return {name: host.astype(np.float32, copy=False) for name, host in found.items()}

    def run_all(self, batch: Any) -> dict[str, np.ndarray]:
        """Copy ``batch`` in, run the plan, copy every output out; float32 arrays by output name."""
        host = self._host(batch)
        if not 1 <= host.shape[0] <= self.max_batch:
            raise CudaError(f"batch {host.shape[0]} is outside the plan's 1-{self.max_batch}")
        shapes = self._bind(host.shape[0], self._input, self._outputs)
        self._input.upload(host, self.stream)
        self._execute()
        return self._download(self._outputs, shapes)

    def run(self, batch: Any) -> np.ndarray:
        """Copy ``batch`` in, run the plan, copy the logits out; float32 ``(B, classes)``."""
        return self.run_all(batch)[self.output_name]

    def graph(self, batch_size: int) -> Callable[[Any], np.ndarray]:
        """Capture the plan for ``batch_size`` in a CUDA graph, with buffers of its own; returns ``replay(batch)``."""
        rt = self._rt
        inp, outs = self._buffers_for(batch_size)
        shapes = self._bind(batch_size, inp, outs)
        self._execute()  # TensorRT must run once for a shape before it is captured
        _call(rt, "cudaStreamSynchronize", self.stream)
        _call(rt, "cudaStreamBeginCapture", self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            self._execute()
        finally:
            graph = _call(rt, "cudaStreamEndCapture", self.stream)  # ends the capture even when enqueueing failed
        executable = _call(rt, "cudaGraphInstantiate", graph, 0)
        self._graphs.append((graph, executable))

        def replay(batch: Any) -> np.ndarray:
            host = self._host(batch)
            if host.shape[0] != batch_size:
                raise CudaError(f"this CUDA graph was captured for batch {batch_size}, got {host.shape[0]}")
            inp.upload(host, self.stream)
            _call(rt, "cudaGraphLaunch", executable, self.stream)
            return self._download(outs, shapes)[self.output_name]

        return replay

    def close(self) -> None:
        """Free the graphs, buffers and stream (also done when the object is collected)."""
        rt = self._rt
        for graph, executable in self._graphs:
            _call(rt, "cudaGraphExecDestroy", executable)
            _call(rt, "cudaGraphDestroy", graph)
        self._graphs.clear()
        for buffer in self._buffers:
            buffer.free()
        self._buffers.clear()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            _call(rt, "cudaStreamDestroy", stream)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the driver may already be gone
            pass
