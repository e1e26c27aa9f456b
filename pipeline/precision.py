"""Precision stage: fp32 ONNX -> fp16 (ModelOpt AutoCast) or int8 with explicit Q/DQ (ModelOpt quantizer).

``python -m pipeline.precision --onnx model.onnx --precision fp16 --out model-fp16.onnx``
``python -m pipeline.precision --onnx model.onnx --precision int8 --calib-data DIR --out model-int8.onnx``

In TensorRT 11 and TensorRT for RTX an engine's precision is what its ONNX graph says (networks
are strongly typed: no FP16 or INT8 builder flags, no calibrator), so this stage is
where FP16 and INT8 are decided:

* **fp16**: ModelOpt AutoCast with ``keep_io_types`` (the graph still takes and returns
  float32). With calibration images, AutoCast runs the fp32 graph on them and keeps in fp32
  every node whose inputs or outputs exceed ``--fp16-data-max``; this stage records those
  nodes and the largest activation it measured for every LayerNorm, reduction and softmax.
* **int8**: ModelOpt's ONNX quantizer, symmetric Q/DQ (zero point 0), entropy calibration by
  default, calibrated on class-stratified images preprocessed by the model card. Q/DQ go on
  the inputs of MatMul and Gemm only (``--qdq-placement gemm-inputs``): ONNX Runtime then runs
  each as one integer kernel, and no other tensor is rounded to int8 (a tensor that feeds two
  GEMMs gets one Q/DQ pair per GEMM, see ``own_qdq_per_consumer``). Convolutions (the patch
  embedding, which reads the image, and the stage transition) stay fp32 unless
  ``--quantize-conv``: ONNX Runtime has no int8 convolution with a float output, so Q/DQ there
  only cost accuracy, and rounding the input image was the largest single error. Each GEMM
  input that a Gelu writes is centred and scaled per channel before calibration
  (``pipeline.equalize``; ``--no-equalize-gelu`` turns it off). docs/PRECISION.md has the
  measurements behind these defaults. The report lists which nodes got Q/DQ and which stayed
  in higher precision. With a held-out slice of the calibration data, the int8 graph is checked
  on it as verify's gates judge logits (:func:`holdout_check`); where it fails, it is repaired:
  LayerNorm outputs with an activation outlier are smoothed into their GEMMs' weights
  (``pipeline.equalize.smooth_layernorm_outliers``), then the GEMMs whose own rounding costs the
  most are kept in fp32, a few per round, until it passes. Each repair is named by PyTorch module
  in the report and in the graph's metadata; ``repair=False`` (``--no-repair``) keeps the graph as
  quantized.
* **plugin graphs** are converted through their standard-ops twin: the shift nodes are
  lowered back to standard ops, the twin is converted (ModelOpt needs TensorRT to calibrate
  through a custom op), then the shifts are swapped back to plugin nodes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.args import CalibrationArgs
from common.cli import HelpFormatter, command
from common.errors import S2MLPv2Error
from common.fileio import atomic_path, atomic_write_json
from common.onnx_meta import PRECISION_KEY, REPAIRS_KEY, load_onnx, read_metadata, write_metadata
from engines.shift_node import ONNX_DOMAIN

from .equalize import equalize_gelu_inputs, fold_centres, smooth_layernorm_outliers
from .export import read_onnx_card
from .options import QDQ_PLACEMENTS, add_int8_arguments
from .plugin_swap import graph_links, lower_plugin_nodes, swap_in_plugin_nodes

__all__ = [
    "PrecisionError",
    "PrecisionReport",
    "QDQ_PLACEMENTS",
    "add_int8_arguments",
    "convert_fp16",
    "quantize_int8",
    "convert_precision",
    "small_gemms",
    "own_qdq_per_consumer",
    "sensitive_nodes",
    "main",
]

log = logging.getLogger("pipeline.precision")
WATCHED_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "Softmax")
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv")  # what the report lists as quantized or not
# The int8 defaults (docs/PRECISION.md has the measurements): Conv inputs keep fp32 and Gelu-fed
# GEMM inputs are equalized per channel, both with the "gemm-inputs" placement.
QUANTIZE_CONV = False
EQUALIZE_GELU = True
# The held-out check's bound on the mean KL divergence of the softmaxes, int8 against fp32. Measured on the shipped
# CIFAR-10 checkpoint's 64 held-out calibration images (docs/PRECISION.md): its clean int8 graph 4.8e-5; with a
# planted activation outlier (python -m models.outlier) 4.1e-4 at factor 50, whose 500-image verify then fails by a
# 0.6-point top-1 drop, and 4.1e-2 at factor 300.
HOLDOUT_KL = 2e-4
# ModelOpt keeps GEMMs that TensorRT runs faster unquantized in high precision: one row per
# image (a GEMV at batch 1) or K or N below 16. It passes its own list of them on as regular
# expressions, unanchored, so "node_linear_2" also excluded node_linear_21 to node_linear_29.
# We find the same GEMMs (``small_gemms``) and pass every exclusion as an exact name.
MIN_GEMM_DIM = 16


class PrecisionError(S2MLPv2Error, RuntimeError):
    """The conversion failed or missed its gate; the message says what to do."""


@dataclass
class PrecisionReport:
    precision: str
    seconds: float
    nodes: int
    kept_fp32: list[str] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)
    not_quantized: list[str] = field(default_factory=list)
    activation_max: dict[str, float] = field(default_factory=dict)
    equalized: list[str] = field(default_factory=list)
    fallback_rounds: list[dict[str, Any]] = field(default_factory=list)  # each held-out check: the step before it, its verdict
    repairs: list[dict[str, Any]] = field(default_factory=list)  # {"module", "repair": "input equalized" | "kept in fp32"}
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def __str__(self) -> str:
        lines = [f"{self.precision}: {self.nodes} nodes in {self.seconds:.1f} s"]
        if self.precision == "fp16":
            lines.append(
                f"kept in fp32 by measured range: {len(self.kept_fp32)} nodes"
                + (f" ({', '.join(self.kept_fp32[:6])}{' …' if len(self.kept_fp32) > 6 else ''})" if self.kept_fp32 else "")
            )
            if self.activation_max:
                by_op = Counter()
                peaks: dict[str, float] = {}
                for name, value in self.activation_max.items():
                    op = name.split(":", 1)[0]
                    by_op[op] += 1
                    peaks[op] = max(peaks.get(op, 0.0), value)
                lines.append(
                    "largest activations: " + ", ".join(f"{op} {peaks[op]:.3g} over {by_op[op]}" for op in sorted(peaks))
                )
        else:
            lines.append(
                f"Q/DQ on {len(self.quantized)} nodes; {len(self.not_quantized)} quantizable nodes left in higher precision"
            )
            if self.equalized:
                lines.append(f"Gelu-fed GEMM inputs equalized per channel: {len(self.equalized)}")
            for r in self.fallback_rounds:
                lines.append(f"held-out check, {r['step']}: {r['line']} ({'pass' if r['passed'] else 'fail'})")
            lines += [f"{r['module']}: {r['repair']}" for r in self.repairs]
        return "\n".join(lines)


@contextlib.contextmanager
def _quiet(verbose: bool):
    """ModelOpt logs at INFO level and draws progress bars: shown with ``verbose``, else kept out of the stage's output."""
    if verbose:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _float_outputs(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        types[v.name] = v.type.tensor_type.elem_type
    return types


def measure_activations(
    onnx_model, calibration: np.ndarray, ops: Sequence[str] = WATCHED_OPS, batch: int = 16
) -> dict[str, float]:
    """Largest |value| each watched node outputs on the calibration images (fp32 graph, ORT on CPU)."""
    watched = {n.output[0]: f"{n.op_type}:{n.name}" for n in onnx_model.graph.node if n.op_type in ops}
    names = list(watched)
    peaks = dict.fromkeys(names, 0.0)
    from engines.ort import session_with_outputs

    session = session_with_outputs(onnx_model, names)
    input_name = session.get_inputs()[0].name
    for i in range(0, len(calibration), batch):
        outs = session.run(names, {input_name: calibration[i : i + batch]})
        for name, out in zip(names, outs):
            peaks[name] = max(peaks[name], float(np.abs(out).max()))
    return {watched[n]: v for n, v in peaks.items()}


def convert_fp16(onnx_in: Path, calibration: np.ndarray | None, data_max: float = 512.0):
    """AutoCast to fp16, keeping io types; returns (model, report fields)."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    kwargs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if calibration is not None:
            npz = Path(tmp) / "calibration.npz"
            np.savez(npz, input=calibration[:64])
            kwargs["calibration_data"] = str(npz)
        converted = convert_to_mixed_precision(
            onnx_path=str(onnx_in), low_precision_type="fp16", keep_io_types=True, data_max=data_max, **kwargs
        )
    types = _float_outputs(converted)
    kept = [
        f"{n.op_type}:{n.name}"
        for n in converted.graph.node
        if n.op_type not in ("Cast", "Constant", "Shape")
        and n.output
        and types.get(n.output[0]) == onnx.TensorProto.FLOAT
        and any(types.get(i) == onnx.TensorProto.FLOAT for i in n.input if i)
    ]
    return converted, kept


def small_gemms(model) -> list[str]:
    """GEMMs to keep in high precision, by ModelOpt's rule for TensorRT: those with one row per
    image (a ``Gemm``, or a ``MatMul`` on a 2-D tensor: a GEMV at batch 1) and those whose weight
    has K or N below ``MIN_GEMM_DIM``."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*inferred.graph.value_info, *inferred.graph.input]
        if v.type.tensor_type.HasField("shape")
    }
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    names = []
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or not n.name:
            continue
        weight = weights.get(n.input[1], ())
        per_image = n.op_type == "Gemm" or rank.get(n.input[0]) == 2
        if per_image or (len(weight) >= 2 and min(weight[-2:]) < MIN_GEMM_DIM):
            names.append(n.name)
    return names


