"""Classify images with a deployed model: ``python -m pipeline.classify BUILD_DIR IMAGE_OR_FOLDER...``

Prints each image's top-5 (``--top-k``) as a table, or with ``--json`` a list with one object per
image: ``{"image": path, "top": [{"index": i, "label": name, "probability": p}, ...]}``. Folders
are walked recursively. The runner, preprocessing and class names are those of
``deployment.deployed.DeployedModel`` (the line on stderr says which runner it chose), so the
answers are what verify measured. When every image lies in a folder named after one of the
model's classes (an ImageFolder tree), the top-1 accuracy against those names is printed too.

An image that cannot be read is reported by name on stderr; the others are still classified, and
the exit status is then 1. Symlinked folders are followed once each (a loop is named and not
walked again); anything named like an image that is not a regular file (a FIFO, a socket) is
skipped with one ``skipped:`` line; a folder or file that cannot be read is an ``error:`` line
with the real reason (permission denied, symlink loop, no such file). A model that cannot be opened is one ``error:`` line and status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from common.cli import HelpFormatter, command, report_error

from .deployed import BACKENDS, DeployedModel, InputImageError, Prediction, iter_image_files

__all__ = ["classify_files", "accuracy", "main"]


def classify_files(model: DeployedModel, files: Sequence[Path], top_k: int = 5, progress: bool = True):
    """``(predictions, failures)``: images classified in batches of ``model.max_batch``; ``failures`` holds ``(path, reason)``."""
    import numpy as np
    from tqdm import tqdm

    predictions: list[Prediction] = []
    failures: list[tuple[str, str]] = []
    with tqdm(
        total=len(files),
        desc="classifying",
        unit="img",
        file=sys.stderr,
        disable=None if progress and len(files) > model.max_batch else True,  # None: a bar on a terminal only
        leave=False,
    ) as bar:
        for start in range(0, len(files), model.max_batch):
            names, arrays = [], []
            for path in files[start : start + model.max_batch]:
                try:
                    arrays.append(model.preprocess(path, str(path)))
                    names.append(str(path))
                except InputImageError as e:
                    failures.append((str(path), str(e)))
            if arrays:
                predictions += model.top_classes(model.logits(np.stack(arrays)), names, top_k)
            bar.update(min(model.max_batch, len(files) - start))
    return predictions, failures


def accuracy(predictions: Sequence[Prediction], class_names: Sequence[str]) -> float | None:
    """Top-1 accuracy against each image's folder name, when every folder is one of ``class_names``; else None."""
    known = set(class_names)
    truths = [Path(p.image).parent.name for p in predictions]
    if not predictions or not all(t in known for t in truths):
        return None
    return sum(p.top[0].label == t for p, t in zip(predictions, truths)) / len(predictions)


def _table(predictions: Sequence[Prediction]) -> str:
    width = max([len(p.image) for p in predictions] + [5])
    label_width = max([len(c.label) for p in predictions for c in p.top] + [5])
    lines = [f"{'image':{width}s}  rank  {'index':>5s}  {'label':{label_width}s}  probability"]
    for p in predictions:
        for rank, c in enumerate(p.top, 1):
            image = p.image if rank == 1 else ""
            lines.append(f"{image:{width}s}  {rank:4d}  {c.index:5d}  {c.label:{label_width}s}  {c.probability:11.4f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.classify",
        description=__doc__.split("\n\n")[0],
        epilog="Which runner is chosen, and why: pipeline/deployed.py (docs/USING.md).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", type=Path, help="a build directory (build_engine.py --out), a .plan, an .onnx or an .xml")
    p.add_argument(
        "images",
        type=Path,
        nargs="+",
        help="image files and folders (walked recursively; symlinked folders once each; FIFOs and sockets skipped)",
    )
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per image, instead of a table")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: the plan on a GPU it runs on, else the CPU route")
    p.add_argument("--batch", type=int, help="largest batch per run (default: the build's profile)")
    return p


@command("nothing was written")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        return report_error(ValueError(f"--top-k must be at least 1, got {args.top_k}"))
    model = DeployedModel.open(args.model, args.backend, args.batch)
    print(f"{model.name}: {model.description}", file=sys.stderr)
    unread: list[tuple[str, str]] = []

    def skipped(path: Path, reason: str, is_error: bool) -> None:
        if is_error:
            unread.append((str(path), reason))
        else:
            print(f"skipped: {path}: {reason}", file=sys.stderr)

    files = list(iter_image_files(args.images, skipped))
    for path, reason in unread:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if not files:
        return report_error(ValueError(f"no images in {', '.join(map(str, args.images))}; give image files or folders of them"))
    predictions, failures = classify_files(model, files, args.top_k)
    failures = unread + failures
    for path, reason in failures[len(unread) :]:
        print(f"error: {reason}" if path in reason else f"error: {path}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=1))
    elif predictions:
        print(_table(predictions))
    top1 = accuracy(predictions, model.class_names)
    summary = f"{len(predictions)} images classified"
    if failures:
        summary += f", {len(failures)} could not be read"
    if top1 is not None:
        summary += f"; top-1 accuracy against the folder names: {top1 * 100:.2f} %"
    print(summary, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
