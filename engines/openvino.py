"""OpenVINO on the CPU: an IR built from the project's ONNX graph, its sidecar, and a runner.

``build_ir(graph, "model.xml", "int8")`` writes ``model.xml`` + ``model.bin`` (OpenVINO's IR)
and ``model.openvino.json`` (the sidecar; ``model.json`` is a TensorRT plan's, and one output
directory may hold both). ``OpenVINORunner("model.xml")`` runs it with the same interface as
``engines.ort.OnnxRuntimeRunner`` and ``engines.runtime.TensorRTRunner``.

Facts the code relies on (OpenVINO 2026.4, CPU plugin):

* **The precision hint is always explicit.** Without ``INFERENCE_PRECISION_HINT`` the CPU
  plugin computes in bf16 wherever the CPU has bf16 instructions (AVX-512 BF16 or AMX), so an
  "fp32" deployment silently would not be one. The rule (:func:`choose_hint`): fp32 asks for
  f32; fp16 asks for the 16-bit float the CPU runs natively, bf16 where
  ``OPTIMIZATION_CAPABILITIES`` lists BF16, else f16 where it lists FP16, else f32 with a line
  saying so; int8 runs the graph's explicit Q/DQ in int8 and the float parts with the fp16
  rule. Where a hint is not supported the plugin substitutes another without an error (asked
  for f16 on a CPU that lists only BF16, it computes bf16), so the sidecar records the hint
  the compiled model reports, not the one asked for.
* **Which graph an fp16 IR is built from** (:func:`source_precision`): with the bf16 hint (or
  f32, where the CPU has no 16-bit float) the fp32 graph, so that OpenVINO rounds once, to
  bf16; from the fp16 graph the weights would be rounded twice, to fp16 and then to bf16. On
  10,000 CIFAR-10 images the shipped checkpoint agreed with PyTorch on top-1 99.92 % of the
  time from the fp32 graph and 99.87 % from the fp16 graph (the fp16 gate asks 99.9 %), at
  the same speed. With the f16 hint the fp16 graph is used: its fp32 islands (nodes whose
  measured range fp16 cannot hold) are what that hint needs.
* **int8 is checked on the compiled model**: the runtime graph
  (``compiled_model.get_runtime_model()``) names each node's ``layerType`` and
  ``runtimePrecision``. Every GEMM the graph quantizes (a MatMul, Gemm or Conv fed by
  DequantizeLinear) must run as an int8 FullyConnected or Convolution; a build where one runs
  in float is refused (:class:`Int8FallbackError`): it would be labelled int8 while computing
  in float, and neither its speed nor its accuracy would be the int8 artifact's.
* **The model card** stays in the IR's rt_info (``framework`` / ``s2mlpv2.card``), where a C++
  program reads it (``model->get_rt_info<std::string>("framework", "s2mlpv2.card")``).
* **Weights are saved as they are** (``compress_to_fp16=False``): OpenVINO's default would
  round fp32 weights to fp16 in the file.
* **Shapes**: the IR keeps the dynamic batch. The runner compiles a static-shape copy for each
  batch size it meets (up to ``max_static_shapes``; more sizes share one dynamic-shape
  compile), which lets the CPU plugin fuse more (fewer layout reorders, quantization folded
  into the element-wise kernels) and pick kernels for the exact shape.
* The CPU plugin is documented and validated for Intel CPUs; on AMD it runs, with known
  performance regressions, and int8 without VNNI instructions can saturate. The build says so
  in one line where it applies; verify's gates and the benchmark decide whether the IR is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import S2MLPv2Error
from common.fileio import atomic_paths, sha256_file
from common.module_names import onnx_node_name
from common.onnx_meta import CARD_KEY, REPAIRS_KEY, SHIFT_IMPL_KEY, graph_precision, load_onnx, read_metadata

from .package import PRECISIONS
from .runtime import check_array

__all__ = [
    "operation_names",
    "tap",
    "OpenVINOUnavailable",
    "IRError",
    "Int8FallbackError",
    "IRSidecar",
    "IRBuildResult",
    "Int8Check",
    "available",
    "openvino_version",
    "cpu_facts",
    "choose_hint",
    "hint_candidates",
    "source_precision",
    "build_ir",
    "check_int8",
    "ir_sidecar_path",
    "read_ir_sidecar",
    "CompiledModels",
    "OpenVINORunner",
    "compile_onnx",
    "GEMM_LAYERS",
]

SIDECAR_FORMAT = "s2mlpv2-openvino/1"
INSTALL_HINT = "`pip install openvino` (wheels for Linux, Windows and macOS)"
DEVICE = "CPU"
# The runtime graph's layer types that do the model's multiply-adds.
GEMM_LAYERS = frozenset({"FullyConnected", "FullyConnectedQuantizedLegacy", "Convolution", "MatMul", "GroupConvolution"})
_INT8_TYPES = frozenset({"i8", "u8"})
# OPTIMIZATION_CAPABILITIES entry -> INFERENCE_PRECISION_HINT value, 16-bit floats in order of preference
_SIXTEEN_BIT = (("BF16", "bf16"), ("FP16", "f16"))
# INFERENCE_PRECISION_HINT value -> the precision a person reads
_COMPUTES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


class OpenVINOUnavailable(S2MLPv2Error, RuntimeError):
    """OpenVINO is not installed, or its CPU plugin cannot run here; the message says what to do."""


class IRError(S2MLPv2Error, RuntimeError):
    """An IR that is not this project's, is damaged, or does not match its sidecar."""