def own_qdq_per_consumer(model) -> int:
    """Give every consumer of a shared ``QuantizeLinear -> DequantizeLinear`` pair its own pair; returns how many were added.

    ONNX Runtime on x86 runs a quantized MatMul as one ``MatMulIntegerToFloat`` only after it
    turns the int8 activation into uint8, and it does that only for a Q -> DQ pair with a
    single consumer. The mixer's two expansion GEMMs read the same LayerNorm output, so the
    quantizer gives them one pair, and both would run as fp32 MatMuls after a dequantize. Each
    added pair reads its own copy of the scale and zero point: with shared ones, ONNX Runtime's
    common-subexpression pass would merge the pairs back. The values are unchanged.
    """
    import onnx

    graph = model.graph
    producer, consumers = graph_links(model)
    initializers = {t.name: t for t in graph.initializer}
    nodes, added = [], 0
    for n in graph.node:
        nodes.append(n)
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or not all(t in initializers for t in q.input[1:]):
            continue
        users = list({id(u): u for u in consumers.get(n.output[0], [])}.values())
        for k, user in enumerate(users[1:], start=1):
            params = []
            for t in q.input[1:]:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[t])
                copy.name = f"{t}_{k}"
                graph.initializer.append(copy)
                params.append(copy.name)
            quantized, dequantized = f"{q.output[0]}_{k}", f"{n.output[0]}_{k}"
            pair = [
                onnx.helper.make_node("QuantizeLinear", [q.input[0], *params], [quantized], name=f"{q.name}_{k}"),
                onnx.helper.make_node("DequantizeLinear", [quantized, *params], [dequantized], name=f"{n.name}_{k}"),
            ]
            pair[0].attribute.extend(q.attribute)
            pair[1].attribute.extend(n.attribute)
            nodes += pair
            user.input[:] = [dequantized if i == n.output[0] else i for i in user.input]
            added += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return added


