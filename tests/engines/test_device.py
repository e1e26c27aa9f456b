"""engines.device.PlanExecution: device buffers, stream and CUDA graphs around a TensorRT context.

Without a GPU, a stand-in for ``cuda.bindings.runtime`` keeps "device" memory in host buffers and
records what is queued while a stream is captured; a stand-in execution context computes logits
from the memory its tensor addresses point at. So the sizes, pointers, copies, dtypes and the
order of the calls are checked for real; the CUDA driver itself runs only on a GPU machine.
"""

from __future__ import annotations

import ctypes
import inspect
import re
from enum import IntEnum
from types import SimpleNamespace

import numpy as np
import pytest

import engines.device as device
from engines.device import CudaError, PlanExecution

C, H, W, CLASSES, MAX_BATCH = 3, 4, 4, 5, 8


class _Error(IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorStreamCaptureUnsupported = 900


class FakeRuntime:
    """The calls of ``cuda.bindings.runtime`` that PlanExecution makes, on host memory."""

    cudaError_t = _Error
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)
    cudaStreamNonBlocking = 1

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.memory: dict[int, ctypes.Array] = {}
        self.capturing: dict[int, list] = {}
        self.calls: list[str] = []
        self.streams: set[int] = set()
        self.graphs = 0

    def _log(self, name: str):
        self.calls.append(name)
        return _Error.cudaErrorMemoryAllocation if name == self.fail else None

    def _device(self, ptr: int, nbytes: int) -> bool:
        return any(a <= ptr and ptr + nbytes <= a + ctypes.sizeof(b) for a, b in self.memory.items())

    def cudaGetErrorName(self, error):
        return _Error.cudaSuccess, _Error(error).name.encode()

    def cudaMalloc(self, size):
        if err := self._log("cudaMalloc"):
            return err, None
        buffer = (ctypes.c_char * size)()
        self.memory[ctypes.addressof(buffer)] = buffer
        return _Error.cudaSuccess, ctypes.addressof(buffer)

    def cudaFree(self, devPtr):
        self._log("cudaFree")
        return (_Error.cudaSuccess,) if self.memory.pop(devPtr, None) is not None else (_Error.cudaErrorInvalidValue,)

    def cudaStreamCreateWithFlags(self, flags):
        self._log("cudaStreamCreateWithFlags")
        self.streams.add(7)
        return _Error.cudaSuccess, 7

    def cudaStreamDestroy(self, stream):
        self._log("cudaStreamDestroy")
        self.streams.discard(int(stream))
        return (_Error.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self._log("cudaMemcpyAsync")
        if int(stream) in self.capturing:  # a pageable copy cannot be captured
            return (_Error.cudaErrorStreamCaptureUnsupported,)
        device_side = dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        if not self._device(device_side, count):
            return (_Error.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, count)
        return (_Error.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        self._log("cudaStreamSynchronize")
        return (_Error.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        self._log("cudaStreamBeginCapture")
        self.capturing[int(stream)] = []
        return (_Error.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        self._log("cudaStreamEndCapture")
        return _Error.cudaSuccess, self.capturing.pop(int(stream))

    def cudaGraphInstantiate(self, graph, flags):
        self._log("cudaGraphInstantiate")
        self.graphs += 1
        return _Error.cudaSuccess, list(graph)

    def cudaGraphLaunch(self, graphExec, stream):
        self._log("cudaGraphLaunch")
        for work in graphExec:
            work()
        return (_Error.cudaSuccess,)

    def cudaGraphExecDestroy(self, graphExec):
        self._log("cudaGraphExecDestroy")
        self.graphs -= 1
        return (_Error.cudaSuccess,)

    def cudaGraphDestroy(self, graph):
        self._log("cudaGraphDestroy")
        return (_Error.cudaSuccess,)


class FakeContext:
    """A TensorRT execution context whose 'plan' is ``logits = flatten(x) @ weight``, read from and written to its addresses."""

    def __init__(self, rt: FakeRuntime, in_dtype, out_dtype, extra: dict | None = None) -> None:
        self.rt, self.in_dtype, self.out_dtype = rt, np.dtype(in_dtype), np.dtype(out_dtype)
        self.extra = extra or {}  # further outputs: name -> (function of the input, dtype)
        self.weight = np.random.default_rng(0).standard_normal((C * H * W, CLASSES)).astype(np.float32)
        self.shape: tuple[int, ...] = ()
        self.address: dict[str, int] = {}

    def set_input_shape(self, name, shape):
        assert name == "input" and tuple(shape[1:]) == (C, H, W) and 1 <= shape[0] <= MAX_BATCH
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.extra:
            return self.extra[name][0](np.zeros(self.shape, np.float32)).shape
        assert name == "logits"
        return (self.shape[0], CLASSES)

    def set_tensor_address(self, name, address):
        self.address[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        assert set(self.address) == {"input", "logits", *self.extra}, "TensorRT needs every output bound"
        shape, src, dst = self.shape, self.address["input"], self.address["logits"]  # baked in, as a capture does
        extra_dst = {name: self.address[name] for name in self.extra}

        def work():
            count = int(np.prod(shape))
            x = np.frombuffer((ctypes.c_char * (count * self.in_dtype.itemsize)).from_address(src), self.in_dtype)
            logits = (x.astype(np.float32).reshape(shape[0], -1) @ self.weight).astype(self.out_dtype)
            ctypes.memmove(dst, logits.ctypes.data, logits.nbytes)
            for name, (fn, dtype) in self.extra.items():
                out = np.ascontiguousarray(fn(x.astype(np.float32).reshape(shape)).astype(dtype))
                assert self.rt._device(extra_dst[name], out.nbytes)
                ctypes.memmove(extra_dst[name], out.ctypes.data, out.nbytes)

        assert self.rt._device(src, int(np.prod(shape)) * self.in_dtype.itemsize)
        assert self.rt._device(dst, shape[0] * CLASSES * self.out_dtype.itemsize)
        if stream_handle in self.rt.capturing:
            self.rt.capturing[stream_handle].append(work)
        else:
            work()
        return True


@pytest.fixture
def fake(monkeypatch):
    rt = FakeRuntime()
    monkeypatch.setattr(device, "cudart", lambda: rt)
    return rt


def _execution(rt, in_dtype=np.float32, out_dtype=np.float32):
    context = FakeContext(rt, in_dtype, out_dtype)
    return PlanExecution(context, "input", "logits", (C, H, W), MAX_BATCH, in_dtype, out_dtype), context


def _batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, C, H, W)).astype(np.float32)


@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float16, np.float16), (np.float16, np.float32)])
def test_run_copies_in_executes_and_copies_out_for_every_batch(fake, dtypes):
    execution, context = _execution(fake, *dtypes)
    allocations = len(fake.memory)
    for n in (1, 3, MAX_BATCH):
        x = _batch(n, seed=n)
        want = (x.astype(dtypes[0]).astype(np.float32).reshape(n, -1) @ context.weight).astype(dtypes[1])
        got = execution.run(x)
        assert got.dtype == np.float32 and got.shape == (n, CLASSES)
        np.testing.assert_array_equal(got, want.astype(np.float32))
    assert len(fake.memory) == allocations, "a call must not allocate device memory"
    assert fake.calls[-3:] == ["cudaMemcpyAsync", "cudaMemcpyAsync", "cudaStreamSynchronize"]