class Int8FallbackError(IRError):
    """A GEMM the graph quantizes would run in float on this CPU."""


# ----------------------------------------------------------------------------- OpenVINO itself


def _openvino():
    try:
        import openvino
    except ImportError:
        raise OpenVINOUnavailable(f"OpenVINO is not installed; {INSTALL_HINT}") from None
    return openvino


def available() -> bool:
    """OpenVINO imports (its CPU plugin is part of every wheel)."""
    try:
        _openvino()
    except OpenVINOUnavailable:
        return False
    return True


def openvino_version() -> str:
    """``2026.4.1``: the release, without the build suffix."""
    return _openvino().get_version().split("-")[0]


def _core():
    return _openvino().Core()


def cpu_facts(core=None) -> tuple[str, tuple[str, ...]]:
    """(CPU name, ``OPTIMIZATION_CAPABILITIES``) as OpenVINO's CPU plugin reports them."""
    core = core or _core()
    return str(core.get_property(DEVICE, "FULL_DEVICE_NAME")), tuple(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def choose_hint(precision: str, capabilities: tuple[str, ...]) -> tuple[str, str | None]:
    """(``INFERENCE_PRECISION_HINT``, note or None) for a graph of ``precision`` (fp32, fp16, int8) on a CPU with ``capabilities``.

    fp16 and the float parts of int8 take the 16-bit float the CPU runs natively (bf16 first,
    then f16); without either, f32, and the note says so in one line.
    """
    if precision not in PRECISIONS:
        raise IRError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if precision == "fp32":
        return "f32", None
    for capability, hint in _SIXTEEN_BIT:
        if capability in capabilities:
            return hint, None
    what = "fp16" if precision == "fp16" else "the float parts of the int8 graph"
    return "f32", (
        f"this CPU lists neither BF16 nor FP16 in OpenVINO's OPTIMIZATION_CAPABILITIES ({', '.join(capabilities)}): "
        f"{what} compute in f32"
    )


def hint_candidates(precision: str, capabilities: tuple[str, ...]) -> tuple[str, ...]:
    """The hints worth measuring for a graph of ``precision``: for int8 on a CPU with a 16-bit float, that float and
    f32 for the float parts (``pipeline.ir_hint`` picks one by fidelity and speed); otherwise :func:`choose_hint`'s alone."""
    hint, _ = choose_hint(precision, capabilities)
    return (hint, "f32") if precision == "int8" and hint != "f32" else (hint,)


def source_precision(precision: str, capabilities: tuple[str, ...]) -> str:
    """The precision of the graph an IR of ``precision`` is built from on a CPU with ``capabilities``.

    int8: the int8 graph. fp16: the fp16 graph only where the hint is f16; with bf16 (or f32)
    the fp32 graph, which OpenVINO rounds once instead of twice (see the module docstring).
    """
    if precision == "fp16" and choose_hint(precision, capabilities)[0] != "f16":
        return "fp32"
    return precision


def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_notes(cpu: str, capabilities: tuple[str, ...], precision: str) -> list[str]:
    """One line per thing a reader must know about OpenVINO on this CPU (empty where there is none)."""
    notes = []
    if "AMD" in cpu.upper():
        notes.append(
            f"OpenVINO's CPU plugin is validated on Intel CPUs; on this {cpu} it runs with known performance regressions: "
            "verify's gates and the benchmark decide whether the IR is used"
        )
    flags = _cpu_flags()
    if precision == "int8" and flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        notes.append("this CPU has no VNNI instructions: OpenVINO's int8 GEMMs can saturate here; verify's gates decide")
    return notes


def _compile(
    core, model, hint: str, threads: int | None, profile: bool = False, pinning: bool | None = None, streams: int | None = None
):
    """The model compiled for the CPU with every setting explicit: precision hint, latency mode, threads (and pinning,
    and the number of streams: requests that run at once; the latency mode's default is one)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if streams:
        config["NUM_STREAMS"] = int(streams)
    if pinning is not None:
        config["ENABLE_CPU_PINNING"] = pinning
    if profile:
        config["PERF_COUNT"] = True
    return core.compile_model(model, DEVICE, config)


def _effective_hint(compiled) -> str:
    """The precision the compiled model computes float ops in (``f32``, ``bf16`` or ``f16``), as it reports it."""
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())


# ----------------------------------------------------------------------------- the int8 check


@dataclass
class Int8Check:
    """Which of the graph's quantized GEMMs run in int8 in the compiled model."""

    quantized_in_graph: list[str]  # ONNX names of the GEMMs fed by DequantizeLinear
    int8_at_runtime: int  # runtime GEMM nodes computing in i8/u8
    float_at_runtime: list[str]  # runtime GEMM nodes computing in float (their original names)
    not_int8: list[str] = field(default_factory=list)  # quantized GEMMs found among the float ones

    def __bool__(self) -> bool:
        return not self.not_int8 and self.int8_at_runtime >= len(self.quantized_in_graph)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantized_in_graph": len(self.quantized_in_graph),
            "int8_at_runtime": self.int8_at_runtime,
            "float_at_runtime": len(self.float_at_runtime),
            "not_int8": self.not_int8,
            "passed": bool(self),
        }

    def __str__(self) -> str:
        head = f"{self.int8_at_runtime} GEMMs run in int8 for {len(self.quantized_in_graph)} quantized in the graph"
        if self:
            return f"{head}; {len(self.float_at_runtime)} unquantized GEMMs run in float"
        missing = self.not_int8 or [f"{len(self.quantized_in_graph) - self.int8_at_runtime} whose names OpenVINO merged"]
        return f"{head}; in float: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"