def quantize_int8(
    onnx_in: Path,
    onnx_out: Path,
    calibration: np.ndarray,
    method: str = "entropy",
    nodes_to_exclude: Sequence[str] = (),
    placement: str = "gemm-inputs",
    *,
    quantize_conv: bool = QUANTIZE_CONV,
    equalize_gelu: bool = EQUALIZE_GELU,
    smooth_outliers: bool = False,
) -> tuple[list[str], list]:
    """Quantize ``onnx_in`` into ``onnx_out``; returns (the GEMMs whose Gelu input was equalized, the LayerNorms whose
    outlier was smoothed into their GEMMs' weights: ``pipeline.equalize.Smoothed``).

    ``quantize_conv``, ``equalize_gelu`` and ``smooth_outliers`` apply to the "gemm-inputs" placement; "modelopt"
    is ModelOpt's own placement, as it makes it."""
    import onnx
    from modelopt.onnx.quantization import quantize

    if method not in ("entropy", "max"):
        raise PrecisionError(f"calibration method must be 'entropy' or 'max', got {method!r}")
    if placement not in QDQ_PLACEMENTS:
        raise PrecisionError(f"Q/DQ placement must be one of {', '.join(QDQ_PLACEMENTS)}; got {placement!r}")
    model = onnx.load(str(onnx_in))
    exclude = [*small_gemms(model), *nodes_to_exclude]
    gemm_inputs = placement == "gemm-inputs"
    smoothed = smooth_layernorm_outliers(model, calibration, exclude) if gemm_inputs and smooth_outliers else []
    equalized = equalize_gelu_inputs(model, calibration, exclude) if gemm_inputs and equalize_gelu else []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "equalized.onnx" if equalized or smoothed else Path(onnx_in)
        if equalized or smoothed:
            onnx.save(model, str(source))
        quantize(
            onnx_path=str(source),
            quantize_mode="int8",
            calibration_data=calibration,
            calibration_method=method,
            calibration_eps=["cpu"],
            nodes_to_exclude=[re.escape(name) + "$" for name in exclude] or None,  # ModelOpt reads patterns
            enable_gemv_detection_for_trt=False,  # done above, without the prefix matching
            op_types_to_quantize=["MatMul", "Gemm", *(["Conv"] if quantize_conv else [])] if gemm_inputs else None,
            use_zero_point=False,  # TensorRT requires symmetric quantization
            high_precision_dtype="fp32",
            output_path=str(onnx_out),
            log_level="ERROR",
        )
    if gemm_inputs:
        quantized = onnx.load(str(onnx_out))
        own_qdq_per_consumer(quantized)
        fold_centres(quantized, equalized)
        onnx.save(quantized, str(onnx_out))
    return [e.gemm for e in equalized], smoothed


