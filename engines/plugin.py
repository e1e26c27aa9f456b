"""The spatial-shift plugin for TensorRT 11, as an ahead-of-time TensorRT Python plugin (``tensorrt.plugin``).

(TensorRT for RTX has no AOT plugins; its plugin is ``engines.plugin_rtx``.)

Importing this module registers ``s2mlpv2::SpatialShift``, the plugin that the export stage's
plugin-form node names (``op_type`` SpatialShift, ``plugin_namespace`` s2mlpv2; TensorRT's ONNX
parser strips those two attributes and passes ``pattern``).

* ``register``: the output is shaped and typed like the input.
* ``autotune``: fp32 and fp16, linear (NHWC-contiguous) layout.
* ``aot_impl``: the Triton kernel of ``engines.shift_kernel``, compiled ahead of time to PTX
  for the building GPU's architecture. TensorRT stores the PTX in the plan, so a C++ program
  runs the plan with no Python and no plugin library. ``pattern`` is a compile-time constant
  of that PTX (AOT plugin attributes are not serialized), and so is the block shape, chosen
  from the static channel count; batch, height and width are launch arguments computed from
  the input's symbolic shape, so one plan serves every batch of its profile.

This module needs TensorRT >= 10.9 (``aot_impl``); it has not been run in this project's CI,
where TensorRT cannot be installed. ``engines.shift_kernel.compile_ptx`` (what ``aot_impl``
calls) is tested there, on the CPU.
"""

from __future__ import annotations

import tensorrt as trt  # imported only through engines.trt's Flavour.prepare_plugin, once TensorRT 11 imports
import tensorrt.plugin as trtp

from .shift_kernel import block_config, compile_ptx
from .shift_node import PLUGIN_NAME, PLUGIN_NAMESPACE

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"


@trtp.register(PLUGIN_ID)
def spatial_shift_desc(inp0: trtp.TensorDesc, pattern: int) -> trtp.TensorDesc:
    return inp0.like()


@trtp.autotune(PLUGIN_ID)
def spatial_shift_autotune(inp0: trtp.TensorDesc, outputs):
    return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16", "LINEAR")]


@trtp.aot_impl(PLUGIN_ID)
def spatial_shift_aot(inp0: trtp.TensorDesc, pattern: int, outputs, tactic: int):
    import torch

    dtype = "fp32" if inp0.dtype == trt.float32 else "fp16"
    b, h, w, c = (inp0.shape_expr[i] for i in range(4))
    if not c.is_constant:
        raise ValueError("the SpatialShift plugin needs a static channel count (only the batch may be dynamic)")
    channels = c.constant_value
    major, minor = torch.cuda.get_device_capability()
    name, ptx, threads, shared = compile_ptx(dtype, pattern, channels, arch=major * 10 + minor)
    block_p, _, _ = block_config(channels // 4)
    n_pix = b * h * w
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(n_pix, block_p)  # one program per block_p pixels, all channels
    launch.block_x = threads
    launch.shared_mem = shared
    # kernel arguments after the input pointer and before the output pointer: n_pix, H, W, C/4
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (n_pix, h, w, c // 4)])
    return name.encode(), ptx.encode(), launch, extra
