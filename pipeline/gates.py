"""The gates a deployed artifact must pass, per precision, and their results: the one table of tolerances.

========  ==========================================  ============================
precision labeled images                              unlabeled images
========  ==========================================  ============================
fp32      top-1 agreement 100 %, cosine min 0.99999   the same
fp16      top-1 agreement 99.9 %, cosine min 0.999    the same
int8      top-1 drop <= 0.5 points, agreement 99 %    logits cosine min 0.99
========  ==========================================  ============================

Verify judges an artifact with :func:`judge`; the precision stage's int8 fallback reads the
same thresholds. A :class:`GateResult` prints itself one way everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Gate", "GateResult", "GATES", "gates_for", "judge"]


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
    "int8": {
        "labeled": (Gate("top1_drop", "<=", 0.005), Gate("top1_agreement", ">=", 0.99)),
        "unlabeled": (Gate("cosine_min", ">=", 0.99),),
    },
}  # fmt: skip  (one row per precision reads as the table above)


def gates_for(precision: str, labeled: bool) -> tuple[Gate, ...]:
    return GATES[precision]["labeled" if labeled else "unlabeled"]


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