def qdq_summary(model) -> tuple[list[str], list[str]]:
    """(quantized, not quantized) among MatMul/Gemm/Conv nodes: quantized ones read a DequantizeLinear."""
    producers, _ = graph_links(model)
    quantized, plain = [], []
    for n in model.graph.node:
        if n.op_type not in QUANTIZABLE_OPS:
            continue
        fed_by_dq = any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input[:1])
        (quantized if fed_by_dq else plain).append(f"{n.op_type}:{n.name}")
    return quantized, plain


def _copy_metadata(src, dst, precision: str, repairs: Sequence[dict[str, Any]] = ()) -> None:
    """``src``'s metadata, the precision, and for int8 the repairs (``MODULE: repair``), into ``dst``."""
    import json

    props = {**read_metadata(src), PRECISION_KEY: precision}
    if precision == "int8":
        props[REPAIRS_KEY] = json.dumps([f"{r['module']}: {r['repair']}" for r in repairs])
    write_metadata(dst, props)


def _logits(model_or_path, images: np.ndarray, batch: int = 32, optimization: str = "all") -> np.ndarray:
    from engines.ort import make_session

    session = make_session(model_or_path, optimization=optimization)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)])


def holdout_check(reference: np.ndarray, deployed: np.ndarray, labeled: bool) -> dict[str, Any]:
    """The int8 graph's logits on the held-out slice, judged as verify's gates judge them: top-1 agreement (labeled
    slices) and the logits themselves, so that a drop too small to flip one of a few dozen images still fails: the
    minimum cosine against the int8 gate's threshold and the mean KL divergence against :data:`HOLDOUT_KL`."""
    from deployment.gates import compare_logits

    return holdout_verdict(compare_logits(reference, deployed, None, "int8").metrics, labeled)  # verify's own measures


