"""Move between the two forms of the spatial shift inside an ONNX graph.

The standard form of one shift is ``Pad(edge, one row/column on D1 and D2)`` feeding four
``Slice`` nodes (one per channel quarter, each cropping the padded tensor at the quarter's
offset) and one ``Concat`` over channels. The plugin form is one ``SpatialShift`` node.

* :func:`swap_in_plugin_nodes` finds every standard-form shift (whatever precision or Q/DQ
  surrounds it) and replaces it with the plugin node, reading the pattern from the offsets.
* :func:`lower_plugin_nodes` does the reverse, so tools that cannot run our custom op
  (ModelOpt calibrates with ONNX Runtime) work on the standard twin.
"""

from __future__ import annotations

import numpy as np

from models.layers import _OFFSETS, SHIFT_PATTERNS
from models.shift_op import ONNX_DOMAIN, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

__all__ = ["PluginSwapError", "swap_in_plugin_nodes", "lower_plugin_nodes", "find_shifts"]

_DIRECTION_OF_OFFSET = {v: k for k, v in _OFFSETS.items()}
_PATTERN_OF_DIRECTIONS = {v: k for k, v in SHIFT_PATTERNS.items()}


class PluginSwapError(ValueError):
    """The graph has no shift to swap, or a shift node cannot be lowered; the message says why."""


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def _slice_window(node, consts, rank: int = 4) -> dict[int, int] | None:
    """Start index per axis of a Slice with constant starts/axes and unit steps, or None."""
    if len(node.input) < 3 or node.input[1] not in consts:
        return None
    starts = consts[node.input[1]].tolist()
    axes = consts[node.input[3]].tolist() if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
    if len(node.input) > 4 and node.input[4]:
        steps = consts.get(node.input[4])
        if steps is None or any(s != 1 for s in steps.tolist()):
            return None
    return {int(a) % rank: int(s) for a, s in zip(axes, starts)}


def find_shifts(model) -> list[dict]:
    """Every standard-form shift: its Pad, Slices and Concat nodes, input, output and pattern."""
    consts = _constants(model)
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for pad in model.graph.node:
        if pad.op_type != "Pad":
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        pads = consts.get(pad.input[1]) if len(pad.input) > 1 else None
        if mode != b"edge" or pads is None or pads.tolist() != [0, 1, 1, 0, 0, 1, 1, 0]:
            continue
        slices = consumers.get(pad.output[0], [])
        if len(slices) != 4 or any(s.op_type != "Slice" for s in slices):
            continue
        concat_users = {id(u): u for s in slices for u in consumers.get(s.output[0], [])}
        if len(concat_users) != 1:
            continue
        concat = next(iter(concat_users.values()))
        axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
        if concat.op_type != "Concat" or axis not in (3, -1) or len(concat.input) != 4:
            continue
        by_output = {s.output[0]: s for s in slices}
        directions = []
        for name in concat.input:  # concat order is channel order
            window = _slice_window(by_output[name], consts) if name in by_output else None
            if window is None:
                break
            directions.append(_DIRECTION_OF_OFFSET.get((window.get(1, 0), window.get(2, 0))))
        pattern = _PATTERN_OF_DIRECTIONS.get(tuple(directions))
        if pattern is None:
            continue
        found.append(
            {
                "pad": pad,
                "slices": slices,
                "concat": concat,
                "input": pad.input[0],
                "output": concat.output[0],
                "pattern": pattern,
            }
        )
    return found


def swap_in_plugin_nodes(model):
    """A copy of ``model`` with every standard-form shift replaced by one ``SpatialShift`` node."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    shifts = find_shifts(model)
    if not shifts:
        raise PluginSwapError(
            "no spatial shifts (edge Pad -> 4 Slice -> Concat) found in this graph, so it is not an S2-MLPv2 export; "
            "export one with python -m pipeline.export (--shift-impl plugin writes the plugin form directly)"
        )
    remove = {id(n) for s in shifts for n in (s["pad"], *s["slices"])}
    replace = {id(s["concat"]): s for s in shifts}
    nodes = []
    for n in model.graph.node:
        if id(n) in remove:
            continue
        if id(n) in replace:
            s = replace[id(n)]
            n = onnx.helper.make_node(
                PLUGIN_NAME,
                [s["input"]],
                [s["output"]],
                name=f"{s['concat'].name}_shift",
                domain=ONNX_DOMAIN,
                pattern=s["pattern"],
                plugin_namespace=PLUGIN_NAMESPACE,
                plugin_version=PLUGIN_VERSION,
            )
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == ONNX_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(ONNX_DOMAIN, 1))
    _drop_unused_initializers(model)
    return model


def lower_plugin_nodes(model):
    """A copy of ``model`` with every ``SpatialShift`` node lowered to the standard form."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    inits = []
    nodes = []
    pads_name = "spatial_shift_pads"
    inits.append(numpy_helper.from_array(np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64), pads_name))
    inits.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "spatial_shift_axes"))
    for n in model.graph.node:
        if n.op_type != PLUGIN_NAME or n.domain != ONNX_DOMAIN:
            nodes.append(n)
            continue
        pattern = next(a.i for a in n.attribute if a.name == "pattern")
        shape = shapes.get(n.input[0])
        if not shape or len(shape) != 4 or 0 in shape[1:]:
            raise PluginSwapError(f"cannot lower {n.name}: the shape of {n.input[0]} is not known (H, W and C must be static)")
        _, h, w, c = shape
        q = c // 4
        padded = f"{n.name}_padded"
        nodes.append(onnx.helper.make_node("Pad", [n.input[0], pads_name], [padded], name=f"{n.name}_pad", mode="edge"))
        parts = []
        for i, direction in enumerate(SHIFT_PATTERNS[pattern]):
            o1, o2 = _OFFSETS[direction]
            starts, ends = f"{n.name}_starts{i}", f"{n.name}_ends{i}"
            inits.append(numpy_helper.from_array(np.array([o1, o2, i * q], np.int64), starts))
            inits.append(numpy_helper.from_array(np.array([o1 + h, o2 + w, (i + 1) * q], np.int64), ends))
            out = f"{n.name}_part{i}"
            nodes.append(
                onnx.helper.make_node("Slice", [padded, starts, ends, "spatial_shift_axes"], [out], name=f"{n.name}_slice{i}")
            )
            parts.append(out)
        nodes.append(onnx.helper.make_node("Concat", parts, list(n.output), name=f"{n.name}_concat", axis=-1))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    opsets = [o for o in model.opset_import if o.domain != ONNX_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