def quantized_gemms(onnx_model) -> list[str]:
    """Names of the MatMul, Gemm and Conv nodes with an input produced by DequantizeLinear (explicit Q/DQ)."""
    dq_outputs = {o for n in onnx_model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name for n in onnx_model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and any(i in dq_outputs for i in n.input)
    ]


def _rt(node, key: str) -> str:
    info = node.get_rt_info()
    return info[key].astype(str) if key in info else ""


def _original_names(node) -> set[str]:
    """The graph nodes a runtime node was fused from, without OpenVINO's suffixes (``/WithoutBiases``, ...)."""
    return {onnx_node_name(name) for name in _rt(node, "originalLayersNames").split(",") if name}


def check_int8(compiled, quantized: list[str]) -> Int8Check:
    """Which runtime GEMMs compute in int8 (``runtimePrecision`` i8/u8), against the graph's ``quantized`` GEMMs.

    OpenVINO renames some nodes when it folds the dequantization scales into them, so the check
    is by name where names survive, and by count everywhere: at least as many int8 GEMMs as
    quantized ones in the graph.
    """
    int8, floats, not_int8 = 0, [], []
    wanted = set(quantized)
    for node in compiled.get_runtime_model().get_ordered_ops():
        if _rt(node, "layerType") not in GEMM_LAYERS:
            continue
        names = _original_names(node)
        if _rt(node, "runtimePrecision") in _INT8_TYPES:
            int8 += 1
        else:
            floats.append(",".join(sorted(names)))
            not_int8 += sorted(names & wanted)
    return Int8Check(list(quantized), int8, floats, not_int8)