def holdout_verdict(metrics: dict[str, Any], labeled: bool) -> dict[str, Any]:
    """:func:`holdout_check`'s judgement of metrics ``deployment.gates.compare_logits`` already measured."""
    from deployment.gates import GATES, Gate

    int8 = {g.metric: g for g in GATES["int8"]["labeled"] + GATES["int8"]["unlabeled"]}
    gates = [int8["cosine_min"], Gate("kl_mean", "<=", HOLDOUT_KL), *([int8["top1_agreement"]] if labeled else [])]
    checks = {g.metric: (metrics[g.metric], g.op, g.threshold) for g in gates}
    failed = [g.metric for g in gates if not g.check(metrics[g.metric])]
    return {
        "passed": not failed,
        "checks": {k: {"value": v, "op": op, "threshold": t} for k, (v, op, t) in checks.items()},
        "failed": failed,
        "line": ", ".join(f"{k} {v:.4g} {op} {t:g}" + ("" if k not in failed else " FAILS") for k, (v, op, t) in checks.items()),
    }


def _mean_kl(reference: np.ndarray, deployed: np.ndarray) -> float:
    """Mean KL divergence of softmax(deployed) from softmax(reference), over the images."""
    a, b = reference.astype(np.float64), deployed.astype(np.float64)
    log_p = a - a.max(1, keepdims=True) - np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True))
    log_q = b - b.max(1, keepdims=True) - np.log(np.exp(b - b.max(1, keepdims=True)).sum(1, keepdims=True))
    return float((np.exp(log_p) * (log_p - log_q)).sum(1).mean())


def sensitive_nodes(fp32_model, int8_path: Path, images: np.ndarray, candidates: Sequence[str], top: int) -> list[str]:
    """The ``top`` quantized nodes whose own activation rounding costs the logits the most on ``images``.

    Each candidate is tried alone: the int8 graph runs with that node reading its input
    unrounded (its weights stay int8), and the candidates are ranked by how close that brings
    the logits to fp32's (mean KL divergence of the softmaxes). Comparing each node's output
    with fp32 instead would rank the deepest nodes first, since every error upstream reaches them.
    """
    import onnx

    int8 = onnx.load(str(int8_path))
    producer, _ = graph_links(int8)
    weights = {t.name for t in int8.graph.initializer}
    by_name = {n.name: n for n in int8.graph.node}
    reference = _logits(fp32_model, images)
    # ONNX Runtime's extended optimizations would turn a float input times int8 weights into MatMulNBits,
    # which rounds that input again: "basic" keeps the dequantized weights and a float MatMul
    scores = []
    for name in (c.split(":", 1)[1] for c in candidates):
        node = by_name.get(name)
        dq = producer.get(node.input[0]) if node is not None else None
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in weights:
            continue
        node.input[0] = q.input[0]  # this one node reads its input unrounded
        scores.append((_mean_kl(reference, _logits(int8, images, optimization="basic")), name))
        node.input[0] = dq.output[0]
    scores.sort()
    return [n for _, n in scores[:top]]


