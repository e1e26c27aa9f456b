"""Which PyTorch module made each node of an exported graph: its path, for example ``network.2.3.mlp.fc1``.

The export names every node ``MODULE/op`` (``network.0.0.attn/node_linear``), from the name scopes torch's
dynamo exporter records. A node's name is what every later tool keeps:

* precision conversion (ModelOpt's Q/DQ insertion and AutoCast) keeps the nodes it does not add; the Q/DQ and
  Cast nodes it adds take their module from the node they feed (:func:`module_map`);
* the plugin swap names each ``SpatialShift`` node after the ``Gather`` it replaces;
* OpenVINO's ONNX frontend gives each operation the ONNX node's name as its friendly name (an operation it
  splits off gets a ``/suffix``, as ``network.0.0.attn/node_linear/WithoutBiases``);
* TensorRT names each layer after its ONNX node.

:func:`module_of` reads the module from any of these names; :func:`module_map` maps every node of a graph,
the ones without a module in their name included.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

__all__ = [
    "SCOPES_KEY",
    "module_of",
    "onnx_node_name",
    "scoped_name",
    "exported_scopes",
    "name_nodes",
    "module_map",
    "block_outputs",
]

SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's per-node metadata: module paths, outermost first
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_FOLLOW_CONSUMER = {"QuantizeLinear", "DequantizeLinear", "Cast"}  # added in front of the node they feed


def module_of(name: str) -> str | None:
    """The module path at the front of a node's (or an IR operation's, or a TensorRT layer's) name, else None."""
    head, sep, _ = name.partition("/")
    return head if sep and _MODULE.fullmatch(head) else None


def onnx_node_name(name: str) -> str:
    """The ONNX node an OpenVINO operation (or a TensorRT layer) is named after, without the suffix the runtime adds
    to an operation it split off (``network.0.0.attn/node_linear/WithoutBiases`` -> ``network.0.0.attn/node_linear``)."""
    parts = name.split("/")
    return "/".join(parts[:2]) if module_of(name) is not None else parts[0]


def scoped_name(module: str, name: str) -> str:
    """``name`` prefixed with its module, once."""
    return name if module_of(name) == module else f"{module}/{name}"


def _scope(node) -> str | None:
    """The innermost module of a freshly exported node, from its ``name_scopes`` metadata (None: the model itself)."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            modules = [s for s in scopes[:-1] if s]  # the last entry is the op itself
            return modules[-1] if modules else None
    return None


def exported_scopes(model) -> dict[str, str]:
    """``{node name: module path}`` of a graph straight from the exporter (before a cleanup drops node metadata)."""
    found = {}
    for node in model.graph.node:
        module = _scope(node)
        if module is not None and node.name:
            found[node.name] = module
    return found


def name_nodes(model, scopes: dict[str, str]) -> int:
    """Rename each node of ``model`` listed in ``scopes`` (``{name: module}``) to ``MODULE/name``; returns how many."""
    renamed = 0
    for node in model.graph.node:
        module = scopes.get(node.name)
        if module is not None:
            node.name = scoped_name(module, node.name)
            renamed += 1
    return renamed


def module_map(model) -> dict[str, str]:
    """``{node name: module path}`` for every node of an ONNX graph: from its name; a Q/DQ or Cast node without one
    takes the module of the node it feeds, any other the module of the node that feeds it."""
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    found: dict[str, str] = {}

    def resolve(node, seen: frozenset = frozenset()) -> str | None:
        if node.name in found:
            return found[node.name]
        module = module_of(node.name)
        if module is None and node.name not in seen:
            seen = seen | {node.name}
            if node.op_type in _FOLLOW_CONSUMER:
                nxt: Iterable = (c for out in node.output for c in consumers.get(out, ()))
            else:
                nxt = (producer[i] for i in node.input if i in producer)
            module = next((m for m in (resolve(n, seen) for n in nxt) if m is not None), None)
        if module is not None:
            found[node.name] = module
        return module

    for node in nodes:
        resolve(node)
    return found


def block_outputs(model, modules: Iterable[str]) -> dict[str, str]:
    """``{module: tensor}``: the tensor each module's output is in the graph, the output of its last node (in graph
    order) named after exactly that module. Modules with no such node are left out."""
    wanted = set(modules)
    last: dict[str, str] = {}
    for node in model.graph.node:
        module = module_of(node.name)
        if module in wanted and node.output:
            last[module] = node.output[0]
    return last
