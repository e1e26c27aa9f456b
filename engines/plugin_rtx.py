"""The spatial-shift plugin for TensorRT for RTX: a Python ``IPluginV3`` that runs the Triton kernel.

TensorRT for RTX has no ahead-of-time Python plugins (no ``tensorrt.plugin`` module, no
``IPluginV3QuickAOTBuild``), and its ONNX parser only finds creators of the ``IPluginCreatorV3One``
kind. So this module registers such a creator for ``s2mlpv2::SpatialShift`` version "1" (the
names the plugin-form export writes), whose plugin:

* keeps the input's shape, type and layout (fp32 or fp16, linear NHWC);
* serializes its one field, ``pattern`` (1 = SS1, 2 = SS2), into the plan;
* in ``enqueue`` launches ``engines.shift_kernel.shift_kernel`` on TensorRT's stream, reading
  batch, height, width and channels from the input descriptor, so one plan serves every batch
  of its profile.

The plan holds the plugin's name and fields, not its code: whoever loads the plan must have
called :func:`register` first (``engines.runtime`` does so when the sidecar says the plan needs
it). The build needs no GPU; running needs one, with torch and triton.

``register(trt)`` takes the ``tensorrt_rtx`` module (the adapter in ``engines.trt`` passes it)
and is idempotent.
"""

from __future__ import annotations

from typing import Any

from .shift_node import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

__all__ = ["register"]

_creators: dict[int, Any] = {}  # id(module) -> creator kept alive for as long as TensorRT may call it


def _plugin_classes(trt):
    import numpy as np

    class SpatialShiftPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, pattern: int) -> None:
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            if pattern not in (1, 2):
                raise ValueError(f"SpatialShift pattern must be 1 or 2, got {pattern}")
            self.pattern = int(pattern)
            self.num_outputs = 1
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_name = PLUGIN_NAME
            self.plugin_version = PLUGIN_VERSION

        # core
        def get_capability_interface(self, capability):
            return self

        def clone(self):
            return SpatialShiftPlugin(self.pattern)

        # build
        def get_output_data_types(self, input_types):
            return [input_types[0]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [trt.DimsExprs(inputs[0])]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos == 0:
                return desc.type in (trt.DataType.FLOAT, trt.DataType.HALF)
            return desc.type == in_out[0].desc.type

        def configure_plugin(self, inputs, outputs):
            pass

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection(
                [trt.PluginField("pattern", np.array([self.pattern], dtype=np.int32), trt.PluginFieldType.INT32)]
            )

        def get_valid_tactics(self):
            return []

        def get_workspace_size(self, inputs, outputs):
            return 0

        # runtime
        def set_tactic(self, tactic):
            pass

        def on_shape_change(self, inputs, outputs):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            launch_shift(
                tuple(input_desc[0].dims), input_desc[0].type == trt.DataType.HALF, inputs[0], outputs[0], stream, self.pattern
            )

    class SpatialShiftCreator(trt.IPluginCreatorV3One):
        def __init__(self) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name = PLUGIN_NAME
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField("pattern", np.array([], dtype=np.int32), trt.PluginFieldType.INT32)]
            )

        def create_plugin(self, name, field_collection, phase):
            pattern = 1
            for field in field_collection:
                if field.name == "pattern":
                    pattern = int(np.asarray(field.data).reshape(-1)[0])
            return SpatialShiftPlugin(pattern)

    return SpatialShiftPlugin, SpatialShiftCreator


def device_tensor(address: int, dims: tuple[int, ...], half: bool):
    """A zero-copy torch view of a TensorRT device buffer (through ``__cuda_array_interface__``)."""
    import torch

    class _Buffer:
        __cuda_array_interface__ = {
            "shape": tuple(int(d) for d in dims),
            "typestr": "<f2" if half else "<f4",
            "data": (int(address), False),
            "version": 2,
        }

    return torch.as_tensor(_Buffer(), device="cuda")


def launch_shift(dims: tuple[int, ...], half: bool, src: int, dst: int, stream: int, pattern: int) -> None:
    """Run the Triton shift kernel on TensorRT's NHWC buffers ``src`` -> ``dst``, on TensorRT's CUDA stream.

    Needs a CUDA GPU (not tested in CI, which has none; ``pipeline.gpu_check`` runs it).
    ``shift_into``, which does the work, is tested on the CPU under ``TRITON_INTERPRET=1``.
    """
    import torch

    from .shift_kernel import shift_into

    if 0 in dims:
        return
    x, y = device_tensor(src, dims, half), device_tensor(dst, dims, half)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        shift_into(x, y, pattern)


def register(trt) -> Any:
    """Register ``s2mlpv2::SpatialShift`` (an ``IPluginCreatorV3One``) with ``trt``'s plugin registry; returns the creator."""
    if id(trt) in _creators:
        return _creators[id(trt)]
    _, creator_class = _plugin_classes(trt)
    creator = creator_class()
    if not trt.get_plugin_registry().register_creator(creator, PLUGIN_NAMESPACE):
        raise RuntimeError(
            f"TensorRT refused to register the {PLUGIN_NAMESPACE}::{PLUGIN_NAME} plugin creator "
            "(another creator of that name and version is registered in this process)"
        )
    _creators[id(trt)] = creator
    return creator
