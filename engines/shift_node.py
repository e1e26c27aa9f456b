"""The SpatialShift node of the plugin-form export: the names TensorRT finds our plugin by, and its ONNX schema.

The plugin-form export writes each spatial shift as one node that TensorRT's ONNX parser maps
to our plugin (``engines.plugin`` for TensorRT 11, ``engines.plugin_rtx`` for TensorRT for RTX):

* ``op_type`` = ``PLUGIN_NAME``; attributes ``plugin_namespace`` = ``PLUGIN_NAMESPACE`` and
  ``plugin_version`` = ``PLUGIN_VERSION``. TensorRT's parser falls back to a plugin for an op
  type it does not know: the creator's name is the ``op_type``, its version the node's
  ``plugin_version`` attribute (default "1"), its namespace the ``plugin_namespace`` attribute;
  the node's domain is ignored.
* attribute ``pattern`` (1 = SS1, 2 = SS2).

These names are the single source for the exporter, both TensorRT plugins and ONNX Runtime's
stand-in (``engines.ort``). The torch op the exporter traces,
``torch.ops.s2mlpv2.spatial_shift``, is defined beside the shift itself in ``models.layers``.
"""

from __future__ import annotations

__all__ = [
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "ONNX_DOMAIN",
    "onnx_schema",
    "register_onnx_schema",
    "onnx_translation_table",
]

PLUGIN_NAMESPACE = "s2mlpv2"
PLUGIN_NAME = "SpatialShift"
PLUGIN_VERSION = "1"
# The node's domain: TensorRT ignores it; ONNX needs a non-standard one for a custom op.
ONNX_DOMAIN = "s2mlpv2"


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
    import torch

    import models.layers  # noqa: F401  (defines torch.ops.s2mlpv2.spatial_shift)

    register_onnx_schema()  # onnxscript looks the op up by schema
    domain = onnxscript.values.Opset(ONNX_DOMAIN, 1)

    def spatial_shift_node(x, pattern: int):
        # Traced by the exporter (not @script): emits exactly one node in our domain.
        return domain.SpatialShift(x, pattern=pattern, plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)

    return {torch.ops.s2mlpv2.spatial_shift.default: spatial_shift_node}
