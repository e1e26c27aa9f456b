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
from typing import Any

import torch

from common.cli import HelpFormatter, command
from common.errors import UsageError
from common.images import eval_transform

from .args import ModelArgs
from .checkpoint import load_checkpoint
from .data import image_folder

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
        raise UsageError(f"{data} holds no images; give a folder with one sub-folder of images per class")
    if limit is not None:
        ds = Subset(ds, range(min(limit, len(ds))))
    loader = DataLoader(_SkipUnreadable(ds), batch_size=batch_size, num_workers=workers, collate_fn=_collate_readable)
    correct1 = correct5 = n = skipped = 0
    for batch, unreadable in tqdm(loader, desc="evaluating", leave=False, file=sys.stderr, disable=None):
        for reason in unreadable:
            print(f"warning: skipped {reason}", file=sys.stderr)
        skipped += len(unreadable)
        if batch is None:
            continue
        images, targets = batch
        logits = model(images)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == targets).sum().item()
        correct5 += (top5 == targets[:, None]).any(dim=1).sum().item()
        n += targets.numel()
    if n == 0:
        raise UsageError(f"no readable images in {data} ({skipped} unreadable: see the warnings above); give readable images")
    return {"top1": correct1 / n, "top5": correct5 / n, "n": n, "skipped": skipped}


class _SkipUnreadable:
    """A dataset whose unreadable images come out as their error message, so one bad file is counted, not fatal."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from common.images import ImageError

        try:
            return self.dataset[i]
        except ImageError as e:
            return str(e)


def _collate_readable(items: list) -> tuple[Any, list[str]]:
    """(the readable samples collated, or None; the unreadable ones' messages)."""
    from torch.utils.data import default_collate

    readable = [x for x in items if not isinstance(x, str)]
    return (default_collate(readable) if readable else None), [x for x in items if isinstance(x, str)]


@command()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    ModelArgs(checkpoint_required=True).add_to_parser(p)
    p.add_argument("--data", required=True, type=Path, help="ImageFolder tree whose folder names are the model's class names")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument(
        "--json", action="store_true", help='print one JSON object {"top1", "top5", "n", "skipped"} (fractions in 0..1)'
    )
    args = p.parse_args(argv)
    result = evaluate(args.checkpoint, args.data, args.batch_size, args.workers, args.limit)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"top-1 {result['top1'] * 100:.2f}%  top-5 {result['top5'] * 100:.2f}%  on {result['n']} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
