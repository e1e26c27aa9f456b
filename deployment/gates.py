"""The gates a deployed artifact must pass, per precision, and their results: the one table of tolerances.

========  ==========================================  ============================
precision labeled images                              unlabeled images
========  ==========================================  ============================
fp32      top-1 agreement 100 %, cosine min 0.99999   the same
fp16      top-1 agreement 99.9 %, cosine min 0.999    the same
bf16      top-1 agreement 99.8 %, cosine min 0.999    the same
int8      top-1 drop <= 0.5 points, agreement 99 %    logits cosine min 0.99
========  ==========================================  ============================

:func:`compare_logits` measures two logit arrays (top-1 agreement and flips, cosine, |Δlogit|, KL, top-1/top-5
where labeled) and judges them with :func:`judge`. The build's verify stage and ``pipeline.check`` on the machine a
build lands on judge by this one module; the precision stage's int8 fallback reads the same thresholds. A
:class:`GateResult` prints itself one way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from common.errors import S2MLPv2Error

__all__ = ["Gate", "GateResult", "GATES", "gates_for", "gates_of", "judge", "VerifyError", "VerifyResult", "compare_logits"]


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str  # ">=" or "<="
    threshold: float

    def check(self, value: float | None) -> bool:
        if value is None or not np.isfinite(value):
            return False
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome; ``str()`` is the one way it is shown: ``top1_agreement 0.998 >= 0.999: FAIL``."""

    metric: str
    value: float | None
    op: str
    threshold: float
    passed: bool

    @property
    def value_text(self) -> str:
        return "n/a" if self.value is None else f"{self.value:.6g}"

    def verdict(self, judged: bool = True) -> str:
        """``pass``/``FAIL``; where the gates are not judged (random weights), ``ok``/``off``."""
        if judged:
            return "pass" if self.passed else "FAIL"
        return "ok" if self.passed else "off"

    def text(self, judged: bool = True) -> str:
        return f"{self.metric} {self.value_text} {self.op} {self.threshold}: {self.verdict(judged)}"

    def __str__(self) -> str:
        return self.text()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        return cls(d["metric"], d["value"], d["op"], d["threshold"], d["passed"])


# The one table of tolerances. int8 on unlabeled data is gated by logits cosine alone.
GATES: dict[str, dict[str, tuple[Gate, ...]]] = {
    "fp32": {
        "labeled": (Gate("top1_agreement", ">=", 1.0), Gate("cosine_min", ">=", 0.99999)),
        "unlabeled": (Gate("top1_agreement", ">=", 1.0), Gate("cosine_min", ">=", 0.99999)),
    },
    "fp16": {
        "labeled": (Gate("top1_agreement", ">=", 0.999), Gate("cosine_min", ">=", 0.999)),
        "unlabeled": (Gate("top1_agreement", ">=", 0.999), Gate("cosine_min", ">=", 0.999)),
    },
    # a 16-bit route that computes in bf16 (OpenVINO's 16-bit on CPUs): 8 mantissa bits against fp16's 11
    "bf16": {
        "labeled": (Gate("top1_agreement", ">=", 0.998), Gate("cosine_min", ">=", 0.999)),
        "unlabeled": (Gate("top1_agreement", ">=", 0.998), Gate("cosine_min", ">=", 0.999)),
    },
    "int8": {
        "labeled": (Gate("top1_drop", "<=", 0.005), Gate("top1_agreement", ">=", 0.99)),
        "unlabeled": (Gate("cosine_min", ">=", 0.99),),
    },
}  # fmt: skip  (one row per precision reads as the table above)


def gates_for(precision: str, labeled: bool) -> tuple[Gate, ...]:
    return GATES[precision]["labeled" if labeled else "unlabeled"]


def gates_of(precision: str, computes: str | None) -> str:
    """Whose gates judge a route of ``precision`` that computes in ``computes``: bf16's where a 16-bit route computes
    in bf16 (its fewer mantissa bits get their own gate), else the precision's."""
    return "bf16" if precision == "fp16" and computes == "bf16" else precision


