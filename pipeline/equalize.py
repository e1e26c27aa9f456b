"""Per-channel equalization of the GEMM inputs a Gelu writes, so that their int8 rounding costs less.

A Gelu output lies in ``[-0.17, max)``. Symmetric int8, the only kind TensorRT takes (zero
point 0), spends half of its 255 steps on negative values that never come, and one step size
serves every channel, whether it reaches 0.5 or 8. In S2-MLPv2 these tensors feed each block's
second MLP GEMM (``fc2``), which made them the largest source of int8 error (docs/PRECISION.md).

``equalize_gelu_inputs`` rewrites such a GEMM input ``y`` (channels last) on the fp32 graph,
before calibration, as ``y' = (y - c) / s``, with a centre ``c`` and a scale ``s`` per channel
measured on the calibration images so that every channel spans the same symmetric range. The
GEMM's weight rows are multiplied by ``s`` and ``c @ W`` is added to its bias, so the fp32 graph
still computes the same function; it has two more elementwise nodes per GEMM (``Sub``, ``Mul``),
which TensorRT fuses with the Gelu and the QuantizeLinear that follow. After quantization,
``fold_centres`` recomputes each bias from the weights as the graph dequantizes them: a bias
computed from the fp32 weights would multiply every weight's rounding error by the centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .plugin_swap import graph_links

__all__ = ["Equalized", "equalize_gelu_inputs", "fold_centres", "gelu_gemms"]

# A channel whose measured range is this small a fraction of the widest one is not stretched further:
# a constant channel would otherwise get an unbounded scale.
MIN_RELATIVE_SCALE = 1e-3


@dataclass(frozen=True)
class Equalized:
    """One GEMM whose Gelu input was centred and scaled per channel, and the bias it had before."""

    gemm: str
    bias: str  # the initializer its bias Add reads
    bias_fp32: np.ndarray
    centre: np.ndarray  # (K,) per input channel
    scale: np.ndarray  # (K,)


def _initializers(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def gelu_gemms(model, exclude: Sequence[str] = ()) -> list[tuple]:
    """``(matmul, gelu, bias)`` for every MatMul that reads a Gelu output and a constant 2-D weight, leaving out the
    node names in ``exclude``; ``bias`` names the 1-D initializer that the MatMul's only consumer, an ``Add``, adds,
    or is None where there is none (an exporter drops an all-zero bias)."""
    inits = _initializers(model)
    producer, consumers = graph_links(model)
    found = []
    for n in model.graph.node:
        gelu = producer.get(n.input[0]) if n.op_type == "MatMul" else None
        if gelu is None or gelu.op_type != "Gelu" or n.name in exclude or n.input[1] not in inits:
            continue
        if len(inits[n.input[1]].dims) != 2:
            continue
        users = consumers.get(n.output[0], [])
        add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
        bias = next((i for i in add.input if i in inits and len(inits[i].dims) == 1), None) if add else None
        found.append((n, gelu, bias))
    return found


def _add_bias(model, matmul, n_out: int):
    """A zero bias for ``matmul``, which has none: (its initializer's name, the ``Add`` to place after the MatMul)."""
    from onnx import helper, numpy_helper

    name, unbiased = f"{matmul.name}_bias", f"{matmul.output[0]}_unbiased"
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(n_out, np.float32), name))
    add = helper.make_node("Add", [unbiased, name], [matmul.output[0]], name=f"{matmul.name}_add_bias")
    matmul.output[0] = unbiased
    return name, add


def _channel_ranges(model, tensors: list[str], images: np.ndarray, batch: int = 32) -> dict[str, tuple]:
    """Per-channel (min, max) over ``images`` of each tensor in ``tensors`` (channels last), fp32 graph on ORT."""
    from engines.ort import session_with_outputs

    session = session_with_outputs(model, tensors)
    feed = session.get_inputs()[0].name
    ranges: dict[str, tuple] = {}
    for i in range(0, len(images), batch):
        for name, out in zip(tensors, session.run(tensors, {feed: images[i : i + batch]})):
            rows = out.reshape(-1, out.shape[-1])
            lo, hi = rows.min(0), rows.max(0)
            if name in ranges:
                lo, hi = np.minimum(ranges[name][0], lo), np.maximum(ranges[name][1], hi)
            ranges[name] = (lo, hi)
    return ranges


