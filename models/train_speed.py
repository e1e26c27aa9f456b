"""Measure CPU training speed levers against plain fp32 eager, in one run.

``python -m models.train_speed --model s2mlpv2_cifar10 --data DIR --out speed.json``

Each row is training images/s of full steps (forward, backward, AdamW) on in-memory batches,
so the model's speed is separated from data loading, which is measured on its own (decode +
the training augmentation) with 0, 1 and 2 worker processes. Ratios are against the fp32
eager row of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from common.cli import HelpFormatter
from common.fileio import atomic_write_json

from .s2mlpv2 import create_model, list_models


def _step_rate(model_name: str, batch: int, steps: int, amp: bool, compile_: bool, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = create_model(model_name)
    c, h, w = model.config.preprocessing.input_size
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.config.num_classes, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up (and compilation)
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def _loader_rate(data: Path, model_name: str, workers: int, images: int) -> float:
    from torch.utils.data import DataLoader, Subset

    from .data import image_folder, train_transform

    pre = create_model(model_name).config.preprocessing
    ds = image_folder(data, train_transform(pre))
    ds = Subset(ds, range(min(images, len(ds))))
    loader = DataLoader(ds, batch_size=64, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(b[0].shape[0] for b in loader)
    return n / (time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.train_speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="s2mlpv2_cifar10", choices=list_models())
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps per row, after 2 warm-up steps")
    p.add_argument("--data", type=Path, help="ImageFolder tree for the data-loading rows")
    p.add_argument("--loader-images", type=int, default=1024)
    p.add_argument("--skip-compile", action="store_true", help="skip the torch.compile rows (slow to compile)")
    p.add_argument("--out", type=Path, help="JSON result")
    args = p.parse_args(argv)

    configs = [
        ("fp32 eager", dict(amp=False, compile_=False, channels_last=False)),
        ("bf16 autocast", dict(amp=True, compile_=False, channels_last=False)),
        ("fp32 eager, channels-last input", dict(amp=False, compile_=False, channels_last=True)),
    ]
    if not args.skip_compile:
        configs += [
            ("torch.compile fp32", dict(amp=False, compile_=True, channels_last=False)),
            ("torch.compile + bf16 autocast", dict(amp=True, compile_=True, channels_last=False)),
        ]
    rows = []
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for label, cfg in configs:
        rate = _step_rate(args.model, args.batch_size, args.steps, **cfg)
        rows.append({"what": label, "train_img_s": round(rate, 1)})
        print(f"  {label:34s} {rate:8.1f} img/s  ({rate / rows[0]['train_img_s']:.2f}x)", flush=True)
    for row in rows:
        row["vs_fp32_eager"] = round(row["train_img_s"] / rows[0]["train_img_s"], 2)
    loaders = []
    if args.data is not None:
        for workers in (0, 1, 2):
            rate = _loader_rate(args.data, args.model, workers, args.loader_images)
            loaders.append({"workers": workers, "images_s": round(rate, 1)})
            print(f"  data loading, {workers} workers: {rate:8.1f} img/s (decode + augmentation)", flush=True)
    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "training_steps": rows,
        "data_loading": loaders,
    }
    if args.out:
        atomic_write_json(args.out, result)
    else:
        json.dump(result, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
