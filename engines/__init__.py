"""TensorRT engines (TensorRT 11 and TensorRT for RTX), their Python runtime and the spatial-shift plugins.

``engines.trt`` answers every flavour question in one place; ``engines.build`` and
``engines.runtime`` build and load plans of either flavour. ``tensorrt``, ``tensorrt_rtx``,
``triton`` and CUDA libraries are imported lazily, so ``import engines`` works on a machine
without them.
"""