# ----------------------------------------------------------------------------- the sidecar


@dataclass(frozen=True)
class IRSidecar:
    """What an IR was built from and with; written beside it as ``<stem>.openvino.json``."""

    openvino_version: str
    precision: str  # the graph's precision and so its gates: fp32, fp16 or int8
    inference_precision_hint: str  # what the compiled model reported: f32, bf16 or f16
    requested_hint: str  # what the build asked for
    cpu: str
    optimization_capabilities: tuple[str, ...]
    onnx_sha256: str
    xml_sha256: str
    bin_sha256: str
    input_shape: tuple[int, int, int]  # C, H, W; the batch is dynamic
    card: dict[str, Any]
    source_graph: str = ""  # the ONNX file it was built from
    source_precision: str = ""  # that graph's precision (an fp16 IR with the bf16 hint is built from the fp32 graph)
    input_name: str = "input"
    output_name: str = "logits"
    int8: dict[str, Any] | None = None  # Int8Check.to_dict() for an int8 graph
    notes: tuple[str, ...] = ()
    hint_choice: dict[str, Any] | None = None  # int8: the float-part hints measured at build time, and why this one

    @property
    def computes(self) -> str:
        """What the IR computes in: ``int8``, ``bf16``, ``fp16`` or ``fp32``."""
        return "int8" if self.precision == "int8" else _COMPUTES.get(self.inference_precision_hint, self.inference_precision_hint)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SIDECAR_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path) -> IRSidecar:
        if d.get("format") != SIDECAR_FORMAT:
            raise IRError(
                f"{where} is not an OpenVINO IR sidecar of this project (format {d.get('format')!r}, expected "
                f"{SIDECAR_FORMAT!r}); rebuild the IR with build_engine.py --backend openvino"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["optimization_capabilities"] = tuple(values["optimization_capabilities"])
        values["input_shape"] = tuple(values["input_shape"])
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)

    def check_files(self, xml: Path) -> None:
        """Refuse an IR whose files are not the ones this sidecar was written for (truncated, replaced, missing)."""
        for path, digest in ((xml, self.xml_sha256), (xml.with_suffix(".bin"), self.bin_sha256)):
            if not path.is_file():
                raise IRError(f"{path} is missing: an IR is its .xml and .bin together; rebuild the IR")
            if sha256_file(path) != digest:
                raise IRError(
                    f"{path} is not the file its sidecar {ir_sidecar_path(xml).name} describes (changed or truncated "
                    "since it was built); rebuild the IR"
                )


def ir_sidecar_path(xml: str | os.PathLike) -> Path:
    """``model.xml`` -> ``model.openvino.json`` (``model.json`` is a TensorRT plan's sidecar)."""
    xml = Path(xml)
    return xml.with_name(f"{xml.stem}.openvino.json")


def read_ir_sidecar(xml: str | os.PathLike) -> IRSidecar:
    path = ir_sidecar_path(xml)
    if not path.is_file():
        raise IRError(
            f"{path} is missing: this project loads an IR only with the sidecar written beside it (its precision hint and "
            "hashes); rebuild the IR with build_engine.py --backend openvino"
        )
    try:
        return IRSidecar.from_dict(json.loads(path.read_text()), path)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise IRError(f"{path} is not a valid IR sidecar ({e}); rebuild the IR") from None


