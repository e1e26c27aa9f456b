"""TensorRT 11 engines, their Python runtime and the spatial-shift plugin.

``tensorrt``, ``triton`` and CUDA libraries are imported lazily, so ``import engines`` works on
a machine without them.
"""
