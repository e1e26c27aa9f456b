"""The spatial shift's definition, without torch: its two patterns, and a numpy reference.

S2-MLPv2 shifts a ``(B, D1, D2, C)`` tensor's four channel quarters by one position each, in the
four directions the pattern names, replicating the edge (edge padding by one, then a crop). SS1
moves the quarters ``+d1, -d1, +d2, -d2``; SS2 the same moves with the axes swapped.
``models.layers.shift_reference`` is the torch form the model runs; :func:`shift_numpy` is the
same copies in numpy, for runtimes that must not import torch (ONNX Runtime's custom op for
plugin-form graphs). A test holds the two equal.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHIFT_PATTERNS", "OFFSETS", "EXPORT_FORMS", "check_shift_shape", "shift_numpy"]

# The two forms a mixer can be exported in (models.layers.S2MLPv2ExportMixer): "onnx", standard ops,
# each shift one Gather over rows of C/4 channels (the same copies as the eager pad + slice + concat,
# in one pass); "plugin", each shift one opaque ``s2mlpv2::spatial_shift`` op, which the ONNX
# exporter emits as one SpatialShift node. The first is the default.
EXPORT_FORMS = ("onnx", "plugin")

# where each quarter's window starts in the edge-padded tensor, (D1, D2)
OFFSETS = {"+d1": (0, 1), "-d1": (2, 1), "+d2": (1, 0), "-d2": (1, 2)}
SHIFT_PATTERNS = {
    1: ("+d1", "-d1", "+d2", "-d2"),  # SS1
    2: ("+d2", "-d2", "+d1", "-d1"),  # SS2: the same four moves with the axes swapped
}


def check_shift_shape(shape: tuple[int, ...], pattern: int) -> None:
    if pattern not in SHIFT_PATTERNS:
        raise ValueError(f"shift pattern must be 1 or 2, got {pattern!r}")
    if len(shape) != 4:
        raise ValueError(f"spatial shift expects a (B, D1, D2, C) tensor, got shape {tuple(shape)}")
    if shape[-1] % 4 != 0:
        raise ValueError(f"spatial shift splits channels into 4 equal groups, so C must be divisible by 4; got C={shape[-1]}")


def shift_numpy(x: np.ndarray, pattern: int) -> np.ndarray:
    """Out-of-place spatial shift of a ``(B, D1, D2, C)`` array: edge pad by one on D1 and D2, crop each quarter."""
    check_shift_shape(x.shape, pattern)
    _, d1, d2, c = x.shape
    q = c // 4
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    parts = [
        padded[:, o1 : o1 + d1, o2 : o2 + d2, i * q : (i + 1) * q]
        for i, (o1, o2) in enumerate(OFFSETS[d] for d in SHIFT_PATTERNS[pattern])
    ]
    return np.concatenate(parts, axis=-1)
