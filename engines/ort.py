"""ONNX Runtime sessions for our graphs, on whatever provider is available.

Graphs in plugin form hold ``SpatialShift`` nodes that only TensorRT (through our plugin) runs
natively. For ONNX Runtime, :func:`make_session` re-tags a copy of such a graph into
onnxruntime-extensions' custom-op domain and registers a Python implementation that calls
``models.shift.shift_numpy``: numpy, the same copies as the model's ``shift_reference`` (a test
holds them equal), so running a graph needs no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engines.runtime import check_array
from engines.shift_node import ONNX_DOMAIN, PLUGIN_NAME

__all__ = ["OnnxRuntimeRunner", "make_session", "session_with_outputs", "build_optimized_graph", "has_plugin_nodes"]

_ORTX_DOMAIN = "ai.onnx.contrib"
_registered = False


def has_plugin_nodes(model) -> bool:
    """SpatialShift nodes, in our domain or already re-tagged for onnxruntime-extensions."""
    return any(n.op_type == PLUGIN_NAME and n.domain in (ONNX_DOMAIN, _ORTX_DOMAIN) for n in model.graph.node)


def _register_python_shift() -> None:
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    from models.shift import shift_numpy

    # float32 only: precision-converted graphs are made from the standard form (plugin nodes are swapped in after quantizing).
    @onnx_op(
        op_type=PLUGIN_NAME,
        inputs=[PyCustomOpDef.dt_float],
        outputs=[PyCustomOpDef.dt_float],
        attrs={"pattern": PyCustomOpDef.dt_int64},
    )
    def _shift(x, **kwargs):
        return shift_numpy(np.asarray(x), int(kwargs["pattern"]))

    _registered = True


def _retag_for_extensions(model):
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        if node.op_type == PLUGIN_NAME and node.domain == ONNX_DOMAIN:
            node.domain = _ORTX_DOMAIN
            keep = [a for a in node.attribute if a.name == "pattern"]
            del node.attribute[:]
            node.attribute.extend(keep)
    imports = [o for o in model.opset_import if o.domain != ONNX_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports + [onnx.helper.make_opsetid(_ORTX_DOMAIN, 1)])
    return model


def make_session(
    model_or_path,
    threads: int | None = None,
    optimization: str = "all",
    optimized_model_path: str | None = None,
    profile_prefix: str | None = None,
):
    """An ``InferenceSession`` on the best available provider (CPU when there is no GPU).

    ``profile_prefix`` turns on ONNX Runtime's profiler; ``session.end_profiling()`` then
    returns the path of its JSON trace (per-node kernel times).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads:
        opts.intra_op_num_threads = threads
    if optimized_model_path:
        opts.optimized_model_filepath = optimized_model_path
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if has_plugin_nodes(model):
        from onnxruntime_extensions import get_library_path

        _register_python_shift()
        opts.register_custom_ops_library(get_library_path())
        model = _retag_for_extensions(model)
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_usable():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=providers)


def session_with_outputs(onnx_model, names: Sequence[str]):
    """A session on a copy of ``onnx_model`` whose graph also outputs the tensors ``names`` (intermediate values)."""
    import onnx

    model = onnx.ModelProto.FromString(onnx_model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    return make_session(model)


def build_optimized_graph(graph: str | os.PathLike, target: str | os.PathLike) -> Path:
    """The ONNX Runtime "build": ``graph`` optimized for this machine (all graph optimizations), written atomically to ``target``."""
    from common.fileio import atomic_path

    with atomic_path(target) as tmp:
        make_session(graph, optimized_model_path=str(tmp))
    return Path(target)


def _cuda_usable() -> bool:
    from engines.trt import cuda_device

    return cuda_device() is not None


class OnnxRuntimeRunner:
    """Runs a graph with one input and one output: ``runner(batch) -> logits`` (numpy in, numpy out).

    Safe to call from several threads at once: ONNX Runtime documents ``InferenceSession.run`` as thread-safe.
    """

    backend = "onnxruntime"
    thread_safe = True

    def __init__(self, path: str | os.PathLike, threads: int | None = None, optimization: str = "all") -> None:
        import onnx

        self.path = Path(path)
        model = onnx.load(str(self.path))  # loaded once: the session is made from it too
        # plugin-form graphs run their SpatialShift nodes through a Python stand-in (onnxruntime-extensions)
        self.python_shift = has_plugin_nodes(model)
        self.session = make_session(model, threads=threads, optimization=optimization)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape[1:])  # (C, H, W); a dynamic size is a name, not an int
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.output_name = self.session.get_outputs()[0].name
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.batch_range = (fixed or 1, fixed)  # (smallest, largest or None): a graph with a dynamic batch takes any

    @property
    def providers(self) -> Sequence[str]:
        return self.session.get_providers()

    @property
    def device(self) -> str:
        if self.providers[0] == "CUDAExecutionProvider":
            return "CUDA GPU"
        from common.versions import cpu_name

        return f"CPU ({cpu_name()})"

    def __call__(self, batch) -> np.ndarray:
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        check_array(batch, self.input_shape, "the graph")
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return out.astype(np.float32, copy=False)