def judge(precision: str, labeled: bool, metrics: dict[str, Any]) -> list[GateResult]:
    """Each gate of ``precision`` against ``metrics``; any non-finite output fails every gate and adds its own."""
    nonfinite = int(metrics.get("nonfinite_outputs", 0))
    results = [
        GateResult(g.metric, metrics.get(g.metric), g.op, g.threshold, g.check(metrics.get(g.metric)) and nonfinite == 0)
        for g in gates_for(precision, labeled)
    ]
    if nonfinite:
        results.append(GateResult("finite_outputs", nonfinite, "<=", 0, False))
    return results


class VerifyError(S2MLPv2Error, RuntimeError):
    """Verification could not run (bad artifact, data or model); the message says what to do."""


@dataclass
class VerifyResult:
    precision: str
    backend: str
    n_images: int
    labeled: bool
    metrics: dict[str, Any]
    gates: dict[str, GateResult]  # by metric
    flips: list[dict[str, Any]] = field(default_factory=list)
    cosines: list[float] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    gates_for: str = ""  # whose gates applied (gates_of): the precision's, or bf16's for a route computing in bf16

    def __post_init__(self) -> None:
        self.gates_for = self.gates_for or self.precision

    @property
    def gate_note(self) -> str:
        """Which gates applied, in words, where they are not the precision's own."""
        if self.gates_for == self.precision:
            return ""
        return f"{self.gates_for} gates: the route computes in {self.gates_for}"

    def __bool__(self) -> bool:
        return all(g.passed for g in self.gates.values())

    @property
    def passed(self) -> bool:
        return bool(self)

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "precision": self.precision,
            "gates_for": self.gates_for,
            "backend": self.backend,
            "n_images": self.n_images,
            "reference": {"top1": m.get("reference_top1"), "top5": m.get("reference_top5")},
            "deployed": {"top1": m.get("deployed_top1"), "top5": m.get("deployed_top5")},
            "top1_agreement": m["top1_agreement"],
            "cosine_min": m["cosine_min"],
            "cosine_mean": m["cosine_mean"],
            "max_abs_diff": m["max_abs_diff"],
            "mean_abs_diff": m["mean_abs_diff"],
            "kl_mean": m["kl_mean"],
            "nonfinite_outputs": m["nonfinite_outputs"],
            "gates": {name: {k: v for k, v in g.to_dict().items() if k != "metric"} for name, g in self.gates.items()},
            "passed": self.passed,
            "flips": self.flips,
            "provenance": self.provenance,
        }

    def markdown(self) -> str:
        d = self.to_dict()

        def pct(v):
            return "–" if v is None else f"{v * 100:.2f} %"

        lines = [
            f"# Parity report: {self.precision} on {self.backend}",
            "",
            f"{self.n_images} images, {'labeled' if self.labeled else 'unlabeled'}. Verdict: **{'PASS' if self.passed else 'FAIL'}**",
            "",
            "| metric | reference (PyTorch fp32) | deployed |",
            "|---|---|---|",
            f"| top-1 | {pct(d['reference']['top1'])} | {pct(d['deployed']['top1'])} |",
            f"| top-5 | {pct(d['reference']['top5'])} | {pct(d['deployed']['top5'])} |",
            "",
            "| comparison | value |",
            "|---|---|",
            f"| top-1 agreement | {pct(d['top1_agreement'])} |",
            f"| logits cosine (min / mean) | {d['cosine_min']:.6f} / {d['cosine_mean']:.6f} |",
            f"| max / mean abs Δlogit | {d['max_abs_diff']:.4g} / {d['mean_abs_diff']:.4g} |",
            f"| mean KL(ref ‖ deployed) | {d['kl_mean']:.3g} |",
            "",
            f"Gates ({self.gate_note}):" if self.gate_note else "Gates:",
            "",
            *[f"- {g}" for g in self.gates.values()],
        ]
        if self.flips:
            lines += ["", f"## Top-1 flips ({len(self.flips)})", "", "| image | reference | deployed |", "|---|---|---|"]
            lines += [f"| {f['path']} | {f['reference']} | {f['deployed']} |" for f in self.flips[:100]]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        d = self.to_dict()
        parts = [
            f"{self.precision} on {self.backend}, {self.n_images} images: top-1 agreement {d['top1_agreement'] * 100:.2f} %, "
            f"cosine min {d['cosine_min']:.6f}, max |Δlogit| {d['max_abs_diff']:.3g}, {len(self.flips)} flips"
        ]
        if self.labeled:
            parts.append(f"top-1 reference {d['reference']['top1'] * 100:.2f} %, deployed {d['deployed']['top1'] * 100:.2f} %")
        if self.gate_note:
            parts.append(f"  {self.gate_note}")
        parts += [f"  gate {g}" for g in self.gates.values()]
        parts.append("PASS" if self.passed else "FAIL")
        return "\n".join(parts)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compare_logits(
    reference: np.ndarray,
    deployed: np.ndarray,
    labels: np.ndarray | None,
    precision: str,
    paths: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
    backend: str = "onnxruntime",
    computes: str | None = None,
) -> VerifyResult:
    """Metrics and gates for two ``(N, classes)`` logit arrays; ``labels`` is ``(N,)`` or None. ``computes``: what the
    route computes in, which picks the gates (:func:`gates_of`)."""
    if precision not in GATES:
        raise VerifyError(f"unknown precision {precision!r}; one of {', '.join(sorted(GATES))}")
    if reference.shape != deployed.shape:
        raise VerifyError(
            f"the artifact returns logits of shape {deployed.shape}, the reference model {reference.shape}: "
            "they are different models; verify the artifact against the checkpoint it was exported from"
        )
    ref = reference.astype(np.float64)
    dep = deployed.astype(np.float64)
    nonfinite = int((~np.isfinite(dep)).any(axis=1).sum())
    dep_safe = np.where(np.isfinite(dep), dep, 0.0)
    cos = (ref * dep_safe).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(dep_safe, axis=1) + 1e-30)
    cos[(~np.isfinite(dep)).any(axis=1)] = -1.0
    ref_top1, dep_top1 = ref.argmax(1), dep_safe.argmax(1)
    p, q = _softmax(ref), _softmax(dep_safe)
    kl = (p * (np.log(p + 1e-30) - np.log(q + 1e-30))).sum(1)
    diff = np.abs(ref - dep)
    metrics: dict[str, Any] = {
        "top1_agreement": float((ref_top1 == dep_top1).mean()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs_diff": float(diff.max()) if np.isfinite(diff).all() else float("inf"),
        "mean_abs_diff": float(diff.mean()) if np.isfinite(diff).all() else float("inf"),
        "kl_mean": float(kl.mean()),
        "nonfinite_outputs": nonfinite,
    }
    labeled = labels is not None
    if labeled:
        k = min(5, ref.shape[1])
        metrics["reference_top1"] = float((ref_top1 == labels).mean())
        metrics["deployed_top1"] = float((dep_top1 == labels).mean())
        metrics["reference_top5"] = float((np.argsort(-ref, 1)[:, :k] == labels[:, None]).any(1).mean())
        metrics["deployed_top5"] = float((np.argsort(-dep_safe, 1)[:, :k] == labels[:, None]).any(1).mean())
        metrics["top1_drop"] = metrics["reference_top1"] - metrics["deployed_top1"]
    gates_for = gates_of(precision, computes)
    gates = {g.metric: g for g in judge(gates_for, labeled, metrics)}

    def name(i: int) -> str:
        return class_names[i] if class_names is not None and i < len(class_names) else str(i)

    flips = [
        {
            "path": paths[i] if i < len(paths) else str(i),
            "reference": name(int(ref_top1[i])),
            "deployed": name(int(dep_top1[i])),
            "cosine": float(cos[i]),
        }
        for i in np.flatnonzero(ref_top1 != dep_top1)
    ]
    return VerifyResult(precision, backend, len(ref), labeled, metrics, gates, flips, cos.tolist(), gates_for=gates_for)