def test_a_batch_outside_the_profile_is_refused_before_any_copy(fake):
    execution, _ = _execution(fake)
    copies = fake.calls.count("cudaMemcpyAsync")
    with pytest.raises(CudaError, match="batch 9 is outside the plan's 1-8"):
        execution.run(_batch(MAX_BATCH + 1))
    assert fake.calls.count("cudaMemcpyAsync") == copies


def test_a_graph_replays_the_captured_run_on_buffers_of_its_own(fake):
    execution, _ = _execution(fake, np.float16, np.float16)
    replay = execution.graph(4)
    assert fake.calls[fake.calls.index("cudaStreamBeginCapture") :][:3] == [
        "cudaStreamBeginCapture",
        "cudaStreamEndCapture",
        "cudaGraphInstantiate",
    ], "only TensorRT's work is captured, no copy"
    first = _batch(4, seed=5)
    want = execution.run(first)
    execution.run(_batch(2, seed=6))  # rebinding the context for another batch must not disturb the graph
    np.testing.assert_array_equal(replay(first), want)
    np.testing.assert_array_equal(replay(_batch(4, seed=7)), execution.run(_batch(4, seed=7)))
    with pytest.raises(CudaError, match="captured for batch 4, got 3"):
        replay(_batch(3))


def test_every_output_of_a_diagnostic_plan_is_bound_and_returned(fake):
    def block(x):
        return 2 * x.transpose(0, 2, 3, 1)  # an NHWC module output

    context = FakeContext(fake, np.float32, np.float32, extra={"network.0": (block, np.float16)})
    execution = PlanExecution(context, "input", "logits", (C, H, W), MAX_BATCH, extra_outputs={"network.0": np.float16})
    for n in (1, 5):
        x = _batch(n, seed=n)
        got = execution.run_all(x)
        assert set(got) == {"logits", "network.0"} and all(v.dtype == np.float32 for v in got.values())
        np.testing.assert_array_equal(got["network.0"], block(x).astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got["logits"], x.reshape(n, -1) @ context.weight)
    replay = execution.graph(2)  # a graph binds every output too
    np.testing.assert_array_equal(replay(_batch(2, seed=9)), execution.run(_batch(2, seed=9)))


def test_close_frees_every_buffer_graph_and_the_stream_once(fake):
    execution, _ = _execution(fake)
    execution.graph(2)
    execution.close()
    assert fake.memory == {} and fake.streams == set() and fake.graphs == 0
    execution.close()
    assert fake.calls.count("cudaStreamDestroy") == 1


def test_a_failed_cuda_call_is_one_line_naming_the_call_and_the_error(monkeypatch):
    rt = FakeRuntime(fail="cudaMalloc")
    monkeypatch.setattr(device, "cudart", lambda: rt)
    with pytest.raises(CudaError, match=r"^CUDA cudaMalloc failed: cudaErrorMemoryAllocation$"):
        _execution(rt)


def test_the_stand_in_calls_take_the_real_bindings_arguments():
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed")
    for name, method in inspect.getmembers(FakeRuntime, inspect.isfunction):
        if not name.startswith("cuda"):
            continue
        real = getattr(runtime, name)
        declared = re.match(rf"{name}\((.*)\)", real.__doc__.strip()).group(1)
        real_params = [p.split(":")[0].split()[-1] for p in declared.split(",") if p.strip()]
        assert list(inspect.signature(method).parameters)[1:] == real_params, name


def test_without_a_gpu_the_real_bindings_fail_in_one_line():
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed")
    err, count = runtime.cudaGetDeviceCount()
    if err == runtime.cudaError_t.cudaSuccess and count > 0:
        pytest.skip("this machine has a GPU; python -m pipeline.gpu_check runs a plan there")
    with pytest.raises(CudaError, match=r"^CUDA cudaStreamCreateWithFlags failed: cudaError\w+$"):
        PlanExecution(FakeContext(FakeRuntime(), np.float32, np.float32), "input", "logits", (C, H, W), MAX_BATCH)