# ----------------------------------------------------------------------------- building


@dataclass
class IRBuildResult:
    xml: Path
    sidecar: IRSidecar
    notes: list[str]

    @property
    def line(self) -> str:
        sc = self.sidecar
        int8 = f"; every one of the graph's {sc.int8['quantized_in_graph']} quantized GEMMs runs in int8" if sc.int8 else ""
        return (
            f"{self.xml.name}: OpenVINO {sc.openvino_version} IR from {sc.source_graph}, computes {sc.computes} "
            f"(INFERENCE_PRECISION_HINT {sc.inference_precision_hint}) on {sc.cpu}{int8}"
        )


def _read_model(core, path: Path, error: type[S2MLPv2Error] = IRError):
    try:
        return core.read_model(str(path))
    except Exception as e:  # OpenVINO raises its own RuntimeError subclasses for unreadable files
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise error(f"OpenVINO cannot read {path} ({reason}); rebuild it") from None


def build_ir(
    graph: str | os.PathLike,
    xml: str | os.PathLike,
    precision: str | None = None,
    hint: str | None = None,
    hint_choice: dict[str, Any] | None = None,
) -> IRBuildResult:
    """Write ``xml`` + its ``.bin`` + its sidecar from the ONNX ``graph`` (all three or none).

    ``precision`` is the deployment's (fp32, fp16, int8: it picks the hint and the gates;
    default: what the precision stage recorded in ``graph``); :func:`source_precision` says
    which graph to give for it. The model is compiled once here, with the hint it will run
    with: the hint the compiled model reports is recorded, and an int8 graph is refused if a
    quantized GEMM would run in float (:class:`Int8FallbackError`). ``hint`` overrides
    :func:`choose_hint` with one of :func:`hint_candidates`; ``hint_choice`` (the measurements that
    chose it) is recorded in the sidecar.
    """
    ov = _openvino()
    graph, xml = Path(graph), Path(xml)
    if xml.suffix != ".xml":
        raise IRError(f"an OpenVINO IR is written as NAME.xml (+ NAME.bin), got {xml.name}")
    proto = load_onnx(graph, IRError)
    props = read_metadata(proto)
    if CARD_KEY not in props:
        raise IRError(f"{graph} was not written by this project's export stage (no {CARD_KEY} metadata); export it first")
    if props.get(SHIFT_IMPL_KEY) == "plugin":
        raise IRError(
            f"{graph} holds SpatialShift plugin nodes, which only TensorRT runs; "
            "export with --shift-impl onnx (the default) for OpenVINO"
        )
    precision = precision or graph_precision(proto)
    core = _core()
    cpu, capabilities = cpu_facts(core)
    if precision == "int8" and "INT8" not in capabilities:
        raise Int8FallbackError(
            f"OpenVINO's CPU plugin lists no INT8 on this {cpu} ({', '.join(capabilities)}); "
            "build --precision fp16 for OpenVINO, or run the int8 graph on ONNX Runtime (--backend onnxruntime)"
        )
    default, note = choose_hint(precision, capabilities)
    if hint is None:
        hint = default
    elif hint not in hint_candidates(precision, capabilities):
        raise IRError(
            f"hint {hint!r} is not one this {cpu} offers for {precision} ({', '.join(hint_candidates(precision, capabilities))})"
        )
    notes = [*([note] if note and hint == default else []), *cpu_notes(cpu, capabilities, precision)]
    model = _read_model(core, graph)
    # the ONNX frontend carries metadata_props into rt_info; set it explicitly so the IR never lacks the card
    model.set_rt_info(props[CARD_KEY], ["framework", CARD_KEY])
    if REPAIRS_KEY in props:  # the int8 stage's repairs, by module, as the ONNX graph lists them
        model.set_rt_info(props[REPAIRS_KEY], ["framework", REPAIRS_KEY])
    compiled = _compile(core, model, hint, threads=None)
    effective = _effective_hint(compiled)
    if effective != hint:
        notes.append(f"asked OpenVINO for {hint}, the compiled model computes {effective}: recorded as {effective}")
    int8 = None
    if precision == "int8":
        check = check_int8(compiled, quantized_gemms(proto))
        if not check:
            raise Int8FallbackError(
                f"{check} on this {cpu}: OpenVINO would run them in float under an int8 label; "
                "build --precision fp16 for OpenVINO, or run the int8 graph on ONNX Runtime (--backend onnxruntime)"
            )
        int8 = check.to_dict()
    del compiled
    c, h, w = (int(d) for d in model.inputs[0].get_partial_shape()[1:].to_shape())
    with atomic_paths(xml, xml.with_suffix(".bin"), ir_sidecar_path(xml)) as (xml_tmp, bin_tmp, sidecar_tmp):
        with tempfile.TemporaryDirectory(prefix=".ir-", dir=xml.parent) as tmp:
            ov.save_model(model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)  # weights as they are
            os.replace(Path(tmp) / "model.xml", xml_tmp)
            os.replace(Path(tmp) / "model.bin", bin_tmp)
        sidecar = IRSidecar(
            openvino_version=openvino_version(),
            precision=precision,
            inference_precision_hint=effective,
            requested_hint=hint,
            cpu=cpu,
            optimization_capabilities=capabilities,
            onnx_sha256=sha256_file(graph),
            xml_sha256=sha256_file(xml_tmp),
            bin_sha256=sha256_file(bin_tmp),
            input_shape=(c, h, w),
            card=json.loads(props[CARD_KEY]),
            int8=int8,
            notes=tuple(notes),
            source_graph=graph.name,
            source_precision=graph_precision(proto),
            hint_choice=hint_choice,
        )
        sidecar_tmp.write_text(json.dumps(sidecar.to_dict(), indent=2) + "\n")
    return IRBuildResult(xml, sidecar, notes)