def _to_fp16(standard: Path, fp32, calibration: np.ndarray | None, fp16_data_max: float, report: PrecisionReport):
    """AutoCast, after measuring the activations it will range-check (recorded in ``report``)."""
    if calibration is not None:
        t_measure = time.perf_counter()
        report.activation_max = measure_activations(fp32, calibration[:64])
        report.settings["seconds_measuring_activations"] = round(time.perf_counter() - t_measure, 2)
    t_convert = time.perf_counter()
    converted, report.kept_fp32 = convert_fp16(standard, calibration, fp16_data_max)
    report.settings["seconds_autocast"] = round(time.perf_counter() - t_convert, 2)
    return converted


@dataclass(frozen=True)
class _Fallback:
    """The held-out gate of an int8 conversion, and how many sensitive nodes each round keeps in fp32."""

    holdout: np.ndarray | None
    labeled: bool
    max_rounds: int
    nodes_per_round: int


@dataclass(frozen=True)
class _Int8Recipe:
    """How ``quantize_int8`` is called: calibration method, Q/DQ placement, its switches, the nodes pinned to fp32."""

    method: str
    placement: str
    quantize_conv: bool
    equalize_gelu: bool
    keep_fp32: tuple[str, ...]
    repair: bool = True

    def quantize(self, standard: Path, int8_path: Path, calibration, excluded: Sequence[str], smooth: bool = False):
        return quantize_int8(
            standard,
            int8_path,
            calibration,
            self.method,
            [*self.keep_fp32, *excluded],
            self.placement,
            quantize_conv=self.quantize_conv,
            equalize_gelu=self.equalize_gelu,
            smooth_outliers=smooth,
        )


def _to_int8(standard: Path, fp32, int8_path: Path, calibration, recipe: _Int8Recipe, fallback: _Fallback, report):
    """Quantize; where the held-out check fails (and ``recipe.repair``), repair: first smooth the LayerNorm outputs
    with an activation outlier into their GEMMs' weights, then keep the most sensitive GEMMs in fp32, round by
    round, until it passes. Each repair is recorded by module path in ``report.repairs``."""
    import onnx

    from common.module_names import module_map

    modules = module_map(fp32)
    excluded: list[str] = []
    smooth = False
    t_quant = time.perf_counter()
    report.equalized, _ = recipe.quantize(standard, int8_path, calibration, excluded)
    report.settings["seconds_first_calibration_and_quantization"] = round(time.perf_counter() - t_quant, 2)
    holdout = fallback.holdout
    if holdout is None or not len(holdout):
        return _quantized(int8_path, report)
    reference = _logits(fp32, holdout)

    def check(step: str) -> bool:
        verdict = holdout_check(reference, _logits(str(int8_path), holdout), fallback.labeled)
        report.fallback_rounds.append({"round": len(report.fallback_rounds), "step": step, "excluded": list(excluded), **verdict})
        return verdict["passed"]

    if check("as quantized") or not recipe.repair:
        return _quantized(int8_path, report)
    report.equalized, smoothed = recipe.quantize(standard, int8_path, calibration, excluded, smooth=True)
    if smoothed:
        smooth = True
        for s in smoothed:
            for gemm in s.gemms:
                report.repairs.append(
                    {"module": modules.get(gemm, gemm), "repair": "input equalized", "outlier_ratio": round(s.outlier_ratio, 1)}
                )
        if check("LayerNorm outliers smoothed"):
            return _quantized(int8_path, report)
    for _ in range(fallback.max_rounds):
        quantized, _ = qdq_summary(onnx.load(str(int8_path)))
        picked = sensitive_nodes(fp32, int8_path, holdout[:32], quantized, fallback.nodes_per_round)
        excluded += picked
        report.repairs += [{"module": modules.get(n, n), "repair": "kept in fp32", "node": n} for n in picked]
        report.equalized, _ = recipe.quantize(standard, int8_path, calibration, excluded, smooth=smooth)
        if check(f"{len(excluded)} GEMMs kept in fp32"):
            return _quantized(int8_path, report)
    last = report.fallback_rounds[-1]
    raise PrecisionError(
        f"int8 graph misses the held-out check ({last['line']}) even with {len(excluded)} GEMMs kept in fp32; use more "
        "calibration images, try --calib-method max, or deploy fp16"
    )


