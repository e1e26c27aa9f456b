"""Parity suite: does the deployed artifact still answer like the PyTorch fp32 model?

``python -m pipeline.verify --checkpoint P --artifact model-int8.onnx --data DIR --out report.json``

Both run on the same images, preprocessed once with the model card's settings. The report has
top-1/top-5 of each (when the data is labeled), top-1 agreement and the images whose top-1
flipped, cosine similarity of the logits (min and mean), max and mean |Δlogit| and the mean KL
divergence of the softmaxes. Gates per precision are in ``deployment.gates``; the command exits 1 when
one fails. It writes ``report.json``, ``report.md`` and ``report.png`` (per-image cosine, flips
marked).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.cli import HelpFormatter, command
from common.fileio import atomic_paths, atomic_save_figure, atomic_write_json, atomic_write_text, new_figure
from deployment.gates import GATES, VerifyError, VerifyResult, compare_logits
from models.args import ModelArgs

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
        reference,
        deployed,
        labels,
        precision,
        paths,
        model.config.class_names,
        getattr(runner, "backend", "onnxruntime"),
        computes=getattr(runner, "precision", None),
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
    from deployment.deployed import artifact_precision, load_runner

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


@command()
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = MODEL_ARGS.load(args, "the reference")
    result = verify(model, args.artifact, args.data, args.limit, args.precision, args.batch, args.out)
    print(result)
    print(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0 if result else 1


if __name__ == "__main__":
    raise SystemExit(main())