# ----------------------------------------------------------------------------- running


class CompiledModels:
    """A model compiled for the CPU with one precision hint, per batch size, run from a pool of infer requests.

    Safe to call from several threads at once: every call takes an infer request of its own
    from its batch size's pool (a new one when all are busy) and returns it afterwards, and a
    new batch size is compiled under a lock. The first ``max_static_shapes`` batch sizes each
    get a static-shape compile; further sizes share one dynamic-shape compile.
    """

    backend = "openvino"
    batch_range = (1, None)  # (smallest, largest): any batch runs
    thread_safe = True

    def __init__(
        self,
        model,
        core,
        hint: str,
        precision: str,
        input_shape,
        threads: int | None,
        max_static_shapes: int = 8,
        pinning: bool | None = None,
        streams: int | None = None,
    ):
        self._model, self._core = model, core
        self.hint, self.precision, self.threads, self.pinning = hint, precision, threads, pinning
        self.streams = streams
        self.input_shape = tuple(input_shape)
        self.input_name = model.inputs[0].get_any_name()
        self.max_static_shapes = max_static_shapes
        self.device = f"CPU ({cpu_facts(core)[0]})"
        self._lock = threading.Lock()
        self._compiled: dict[int | None, tuple[Any, queue.SimpleQueue]] = {}  # batch (None: dynamic) -> (compiled, requests)

    @property
    def settings(self) -> dict[str, Any]:
        """The compile settings, as recorded in reports."""
        return {
            "INFERENCE_PRECISION_HINT": self.hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads or 0,
            "ENABLE_CPU_PINNING": "default" if self.pinning is None else self.pinning,
            "NUM_STREAMS": self.streams or "default (1 in latency mode)",
            "static_batch_shapes": self.max_static_shapes,
        }

    def compiled(self, batch: int):
        """(compiled model, its request pool) for ``batch`` images, compiled on first use."""
        with self._lock:
            key: int | None = batch if batch in self._compiled or len(self._compiled) < self.max_static_shapes else None
            if key not in self._compiled:
                compiled = _compile(
                    self._core, self._shaped(key), self.hint, self.threads, pinning=self.pinning, streams=self.streams
                )
                self._compiled[key] = (compiled, queue.SimpleQueue())
            return self._compiled[key]

    def _shaped(self, batch: int | None):
        if batch is None:
            return self._model
        model = self._model.clone()
        model.reshape({self.input_name: [batch, *self.input_shape]})
        return model

    def __call__(self, batch) -> np.ndarray:
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        check_array(batch, self.input_shape, "the IR")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        compiled, requests = self.compiled(batch.shape[0])
        try:
            request = requests.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            request.infer({0: batch})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            requests.put(request)

    def profile(self, batch: np.ndarray, runs: int = 3) -> dict[str, Any]:
        """OpenVINO's per-node profile (``PERF_COUNT``) of ``runs`` calls on ``batch``, after one warm-up call.

        The model is compiled again, as for ``batch``, with profiling on. Returns the node types
        sorted by time, each with its kernel (``exec_type``, e.g. ``brgemm_avx512_i8``), ms per
        run (per node the median over the runs, so one preempted call does not skew it), share,
        node count and whether it is a GEMM; and the totals.
        """
        import time

        key = batch.shape[0] if len(self._compiled) < self.max_static_shapes or batch.shape[0] in self._compiled else None
        compiled = _compile(self._core, self._shaped(key), self.hint, self.threads, profile=True, pinning=self.pinning)
        request = compiled.create_infer_request()
        x = np.ascontiguousarray(batch, dtype=np.float32)
        request.infer({0: x})
        per_node: dict[tuple[str, str, str], list[float]] = {}
        t0 = time.perf_counter()
        for _ in range(runs):
            request.infer({0: x})
            for info in request.profiling_info:
                if info.status.name == "EXECUTED":
                    key3 = (info.node_name, info.node_type, info.exec_type)
                    per_node.setdefault(key3, []).append(info.real_time.total_seconds() * 1e3)
        wall_ms = (time.perf_counter() - t0) * 1e3 / runs
        ms: dict[tuple[str, str], float] = {}
        nodes: dict[tuple[str, str], int] = {}
        for (_, node_type, exec_type), times in per_node.items():
            ms[node_type, exec_type] = ms.get((node_type, exec_type), 0.0) + float(np.median(times))
            nodes[node_type, exec_type] = nodes.get((node_type, exec_type), 0) + 1
        total = sum(ms.values()) or 1e-9
        ops = [
            {"op": op, "kernel": kernel, "ms": t, "share": t / total, "nodes": nodes[op, kernel], "gemm": _is_gemm(op)}
            for (op, kernel), t in sorted(ms.items(), key=lambda kv: -kv[1])
        ]
        return {"wall_ms": wall_ms, "kernel_ms": total, "gemm_ms": sum(o["ms"] for o in ops if o["gemm"]), "ops": ops}


