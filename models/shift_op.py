"""The spatial shift as one opaque op, for the plugin form of the ONNX export.

``torch.ops.s2mlpv2.spatial_shift(x, pattern)`` computes exactly ``layers.shift_reference``.
Traced under ``layers.shift_lowering("plugin")``, it stays one node, which the exporter turns
into one ONNX node that TensorRT's parser maps to our plugin:

* ``op_type`` = ``PLUGIN_NAME``; attributes ``plugin_namespace`` = ``PLUGIN_NAMESPACE`` and
  ``plugin_version`` = ``PLUGIN_VERSION`` (how TensorRT 11 finds a plugin creator, SPEC §3);
* attribute ``pattern`` (1 = SS1, 2 = SS2).

These names are the single source for the exporter, the TensorRT plugin and ONNX Runtime's
stand-in (``pipeline.ort_ops``).
"""

from __future__ import annotations

import torch

from .layers import shift_reference

__all__ = ["PLUGIN_NAME", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "ONNX_DOMAIN", "onnx_schema", "onnx_translation_table"]

PLUGIN_NAMESPACE = "s2mlpv2"
PLUGIN_NAME = "SpatialShift"
PLUGIN_VERSION = "1"
# The node's domain: TensorRT ignores it; ONNX needs a non-standard one for a custom op.
ONNX_DOMAIN = "s2mlpv2"


@torch.library.custom_op("s2mlpv2::spatial_shift", mutates_args=())
def spatial_shift_op(x: torch.Tensor, pattern: int) -> torch.Tensor:
    return shift_reference(x, pattern)


@spatial_shift_op.register_fake
def _(x: torch.Tensor, pattern: int) -> torch.Tensor:
    return torch.empty_like(x)


def onnx_schema():
    """The ONNX OpSchema of the node, registered so ``onnx.checker`` (full_check) accepts it."""
    from onnx.defs import OpSchema

    return OpSchema(
        PLUGIN_NAME,
        ONNX_DOMAIN,
        1,
        doc="S2-MLPv2 spatial shift on an NHWC tensor (pattern 1 = SS1, 2 = SS2); edge rows keep their value.",
        inputs=[OpSchema.FormalParameter("input", "T")],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float tensors")],
        attributes=[
            OpSchema.Attribute("pattern", OpSchema.AttrType.INT, "1 = SS1, 2 = SS2"),
            OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
            OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version"),
        ],
    )


def register_onnx_schema() -> None:
    import onnx

    if not onnx.defs.has(PLUGIN_NAME, ONNX_DOMAIN):
        onnx.defs.register_schema(onnx_schema())


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: one node per shift."""
    import onnxscript

    register_onnx_schema()  # onnxscript looks the op up by schema
    domain = onnxscript.values.Opset(ONNX_DOMAIN, 1)

    def spatial_shift_node(x, pattern: int):
        # Traced by the exporter (not @script): emits exactly one node in our domain.
        return domain.SpatialShift(x, pattern=pattern, plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)

    return {torch.ops.s2mlpv2.spatial_shift.default: spatial_shift_node}