def _quantized(int8_path: Path, report):
    import onnx

    converted = onnx.load(str(int8_path))
    report.quantized, report.not_quantized = qdq_summary(converted)
    return converted


def _pinned_nodes(model, keep_fp32: Sequence[str], where: str) -> tuple[str, ...]:
    """The node names ``keep_fp32`` means: node names (``OP:name`` or ``name``) as they are, and for a module path
    every GEMM (MatMul, Gemm, Conv) of that module or below it."""
    from common.module_names import module_map

    names = {n.name for n in model.graph.node}
    modules = module_map(model)
    gemms = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS]
    found: list[str] = []
    for entry in keep_fp32:
        name = entry.split(":", 1)[-1]
        if name in names:
            found.append(name)
            continue
        below = [g for g in gemms if modules.get(g) == entry or modules.get(g, "").startswith(entry + ".")]
        if not below:
            raise PrecisionError(
                f"--keep-fp32: {where} has no module or node {entry!r}; give PyTorch module paths (network.2.3.mlp.fc1) or "
                "node names as the int8 report lists them (quantized, not_quantized: OP:name)"
            )
        found += below
    return tuple(dict.fromkeys(found))


def calibration_inputs(calib) -> dict:
    """``convert_precision``'s calibration arguments from a ``calibration.CalibrationSet`` (none: fp16, fp32)."""
    if calib is None:
        return {}
    return {"calibration": calib.calibration, "holdout": calib.holdout, "holdout_labeled": calib.holdout_labeled}