class OpenVINORunner(CompiledModels):
    """Runs an IR of this project on the CPU: ``runner(batch) -> logits`` (float32 NCHW numpy in, float32 numpy out).

    Safe to call from several threads at once (one infer request per call, from a pool; see
    :class:`CompiledModels`). Before anything is compiled, the sidecar is read, the ``.xml`` and
    ``.bin`` are checked against its hashes, and the IR must carry this project's model card.
    The precision hint is the sidecar's; on a CPU without that precision the fp16 rule of
    :func:`choose_hint` picks again and ``note`` says so.

    Threads are not pinned to cores (``ENABLE_CPU_PINNING`` off; OpenVINO pins them by default
    on Linux): on a machine whose cores other processes also use, a pinned thread waits for its
    own core at every synchronisation point while another core may be free. Paired, interleaved
    runs on a shared 2-core machine measured Small/7 int8 1.4x faster at batch 1 and 1.1x at
    batch 8 unpinned. ``pinning=None`` keeps OpenVINO's default.

    Attributes: ``path``, ``backend`` (``"openvino"``), ``input_shape`` (C, H, W), ``device``
    (``"CPU (<name>)"``), ``batch_range`` (``(1, None)``: any batch runs), ``thread_safe``,
    ``precision`` (what it computes in: ``int8``, ``bf16``, ``fp16`` or ``fp32``), ``hint`` (the
    ``INFERENCE_PRECISION_HINT``).
    """

    def __init__(
        self,
        xml: str | os.PathLike,
        threads: int | None = None,
        max_static_shapes: int = 8,
        pinning: bool | None = False,
        streams: int | None = None,
    ) -> None:
        self.path = Path(xml)
        if not self.path.is_file():
            raise IRError(f"IR not found: {self.path}")
        self.sidecar = read_ir_sidecar(self.path)
        self.sidecar.check_files(self.path)
        core = _core()
        model = _read_model(core, self.path)
        if not model.has_rt_info(["framework", CARD_KEY]):
            raise IRError(f"{self.path} carries no {CARD_KEY} in its rt_info: not an IR of this project; rebuild it")
        cpu, capabilities = cpu_facts(core)
        hint, self.note = self.sidecar.inference_precision_hint, None
        if hint != "f32" and _CAPABILITY[hint] not in capabilities:
            hint, _ = choose_hint("fp16", capabilities)
            self.note = (
                f"{self.path.name} was built for {self.sidecar.inference_precision_hint} on {self.sidecar.cpu}; "
                f"this {cpu} lacks it: computing in {hint}"
            )
        precision = "int8" if self.sidecar.precision == "int8" else _COMPUTES[hint]
        super().__init__(model, core, hint, precision, self.sidecar.input_shape, threads, max_static_shapes, pinning, streams)
        self.output_name = self.sidecar.output_name


