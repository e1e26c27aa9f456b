"""Move between the two forms of the spatial shift inside an ONNX graph.

The standard form of one shift is ``Reshape`` to rows of C/4 channels, one ``Gather`` (axis 1)
whose constant indices are :func:`models.layers.shift_rows`, and ``Reshape`` back to
``(B, H, W, C)``. In the exported mixer the row view is of the ``(B, H, W, 2c)`` part of the
expansion that is shifted, and each shifted branch gathers its own rows from it, so the
shift's input is a channel range of that tensor. The plugin form is one ``SpatialShift``
node (after a channel ``Slice`` where the input is such a range).

* :func:`swap_in_plugin_nodes` finds every standard-form shift (whatever precision or Q/DQ
  surrounds it) and replaces it with the plugin node, reading the pattern from the indices.
* :func:`lower_plugin_nodes` does the reverse, so tools that cannot run our custom op
  (ModelOpt calibrates with ONNX Runtime) work on the standard twin.
"""

from __future__ import annotations

import numpy as np

from common.errors import S2MLPv2Error
from engines.shift_node import ONNX_DOMAIN, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from models.layers import SHIFT_PATTERNS, shift_rows

__all__ = ["PluginSwapError", "swap_in_plugin_nodes", "lower_plugin_nodes", "find_shifts", "graph_links"]


class PluginSwapError(S2MLPv2Error, ValueError):
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


def graph_links(model) -> tuple[dict[str, object], dict[str, list]]:
    """(the node that writes each tensor, the nodes that read each tensor) of ``model``'s graph."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def _shift_of_rows(rows: np.ndarray, h: int, w: int, groups: int) -> tuple[int, int] | None:
    """(pattern, first row group) whose :func:`shift_rows` equal ``rows``, or None (also for an unshifted branch)."""
    for first in range(0, groups, 4):
        for pattern in SHIFT_PATTERNS:
            if np.array_equal(rows, shift_rows(h, w, pattern, groups, first).numpy()):
                return pattern, first
    return None


def find_shifts(model) -> list[dict]:
    """Every standard-form shift: its row view, Gather and Reshape back; input, output, pattern and channel range."""
    consts = _constants(model)
    producer, consumers = graph_links(model)
    found = []
    for gather in model.graph.node:
        axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
        if gather.op_type != "Gather" or axis != 1 or gather.input[1] not in consts:
            continue
        view, users = producer.get(gather.input[0]), consumers.get(gather.output[0], [])
        if view is None or view.op_type != "Reshape" or len(users) != 1 or users[0].op_type != "Reshape":
            continue
        back = users[0]
        if view.input[1] not in consts or back.input[1] not in consts:
            continue
        view_shape, out_shape = consts[view.input[1]].tolist(), consts[back.input[1]].tolist()
        if len(view_shape) != 3 or len(out_shape) != 4:
            continue
        (_, n_rows, q), (_, h, w, c) = view_shape, out_shape
        rows = consts[gather.input[1]]
        if c != 4 * q or h < 1 or w < 1 or n_rows % (h * w * 4) or rows.shape != (h * w * 4,):
            continue
        groups = n_rows // (h * w)
        match = _shift_of_rows(rows, h, w, groups)
        if match is None:
            continue
        pattern, first = match
        found.append(
            {
                "view": view,
                "gather": gather,
                "reshape": back,
                "input": view.input[0],
                "output": back.output[0],
                "pattern": pattern,
                "channels": None if groups == 4 else (first * q, (first + 4) * q),
            }
        )
    return found


def swap_in_plugin_nodes(model):
    """A copy of ``model`` with every standard-form shift replaced by one ``SpatialShift`` node."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    shifts = find_shifts(model)
    if not shifts:
        raise PluginSwapError(
            "no spatial shifts (Reshape -> Gather of shifted rows -> Reshape) found in this graph, so it is not an "
            "S2-MLPv2 export; export one with python -m pipeline.export (--shift-impl plugin writes the plugin form directly)"
        )
    remove = {id(s["gather"]) for s in shifts}
    replace = {id(s["reshape"]): s for s in shifts}
    nodes, inits = [], []
    for n in model.graph.node:
        if id(n) in remove:
            continue
        if id(n) not in replace:
            nodes.append(n)
            continue
        s = replace[id(n)]
        name, source = s["gather"].name, s["input"]
        if s["channels"] is not None:  # the shift reads a channel range of the mixer's expansion
            start, end = s["channels"]
            inits += [
                numpy_helper.from_array(np.array([start], np.int64), f"{name}_start"),
                numpy_helper.from_array(np.array([end], np.int64), f"{name}_end"),
                numpy_helper.from_array(np.array([3], np.int64), f"{name}_axis"),
            ]
            nodes.append(
                onnx.helper.make_node(
                    "Slice", [source, f"{name}_start", f"{name}_end", f"{name}_axis"], [f"{name}_in"], name=f"{name}_slice"
                )
            )
            source = f"{name}_in"
        nodes.append(
            onnx.helper.make_node(
                PLUGIN_NAME,
                [source],
                [s["output"]],
                name=f"{name}_shift",
                domain=ONNX_DOMAIN,
                pattern=s["pattern"],
                plugin_namespace=PLUGIN_NAMESPACE,
                plugin_version=PLUGIN_VERSION,
            )
        )
    used = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    nodes = [n for n in nodes if n.op_type != "Reshape" or any(o in used for o in n.output)]  # views left unread
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
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
    for n in model.graph.node:
        if n.op_type != PLUGIN_NAME or n.domain != ONNX_DOMAIN:
            nodes.append(n)
            continue
        pattern = next(a.i for a in n.attribute if a.name == "pattern")
        shape = shapes.get(n.input[0])
        if not shape or len(shape) != 4 or 0 in shape[1:]:
            raise PluginSwapError(f"cannot lower {n.name}: the shape of {n.input[0]} is not known (H, W and C must be static)")
        _, h, w, c = shape
        inits += [
            numpy_helper.from_array(np.array([-1, h * w * 4, c // 4], np.int64), f"{n.name}_view_shape"),
            numpy_helper.from_array(shift_rows(h, w, pattern).numpy(), f"{n.name}_rows"),
            numpy_helper.from_array(np.array([-1, h, w, c], np.int64), f"{n.name}_shape"),
        ]
        nodes += [
            onnx.helper.make_node("Reshape", [n.input[0], f"{n.name}_view_shape"], [f"{n.name}_view"], name=f"{n.name}_view"),
            onnx.helper.make_node(
                "Gather", [f"{n.name}_view", f"{n.name}_rows"], [f"{n.name}_moved"], name=f"{n.name}_gather", axis=1
            ),
            onnx.helper.make_node("Reshape", [f"{n.name}_moved", f"{n.name}_shape"], list(n.output), name=f"{n.name}_reshape"),
        ]
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