def convert_precision(
    onnx_in: str | os.PathLike,
    onnx_out: str | os.PathLike,
    precision: str,
    calibration: np.ndarray | None = None,
    *,
    holdout: np.ndarray | None = None,
    holdout_labeled: bool = False,
    calib_method: str = "entropy",
    qdq_placement: str = "gemm-inputs",
    quantize_conv: bool = QUANTIZE_CONV,
    equalize_gelu: bool = EQUALIZE_GELU,
    keep_fp32: Sequence[str] = (),
    fp16_data_max: float = 512.0,
    max_fallback_rounds: int = 4,
    nodes_per_round: int = 4,
    repair: bool = True,
    verbose: bool = False,
) -> PrecisionReport:
    """Convert ``onnx_in`` to ``precision`` ('fp16' or 'int8') and write ``onnx_out`` atomically.

    int8 only: ``quantize_conv`` and ``equalize_gelu`` (module docstring); ``keep_fp32``: PyTorch module paths
    (``network.2.3.mlp.fc1``; a path keeps every GEMM below it) or node names (``OP:name`` as the report writes them)
    to keep in fp32 besides the small GEMMs; ``repair``: where the held-out check fails, smooth LayerNorm outliers and
    keep the most sensitive GEMMs in fp32 until it passes (off: the graph as quantized, for comparison).
    ``verbose`` shows ModelOpt's log and progress bars."""
    import onnx

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if precision not in ("fp16", "int8"):
        raise PrecisionError(f"precision must be 'fp16' or 'int8', got {precision!r}")
    if precision == "int8" and calibration is None:
        raise PrecisionError(
            "int8 needs calibration images: pass --calib-data DIR (an ImageNet-style folder, a few hundred images)"
        )
    source = load_onnx(onnx_in, PrecisionError, load_external_data=True)
    read_onnx_card(onnx_in)  # ours, or a clear error
    pinned = _pinned_nodes(source, keep_fp32, onnx_in.name)
    t0 = time.perf_counter()
    report = PrecisionReport(
        precision,
        0.0,
        0,
        settings={
            "calib_method": calib_method,
            "qdq_placement": qdq_placement,
            "quantize_conv": quantize_conv,
            "equalize_gelu": equalize_gelu,
            "keep_fp32": list(keep_fp32),
            "keep_fp32_nodes": list(pinned),
            "repair": repair,
            "fp16_data_max": fp16_data_max,
            "calibration_images": 0 if calibration is None else int(len(calibration)),
        },
    )
    with tempfile.TemporaryDirectory() as tmp, _quiet(verbose):
        standard = Path(tmp) / "standard.onnx"
        plugin_form = any(n.domain == ONNX_DOMAIN for n in source.graph.node)
        onnx.save(lower_plugin_nodes(source) if plugin_form else source, str(standard))
        fp32 = onnx.load(str(standard))
        if precision == "fp16":
            converted = _to_fp16(standard, fp32, calibration, fp16_data_max, report)
        else:
            fallback = _Fallback(holdout, holdout_labeled, max_fallback_rounds, nodes_per_round)
            recipe = _Int8Recipe(calib_method, qdq_placement, quantize_conv, equalize_gelu, pinned, repair)
            converted = _to_int8(standard, fp32, Path(tmp) / "int8.onnx", calibration, recipe, fallback, report)
        if plugin_form:
            converted = swap_in_plugin_nodes(converted)
        _copy_metadata(source, converted, precision, report.repairs)
        report.nodes = len(converted.graph.node)
        with atomic_path(onnx_out) as out_tmp:
            onnx.save(converted, str(out_tmp))
    report.seconds = time.perf_counter() - t0
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.precision",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--onnx", type=Path, required=True, help="fp32 graph written by pipeline.export")
    p.add_argument("--precision", choices=("fp16", "int8"), required=True)
    p.add_argument("--out", type=Path, required=True, help="output .onnx")
    add_int8_arguments(
        CalibrationArgs(
            title="calibration (required for int8; optional for fp16, where it decides which nodes stay fp32)", cache_dir=True
        ).add_to_parser(p)
    )
    g = p.add_argument_group("int8 recipe (gemm-inputs placement; docs/PRECISION.md has the measurements behind the defaults)")
    g.add_argument(
        "--equalize-gelu",
        action=argparse.BooleanOptionalAction,
        default=EQUALIZE_GELU,
        help="centre and scale each Gelu-fed GEMM input per channel before calibration (folded into the GEMM's weights and bias)",
    )
    g.add_argument(
        "--quantize-conv",
        action=argparse.BooleanOptionalAction,
        default=QUANTIZE_CONV,
        help="also put Q/DQ on Conv inputs (patch embedding, stage transition); ONNX Runtime runs them in float either way",
    )
    p.add_argument("--fp16-data-max", type=float, default=512.0, help="fp16: nodes whose measured |values| exceed this stay fp32")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    p.add_argument("--verbose", action="store_true", help="show ModelOpt's log and progress bars")
    return p


@command()
def main(argv: Sequence[str] | None = None) -> int:

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    card = read_onnx_card(args.onnx)
    calib = CalibrationArgs.build(args, card.preprocessing)
    if calib is not None:
        print(
            f"calibration: {calib.size} images (+{len(calib.holdout)} held out) from {args.calib_data}"
            f"{' (cached)' if calib.from_cache else ''}",
            flush=True,
        )
    report = convert_precision(
        args.onnx,
        args.out,
        args.precision,
        **calibration_inputs(calib),
        calib_method=args.calib_method,
        qdq_placement=args.qdq_placement,
        quantize_conv=args.quantize_conv,
        equalize_gelu=args.equalize_gelu,
        keep_fp32=args.keep_fp32,
        fp16_data_max=args.fp16_data_max,
        repair=args.repair,
        verbose=args.verbose,
    )
    print(report)
    if args.report:
        atomic_write_json(args.report, report.to_dict())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
