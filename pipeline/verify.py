"""Parity suite: does the deployed artifact still answer like the PyTorch fp32 model?

``python -m pipeline.verify --checkpoint P --artifact model-int8.onnx --data DIR --out report.json``

Both run on the same images, preprocessed once with the model card's settings. The report has
top-1/top-5 of each (when the data is labeled), top-1 agreement and the images whose top-1
flipped, cosine similarity of the logits (min and mean), max and mean |Δlogit| and the mean KL
divergence of the softmaxes. Gates per precision are in ``pipeline.gates``; the command exits 1 when
one fails. It writes ``report.json``, ``report.md`` and ``report.png`` (per-image cosine, flips
marked).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import HelpFormatter, report_error
from common.errors import EXPECTED_ERRORS, S2MLPv2Error
from common.fileio import atomic_paths, atomic_save_figure, atomic_write_json, atomic_write_text, new_figure
from models.args import ModelArgs

from .gates import GATES, GateResult, judge

MODEL_ARGS = ModelArgs(
    model_default=None,
    exclusive=True,
    one_required=True,
    model_help="random-init reference (seed 0, as pipeline.export uses)",
    checkpoint_help="reference weights (.safetensors with card, or a state dict)",
)

__all__ = [
    "VerifyResult",
    "VerifyError",
    "compare_logits",
    "verify",
    "verify_arrays",
    "write_report",
    "main",
]


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

    def __bool__(self) -> bool:
        return all(g.passed for g in self.gates.values())

    @property
    def passed(self) -> bool:
        return bool(self)

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "precision": self.precision,
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
            "Gates:",
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
) -> VerifyResult:
    """Metrics and gates for two ``(N, classes)`` logit arrays; ``labels`` is ``(N,)`` or None."""
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
    gates = {g.metric: g for g in judge(precision, labeled, metrics)}

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
    return VerifyResult(precision, backend, len(ref), labeled, metrics, gates, flips, cos.tolist())


def _figure(result: VerifyResult, path: Path) -> None:
    cos = np.array(result.cosines)
    fig, ax = new_figure(figsize=(7, 3.5))
    bins = np.linspace(min(cos.min(), 0.999 * cos.min()), 1.0 + 1e-9, 60)
    ax.hist(cos, bins=bins, color="#4c72b0", alpha=0.8, label="all images")
    flipped = [f["cosine"] for f in result.flips]
    if flipped:
        ax.hist(flipped, bins=bins, color="#dd3333", alpha=0.9, label=f"top-1 flipped ({len(flipped)})")
    ax.set_yscale("log")  # flips are few; a log scale keeps them visible beside the bulk
    for name, g in result.gates.items():
        if name.startswith("cosine"):
            ax.axvline(g.threshold, color="k", ls="--", lw=1, label=f"gate {g.threshold}")
    ax.set_xlabel("cosine(reference logits, deployed logits)")
    ax.set_ylabel("images")
    ax.set_title(f"{result.precision} on {result.backend}: {'PASS' if result.passed else 'FAIL'}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def verify_arrays(
    model, runner, images: np.ndarray, labels: np.ndarray | None, paths: Sequence[str], precision: str, batch: int = 32
) -> VerifyResult:
    """Compare ``model`` (PyTorch fp32) and ``runner`` on already preprocessed ``images``."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        reference = np.concatenate([model(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)])
    deployed = np.concatenate([runner(images[i : i + batch]) for i in range(0, len(images), batch)])
    result = compare_logits(
        reference, deployed, labels, precision, paths, model.config.class_names, getattr(runner, "backend", "onnxruntime")
    )
    card = getattr(model, "card", None)
    result.provenance = {
        "model": model.config.name,
        "seconds": round(time.perf_counter() - t0, 2),
        "weights": card.provenance.get("command", "checkpoint") if card else "random init",
    }
    return result


def write_report(result: VerifyResult, out: str | os.PathLike) -> None:
    out = Path(out)
    with atomic_paths(out, out.with_suffix(".md"), out.with_suffix(".png")) as (json_path, md_path, png_path):
        atomic_write_json(json_path, result.to_dict())
        atomic_write_text(md_path, result.markdown())
        _figure(result, png_path)


def verify(
    model,
    artifact: str | os.PathLike,
    data: str | os.PathLike,
    limit: int | None = None,
    precision: str | None = None,
    batch: int = 32,
    out: str | os.PathLike | None = None,
) -> VerifyResult:
    from calibration.dataset import load_images

    from .deployed import artifact_precision, load_runner

    runner = load_runner(artifact)
    precision = precision or artifact_precision(artifact)
    images, labels, paths = load_images(data, model.config.preprocessing, limit, model.config.class_names)
    result = verify_arrays(model, runner, images, labels, paths, precision, batch)
    result.provenance.update(artifact=str(artifact), data=str(data))
    if out is not None:
        write_report(result, out)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.verify",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    MODEL_ARGS.add_to_parser(p, "reference model (exactly one)")
    p.add_argument("--artifact", type=Path, required=True, help=".onnx (ONNX Runtime), .plan (TensorRT) or .xml (OpenVINO IR)")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder tree, flat folder or list file of images")
    p.add_argument("--limit", type=int, help="use at most N images (spread over classes)")
    p.add_argument("--precision", choices=sorted(GATES), help="gates to apply; default: read from the artifact")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--out", type=Path, default=Path("report.json"), help="report.json; report.md and report.png are written beside it"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = MODEL_ARGS.load(args, "the reference")
        result = verify(model, args.artifact, args.data, args.limit, args.precision, args.batch, args.out)
    except EXPECTED_ERRORS as e:
        return report_error(e)
    print(result)
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0 if result else 1


if __name__ == "__main__":
    raise SystemExit(main())
