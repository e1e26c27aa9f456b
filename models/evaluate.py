"""Top-1/top-5 of a checkpoint on an ImageFolder tree, with the checkpoint's own preprocessing.

``python -m models.evaluate --checkpoint P --data DIR [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint
from .data import eval_transform, image_folder

__all__ = ["evaluate", "main"]


@torch.no_grad()
def evaluate(
    checkpoint: str | os.PathLike, data: str | os.PathLike, batch_size: int = 256, workers: int = 2, limit: int | None = None
) -> dict:
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    model = load_checkpoint(checkpoint)
    config = model.config
    ds = image_folder(data, eval_transform(config.preprocessing), class_names=config.class_names)
    if len(ds) == 0:
        raise ValueError(f"{data} holds no images")
    if limit is not None:
        ds = Subset(ds, range(min(limit, len(ds))))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    correct1 = correct5 = n = 0
    for images, targets in tqdm(loader, desc="evaluating", leave=False, file=sys.stderr):
        logits = model(images)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == targets).sum().item()
        correct5 += (top5 == targets[:, None]).any(dim=1).sum().item()
        n += targets.numel()
    return {"top1": correct1 / n, "top5": correct5 / n, "n": n}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help=".safetensors (with its card) or a PyTorch state dict")
    p.add_argument("--data", required=True, type=Path, help="ImageFolder tree whose folder names are the model's class names")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", action="store_true", help='print one JSON object {"top1", "top5", "n"} (fractions in 0..1)')
    args = p.parse_args(argv)
    try:
        result = evaluate(args.checkpoint, args.data, args.batch_size, args.workers, args.limit)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"top-1 {result['top1'] * 100:.2f}%  top-5 {result['top5'] * 100:.2f}%  on {result['n']} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
