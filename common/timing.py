"""Timing a call: what the benchmark and ``deployment.check`` share (no torch)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["time_fn"]


def time_fn(fn: Callable[[], Any], warmup: int, iters: int, min_seconds: float = 0.0) -> np.ndarray:
    """Per-call latencies in milliseconds after ``warmup`` calls: at least ``iters`` calls and ``min_seconds``."""
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - t_start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return np.array(times)