def equalize_gelu_inputs(model, images: np.ndarray, exclude: Sequence[str] = ()) -> list[Equalized]:
    """Centre and scale, in place, every Gelu-fed GEMM input of the fp32 ``model`` (see the module docstring).

    ``exclude``: GEMMs that will stay in fp32, which gain nothing from it. Returns what
    ``fold_centres`` needs once the graph is quantized."""
    from onnx import helper, numpy_helper

    targets = gelu_gemms(model, exclude)
    if not targets:
        return []
    ranges = _channel_ranges(model, [gelu.output[0] for _, gelu, _ in targets], images)
    after: dict[str, list] = {}  # new nodes, by the name of the node they follow
    done = []
    for matmul, gelu, bias in targets:
        if bias is None:
            bias, add = _add_bias(model, matmul, _initializers(model)[matmul.input[1]].dims[1])
            after[matmul.name] = [add]
        inits = _initializers(model)
        y = gelu.output[0]
        lo, hi = ranges[y]
        centre, half = (hi + lo) / 2, (hi - lo) / 2
        scale = np.maximum(half / max(float(half.max()), 1e-12), MIN_RELATIVE_SCALE)
        name = matmul.name  # a Gelu may feed more than one GEMM: every name below is this GEMM's
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(centre.astype(np.float32), f"{name}_input_centre"),
                numpy_helper.from_array((1 / scale).astype(np.float32), f"{name}_input_inverse_scale"),
            ]
        )
        after.setdefault(gelu.name, []).extend(
            [
                helper.make_node("Sub", [y, f"{name}_input_centre"], [f"{name}_input_centred"], name=f"{name}_centre"),
                helper.make_node(
                    "Mul",
                    [f"{name}_input_centred", f"{name}_input_inverse_scale"],
                    [f"{name}_input_equalized"],
                    name=f"{name}_equalize",
                ),
            ]
        )
        matmul.input[0] = f"{name}_input_equalized"
        weight = numpy_helper.to_array(inits[matmul.input[1]]).astype(np.float64)
        inits[matmul.input[1]].CopyFrom(numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), matmul.input[1]))
        bias_fp32 = numpy_helper.to_array(inits[bias]).astype(np.float64)
        inits[bias].CopyFrom(numpy_helper.from_array((bias_fp32 + centre @ weight).astype(np.float32), bias))
        done.append(Equalized(matmul.name, bias, bias_fp32, centre, scale))
    nodes = []
    for n in model.graph.node:
        nodes += [n, *after.get(n.name, [])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done


def _dequantized(model, tensor: str) -> np.ndarray:
    """The values a constant ``tensor`` takes where the graph reads it: through its QuantizeLinear -> DequantizeLinear
    pair (or a DequantizeLinear of an integer initializer), or as stored."""
    from onnx import numpy_helper

    inits = _initializers(model)
    producer, _ = graph_links(model)
    dq = producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return numpy_helper.to_array(inits[tensor]).astype(np.float64)
    source, scale_name, *zero_name = dq.input
    q = producer.get(source)
    quantized_here = q is not None and q.op_type == "QuantizeLinear"
    stored = numpy_helper.to_array(inits[q.input[0] if quantized_here else source])
    # ONNX's default zero point is a uint8 zero
    zero = numpy_helper.to_array(inits[zero_name[0]]) if zero_name and zero_name[0] else np.zeros((), np.uint8)
    scale = numpy_helper.to_array(inits[scale_name]).astype(np.float64)
    shape = [1] * stored.ndim
    if scale.ndim:
        shape[next((a.i for a in dq.attribute if a.name == "axis"), 1)] = -1
    scale, offset = scale.reshape(shape), zero.astype(np.float64).reshape(shape)
    integers = stored.astype(np.float64)
    if quantized_here:  # QuantizeLinear rounds half to even, as rint does, and saturates to the zero point's type
        info = np.iinfo(zero.dtype)
        integers = np.clip(np.rint(integers / scale) + offset, info.min, info.max)
    return (integers - offset) * scale


def fold_centres(model, equalized: Sequence[Equalized]) -> None:
    """Set, in place, each equalized GEMM's bias to ``bias + c @ (W'/s)`` with ``W'`` the weight as the quantized
    graph dequantizes it: the centre then meets the weights the GEMM really multiplies by."""
    from onnx import numpy_helper

    inits = _initializers(model)
    nodes = {n.name: n for n in model.graph.node}
    for e in equalized:
        weight = _dequantized(model, nodes[e.gemm].input[1]) / e.scale[:, None]
        inits[e.bias].CopyFrom(numpy_helper.from_array((e.bias_fp32 + e.centre @ weight).astype(np.float32), e.bias))
