"""The int8 IR's float-part precision hint, chosen by measurement when the IR is built.

An int8 IR computes its quantized GEMMs in int8 and everything else (LayerNorms, GELUs, the
shifts, split attention, the GEMMs left in float, the head) in the float its
``INFERENCE_PRECISION_HINT`` names. On a CPU with a 16-bit float (AVX-512 BF16 or AMX: bf16),
16-bit float parts can be faster, and they add their rounding to int8's: on the shipped CIFAR-10
checkpoint, 5,000 images that neither calibration nor evaluation saw flipped top-1 on 15 images
with bf16 float parts and 10 with f32 float parts. Whether the speed is worth that differs by CPU
and model, so the openvino stage measures both candidates (``engines.openvino.hint_candidates``)
on this machine:

1. **fidelity**: each candidate IR's logits on held-out images (the calibration set's held-out
   slice; without one, the evaluation images) against PyTorch fp32's (the fp32 graph on ONNX
   Runtime), judged as the precision stage's held-out check judges the int8 graph: cosine min
   against the int8 gate, mean KL against ``HOLDOUT_KL``, top-1 agreement where the images are
   labelled;
2. **speed**: each candidate's latency at the benchmark's batch sizes, the candidates taking
   turns (``pipeline.benchmark.time_interleaved``), so load from elsewhere slows both alike.

The 16-bit float parts are chosen only when they pass (1), their mean KL is at most
``MAX_KL_RATIO`` times f32's, and they are at least ``MIN_SPEEDUP`` faster at every batch size
measured; otherwise the float parts are f32. Both measurements and the reason go into the IR's
sidecar (``hint_choice``) and the build's output.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_KL_RATIO", "MIN_SPEEDUP", "HintMeasurement", "choose", "measure_hints"]

MIN_SPEEDUP = 1.05  # the 16-bit float parts must be at least 5 % faster at every batch measured ...
MAX_KL_RATIO = 1.25  # ... and add at most a quarter to f32's mean KL divergence from PyTorch


@dataclass(frozen=True)
class HintMeasurement:
    """One candidate hint: its held-out verdict and its median latency per batch size."""

    hint: str
    kl_mean: float
    cosine_min: float
    top1_agreement: float
    holdout_passed: bool
    holdout_line: str
    p50_ms: dict[int, float]


def measure_hints(
    graph: Path,
    fp32_graph: Path,
    precision: str,
    candidates: Sequence[str],
    images: np.ndarray,
    labeled: bool,
    batches: Sequence[int],
    seconds: float = 1.0,
) -> list[HintMeasurement]:
    """Build an IR from ``graph`` with each candidate hint (in a temporary folder), run it on ``images`` against the
    fp32 graph's logits, and time the candidates in turns at each of ``batches``."""
    from deployment.gates import compare_logits
    from engines.openvino import OpenVINORunner, build_ir

    from .benchmark import time_interleaved
    from .precision import _logits, holdout_verdict

    reference = _logits(fp32_graph, images)
    with tempfile.TemporaryDirectory(prefix=".ir-hints-", dir=Path(graph).parent) as tmp:
        runners = {}
        for hint in candidates:
            xml = Path(tmp) / hint / "model.xml"
            xml.parent.mkdir()
            build_ir(graph, xml, precision, hint=hint)
            runners[hint] = OpenVINORunner(xml)
        logits = {hint: _run(runner, images) for hint, runner in runners.items()}
        metrics = {hint: compare_logits(reference, logits[hint], None, "int8").metrics for hint in candidates}
        verdicts = {hint: holdout_verdict(metrics[hint], labeled) for hint in candidates}
        inputs = {b: np.ascontiguousarray(np.resize(images, (b, *images.shape[1:]))) for b in batches}
        timed = time_interleaved(
            {(hint, b): (lambda r=runner, x=inputs[b]: r(x)) for hint, runner in runners.items() for b in batches},
            warmup=1,
            iters=5,
            min_seconds=seconds,
        )
    return [
        HintMeasurement(
            hint=hint,
            kl_mean=metrics[hint]["kl_mean"],
            cosine_min=metrics[hint]["cosine_min"],
            top1_agreement=metrics[hint]["top1_agreement"],
            holdout_passed=verdicts[hint]["passed"],
            holdout_line=verdicts[hint]["line"],
            p50_ms={b: float(np.median(timed[(hint, b)])) for b in batches},
        )
        for hint in candidates
    ]


def _run(runner, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([runner(images[i : i + batch]) for i in range(0, len(images), batch)])


def choose(measurements: Sequence[HintMeasurement]) -> tuple[str, str]:
    """(hint, reason): the 16-bit float parts where they pass, stay within ``MAX_KL_RATIO`` of f32's KL and are
    ``MIN_SPEEDUP`` faster at every batch; else f32. ``measurements``: the 16-bit candidate first, f32 second."""
    if len(measurements) == 1:
        return measurements[0].hint, "the only hint this CPU offers"
    sixteen, f32 = measurements
    speedups = {b: f32.p50_ms[b] / sixteen.p50_ms[b] for b in f32.p50_ms}
    kl_ratio = sixteen.kl_mean / max(f32.kl_mean, 1e-12)
    speed = ", ".join(f"{s:.2f}x at batch {b}" for b, s in speedups.items())
    facts = f"{sixteen.hint} {speed} against f32, mean KL {sixteen.kl_mean:.2e} against f32's {f32.kl_mean:.2e}"
    if not sixteen.holdout_passed:
        return "f32", f"{facts}; {sixteen.hint} fails the held-out check ({sixteen.holdout_line})"
    if kl_ratio > MAX_KL_RATIO:
        return "f32", f"{facts}; {sixteen.hint} adds {kl_ratio - 1:.0%} to the KL (at most {MAX_KL_RATIO - 1:.0%})"
    if min(speedups.values()) < MIN_SPEEDUP:
        return "f32", f"{facts}; {sixteen.hint} is not {MIN_SPEEDUP - 1:.0%} faster at every batch"
    return sixteen.hint, f"{facts}; {sixteen.hint} passes, within {MAX_KL_RATIO - 1:.0%} of f32's KL and faster"


def record(measurements: Sequence[HintMeasurement], hint: str, reason: str, source: str) -> dict[str, Any]:
    """What the sidecar and the stage record keep: the choice, why, on what, and every measurement."""
    return {
        "chosen": hint,
        "reason": reason,
        "images": source,
        "rule": {"min_speedup": MIN_SPEEDUP, "max_kl_ratio": MAX_KL_RATIO},
        "measured": [{**asdict(m), "p50_ms": {str(b): v for b, v in m.p50_ms.items()}} for m in measurements],
    }
