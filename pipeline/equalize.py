"""Per-channel equalization of GEMM inputs, so that their int8 rounding costs less: the inputs a Gelu writes
(always, before calibration), and LayerNorm outputs with an activation outlier (the int8 repair,
:func:`smooth_layernorm_outliers`, SmoothQuant-style).

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

__all__ = [
    "Equalized",
    "Smoothed",
    "equalize_gelu_inputs",
    "fold_centres",
    "gelu_gemms",
    "layernorm_gemms",
    "own_initializer",
    "smooth_layernorm_outliers",
]

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
        own_initializer(model, matmul, 1)
        add = next((n for n in model.graph.node if bias in n.input and matmul.output[0] in n.input), None)
        if add is not None:  # the bias is rewritten below: it must be this GEMM's own
            bias = own_initializer(model, add, list(add.input).index(bias))
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


# ----------------------------------------------------------------------------- LayerNorm-fed GEMM inputs

# An LN output is equalized when its widest channel spans this many times the median channel's range: an
# activation outlier, which one int8 step size per tensor cannot serve together with the other channels.
OUTLIER_RATIO = 20.0
SMOOTHING = 0.5  # SmoothQuant's alpha: how much of the outlier moves from the activation into the weights


@dataclass(frozen=True)
class Smoothed:
    """One LayerNorm whose output channels were divided by ``scale``, the GEMMs reading it multiplied by it."""

    norm: str
    gemms: tuple[str, ...]
    outlier_ratio: float  # widest channel's range over the median channel's, before
    scale: np.ndarray  # (C,)


def own_initializer(model, node, index: int) -> str:
    """The name of the initializer ``node`` reads at input ``index``, made its own first where other nodes read it too
    (an exporter's cleanup merges equal constants: every LayerNorm of a freshly initialised model shares one scale)."""
    from onnx import numpy_helper

    name = node.input[index]
    readers = sum(name in n.input for n in model.graph.node)
    if readers > 1:
        source = _initializers(model)[name]
        own = f"{node.name}_{name}"
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(source).copy(), own))
        node.input[index] = own
        name = own
    return name


def layernorm_gemms(model, exclude: Sequence[str] = ()) -> list[tuple]:
    """``(layernorm, [matmuls])`` for every LayerNormalization with constant scale and bias whose output only
    MatMuls with constant 2-D weights read (none of them in ``exclude``): scaling its channels then changes nothing
    else."""
    inits = _initializers(model)
    _, consumers = graph_links(model)
    found = []
    for n in model.graph.node:
        if n.op_type != "LayerNormalization" or len(n.input) < 3 or not all(i in inits for i in n.input[1:3]):
            continue
        users = consumers.get(n.output[0], [])
        gemms = [
            u
            for u in users
            if u.op_type == "MatMul" and u.input[0] == n.output[0] and u.input[1] in inits and len(inits[u.input[1]].dims) == 2
        ]
        if users and len(gemms) == len(users) and not any(g.name in exclude for g in gemms):
            found.append((n, gemms))
    return found


def smooth_layernorm_outliers(
    model, images: np.ndarray, exclude: Sequence[str] = (), ratio: float = OUTLIER_RATIO, alpha: float = SMOOTHING
) -> list[Smoothed]:
    """SmoothQuant on LayerNorm-fed GEMM inputs with an activation outlier, in place on the fp32 ``model``.

    Per channel ``s = max|x|^alpha / max|W|^(1 - alpha)`` (``W``'s row for that input channel, over every GEMM
    reading it); the LayerNorm's affine weight and bias are divided by ``s`` and the GEMMs' weight rows multiplied
    by it: ``LN(x) / s @ (s W) = LN(x) @ W``, the same function in fp32, with the outlier's range moved into
    weights, which are quantized per output channel. Only LayerNorms whose output has an outlier (``ratio``) are
    touched: a model without one is left exactly as it was."""
    from onnx import numpy_helper

    targets = layernorm_gemms(model, exclude)
    if not targets:
        return []
    ranges = _channel_ranges(model, [norm.output[0] for norm, _ in targets], images)
    inits = _initializers(model)
    done = []
    for norm, gemms in targets:
        lo, hi = ranges[norm.output[0]]
        amax = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
        found = float(amax.max() / max(float(np.median(amax)), 1e-12))
        if found < ratio:
            continue
        for index in (1, 2):
            own_initializer(model, norm, index)
        for g in gemms:
            own_initializer(model, g, 1)
        inits = _initializers(model)
        weights = [numpy_helper.to_array(inits[g.input[1]]).astype(np.float64) for g in gemms]
        wmax = np.max([np.abs(w).max(1) for w in weights], axis=0)
        scale = np.power(np.maximum(amax, 1e-8), alpha) / np.power(np.maximum(wmax, 1e-8), 1 - alpha)
        scale = np.maximum(scale / float(np.median(scale)), MIN_RELATIVE_SCALE)  # the median channel keeps its range
        for name in norm.input[1:3]:
            value = numpy_helper.to_array(inits[name]).astype(np.float64)
            inits[name].CopyFrom(numpy_helper.from_array((value / scale).astype(np.float32), name))
        for g, w in zip(gemms, weights):
            inits[g.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), g.input[1]))
        done.append(Smoothed(norm.name, tuple(g.name for g in gemms), found, scale))
    return done