def compile_onnx(graph: str | os.PathLike, hint: str, threads: int | None = None, pinning: bool | None = None) -> CompiledModels:
    """Any ONNX classifier ``(B, C, H, W) -> logits`` on OpenVINO with ``hint``, as a user compiles it: no sidecar, no checks."""
    core = _core()
    model = _read_model(core, Path(graph))
    shape = model.inputs[0].get_partial_shape()
    return CompiledModels(
        model, core, hint, _COMPUTES[hint], tuple(int(d.get_length()) for d in shape[1:]), threads, pinning=pinning
    )


_CAPABILITY = {hint: capability for capability, hint in _SIXTEEN_BIT}


def _is_gemm(node_type: str) -> bool:
    return node_type in GEMM_LAYERS or bool(re.match(r"(FullyConnected|Convolution|MatMul)", node_type))


def operation_names(runner: CompiledModels) -> list[str]:
    """The friendly names of the runner's computing operations (no constants, parameters or results), in execution
    order. An IR of this project names each after the ONNX node it came from (``common.module_names``)."""
    skip = {"Constant", "Parameter", "Result"}
    return [op.get_friendly_name() for op in runner._model.get_ordered_ops() if op.get_type_name() not in skip]


def tap(runner: CompiledModels, names: Sequence[str]) -> Callable[[np.ndarray], list[np.ndarray]]:
    """``run(batch) -> [logits, *outputs of the operations named names]``: the runner's model, compiled once more with
    those operations' first outputs added as model outputs (OpenVINO keeps a model output as it is computed)."""
    model = runner._model.clone()
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    missing = [n for n in names if n not in ops]
    if missing:
        raise IRError(f"{runner.path if hasattr(runner, 'path') else 'the IR'} has no operation {missing[0]!r}")
    model.add_outputs([ops[n].output(0) for n in names])
    compiled = _compile(runner._core, model, runner.hint, runner.threads, pinning=runner.pinning)
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.array(request.get_output_tensor(i).data, dtype=np.float32, copy=True) for i in range(1 + len(names))]

    return run
