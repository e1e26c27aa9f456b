"""Train an S2-MLPv2 variant on an ImageFolder dataset with the paper's recipe.

Recipe (paper §5, magnitudes from ViP): AdamW, lr 2e-3 at batch 1024 scaled linearly with
batch, weight decay 0.05, cosine schedule to 1e-5 with warm-up from 1e-6, RandAugment
rand-m9-mstd0.5-inc1, Mixup 0.8, CutMix 1.0, random erasing 0.25, label smoothing 0.1, EMA
of weights and DropPath. All of it comes from timm's pieces.

Single process: ``python -m models.train --train DIR --val DIR --output RUN``.
Several processes: ``torchrun --nproc-per-node N -m models.train ...`` (gloo on CPU, NCCL on GPU).
``--resume`` continues from ``RUN/last_state.pt`` at the saved epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from common.cli import HelpFormatter, command, report_interrupt
from common.errors import S2MLPv2Error, UsageError
from common.fileio import atomic_path, atomic_save_figure, atomic_write_json, atomic_write_text, new_figure
from common.images import eval_transform

from .checkpoint import save_checkpoint
from .data import image_folder, train_transform
from .s2mlpv2 import S2MLPv2, get_variant, list_models

__all__ = ["main", "build_parser"]

STATE_FILE = "last_state.pt"  # what --resume continues from, in the run's output directory


class TrainingError(S2MLPv2Error, FloatingPointError):
    """Training cannot go on (the loss diverged); the message says what to change."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--train", required=True, type=Path, help="ImageFolder training tree")
    g.add_argument("--val", type=Path, help="ImageFolder validation tree (same class folders)")
    g.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction of --train when --val is not given")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loading worker processes")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="s2mlpv2_cifar10", choices=list_models())
    g.add_argument("--drop-path", type=float, default=0.1, help="DropPath rate of the last block")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--batch-size", type=int, default=128, help="per process")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate; default 2e-3 x global batch / 1024")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-epochs", type=int, default=10)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--clip-grad", type=float, default=None, help="gradient norm clip")
    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="RandAugment policy; 'none' disables")
    g.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), help="random resized crop area range")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha (0 disables)")
    g.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0 disables)")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--ema-decay", type=float, default=0.99996, help="EMA decay per step; 0 disables EMA")
    g = p.add_argument_group("speed")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--channels-last", action="store_true", help="channels-last input memory format")
    g = p.add_argument_group("run")
    g.add_argument("--output", type=Path, required=True, help="run directory: checkpoints, log.jsonl, curves.png")
    g.add_argument("--resume", action="store_true", help="continue from OUTPUT/last_state.pt")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke tests, speed probes)")
    g.add_argument("--note", default="", help="free text stored in the checkpoint card's provenance")
    return p


class _Dist:
    def __init__(self, device: str) -> None:
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.enabled:
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.enabled:
            dist.destroy_process_group()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate_model(model: nn.Module, loader, device: torch.device, amp: str, ddp: _Dist) -> dict[str, float]:
    model.eval()
    correct1 = correct5 = total = loss_sum = 0.0
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += criterion(logits, targets).item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == targets).sum().item()
        correct5 += (top5 == targets[:, None]).any(dim=1).sum().item()
        total += targets.numel()
    correct1, correct5, total, loss_sum = ddp.all_sum([correct1, correct5, total, loss_sum], device)
    return {"top1": correct1 / max(total, 1), "top5": correct5 / max(total, 1), "loss": loss_sum / max(total, 1), "n": int(total)}


def _loaders(args, config, ddp: _Dist):
    from torch.utils.data import DataLoader, Subset
    from torch.utils.data.distributed import DistributedSampler

    pre = config.preprocessing
    aa = None if args.aa in ("none", "") else args.aa
    train_ds = image_folder(args.train, train_transform(pre, args.scale, aa, args.reprob))
    classes = train_ds.classes
    if args.val is not None:
        val_ds = image_folder(args.val, eval_transform(pre), class_names=classes)
    elif args.val_fraction > 0:
        order = np.random.RandomState(args.seed).permutation(len(train_ds))
        n_val = max(1, int(len(order) * args.val_fraction))
        val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
        val_ds = Subset(image_folder(args.train, eval_transform(pre)), val_idx)
        train_ds = Subset(train_ds, train_idx)
    else:
        val_ds = None
    train_sampler = DistributedSampler(train_ds, seed=args.seed) if ddp.enabled else None
    common = dict(num_workers=args.workers, pin_memory=args.device.startswith("cuda"), persistent_workers=args.workers > 0)
    train_loader = DataLoader(
        train_ds, batch_size=args.batch_size, shuffle=train_sampler is None, sampler=train_sampler, drop_last=True, **common
    )
    val_loader = None
    if val_ds is not None:
        val_sampler = DistributedSampler(val_ds, shuffle=False) if ddp.enabled else None
        val_loader = DataLoader(val_ds, batch_size=args.batch_size * 2, shuffle=False, sampler=val_sampler, **common)
    if len(train_loader) == 0:
        raise UsageError(f"{args.train} has fewer images than one batch of {args.batch_size}; lower --batch-size")
    return train_loader, val_loader, classes, train_sampler


def _plot(log_rows: list[dict[str, Any]], path: Path) -> None:
    epochs = [r["epoch"] for r in log_rows]
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in log_rows], label="train loss (mixup targets)")
    if any("val_loss" in r for r in log_rows):
        ax1.plot(epochs, [r.get("val_loss") for r in log_rows], label="val loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    for key, label in (("val_top1", "val top-1"), ("val_top1_ema", "val top-1 (EMA)"), ("val_top5", "val top-5")):
        if any(key in r for r in log_rows):
            ax2.plot(epochs, [r.get(key) for r in log_rows], label=label)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save_figure(fig, path)


@dataclass
class _Recipe:
    """The paper's recipe for one run: optimizer, schedule, EMA, Mixup/CutMix, loss, grad scaler."""

    optimizer: Any
    scheduler: Any
    ema: Any
    mixup: Any
    criterion: nn.Module
    scaler: Any
    lr: float
    steps_per_epoch: int


def _recipe(args: argparse.Namespace, model: nn.Module, device, classes: int, global_batch: int, loader_steps: int) -> _Recipe:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV2

    lr = args.lr if args.lr is not None else 2e-3 * global_batch / 1024
    optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=args.weight_decay)
    steps_per_epoch = loader_steps if args.max_steps_per_epoch is None else min(loader_steps, args.max_steps_per_epoch)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=args.epochs * steps_per_epoch,
        lr_min=args.min_lr,
        warmup_t=args.warmup_epochs * steps_per_epoch,
        warmup_lr_init=args.warmup_lr,
        t_in_epochs=False,
    )
    ema = ModelEmaV2(model, decay=args.ema_decay) if args.ema_decay > 0 else None
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing, num_classes=classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(args.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    return _Recipe(optimizer, scheduler, ema, mixup, criterion, scaler, lr, steps_per_epoch)


def _resume(state_path: Path, model: nn.Module, recipe: _Recipe, log_path: Path) -> tuple[int, dict, list, float]:
    """(start epoch, best, log rows, seconds already spent) from ``last_state.pt``; weights and optimizer restored."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    recipe.optimizer.load_state_dict(state["optimizer"])
    if recipe.ema is not None and state.get("ema") is not None:
        recipe.ema.module.load_state_dict(state["ema"])
    start_epoch = state["epoch"] + 1
    torch.set_rng_state(state["rng"])
    log_rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return start_epoch, state["best"], [r for r in log_rows if r["epoch"] < start_epoch], state["elapsed"]


def _train_epoch(
    args, epoch: int, forward_model, model, recipe: _Recipe, loader, device, show: bool
) -> tuple[float, float, float]:
    """One epoch of training steps; returns (images seen, summed loss, correct top-1) on this process."""
    from tqdm import tqdm

    steps = recipe.steps_per_epoch
    t0 = time.time()
    seen = loss_sum = correct = 0.0
    bar = tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{args.epochs}", disable=None if show else True, leave=False, dynamic_ncols=True
    )
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        hard_targets = targets
        if recipe.mixup is not None:
            images, targets = recipe.mixup(images, targets)
        with _autocast(device, args.amp):
            logits = forward_model(images)
            loss = recipe.criterion(logits.float(), targets)
        if not math.isfinite(loss.item()):
            raise TrainingError(f"loss is {loss.item()} at epoch {epoch} step {step}; lower --lr or disable --amp")
        _step(args, model, recipe, loss)
        recipe.scheduler.step_update(epoch * steps + step + 1)
        if recipe.ema is not None:
            recipe.ema.update(model)
        n = images.shape[0]
        seen += n
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == hard_targets).sum().item()
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
        bar.update(1)
    bar.close()
    return seen, loss_sum, correct


def _step(args, model, recipe: _Recipe, loss) -> None:
    """Backward, optional clipping, optimizer step (through the grad scaler with fp16 autocast)."""
    recipe.optimizer.zero_grad(set_to_none=True)
    if recipe.scaler is not None:
        recipe.scaler.scale(loss).backward()
        recipe.scaler.unscale_(recipe.optimizer)
    else:
        loss.backward()
    if args.clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
    if recipe.scaler is not None:
        recipe.scaler.step(recipe.optimizer)
        recipe.scaler.update()
    else:
        recipe.optimizer.step()


def _validate(model, recipe: _Recipe, val_loader, device, args, ddp, row: dict[str, Any]) -> list:
    """Validate the model (and its EMA); fills ``row`` and returns ``[(metrics, module, 'model' | 'ema')]``."""
    if val_loader is None:
        return []
    metrics = evaluate_model(model, val_loader, device, args.amp, ddp)
    row.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"])
    candidates = [(metrics, model, "model")]
    if recipe.ema is not None:
        ema_metrics = evaluate_model(recipe.ema.module, val_loader, device, args.amp, ddp)
        row.update(val_top1_ema=ema_metrics["top1"], val_top5_ema=ema_metrics["top5"])
        candidates.append((ema_metrics, recipe.ema.module, "ema"))
    return candidates


def _save_epoch(out: Path, model, recipe: _Recipe, epoch: int, best: dict, row: dict, candidates: list, provenance: dict) -> dict:
    """last.safetensors, best.safetensors when it improved, last_state.pt for --resume; returns the best so far."""
    ema = recipe.ema
    save_checkpoint(
        ema.module if ema is not None else model,
        out / "last.safetensors",
        {**provenance, "weights": "ema" if ema is not None else "model"},
    )
    if candidates:
        metrics, best_model, which = max(candidates, key=lambda c: c[0]["top1"])
        if metrics["top1"] > best["top1"]:
            best = {"top1": metrics["top1"], "top5": metrics["top5"], "epoch": epoch, "weights": which}
            save_checkpoint(best_model, out / "best.safetensors", {**provenance, "weights": which, "val": best})
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": recipe.optimizer.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "epoch": epoch,
                "best": best,
                "elapsed": row["elapsed"],
                "rng": torch.get_rng_state(),
            },
            tmp,
        )
    return best


def _epoch_line(args, epoch: int, row: dict[str, Any]) -> str:
    msg = f"epoch {epoch + 1}/{args.epochs}: loss {row['train_loss']:.4f}, {row['train_img_s']:.0f} img/s"
    if "val_top1" in row:
        msg += f", val top-1 {row['val_top1']:.4f}"
    if "val_top1_ema" in row:
        msg += f" (EMA {row['val_top1_ema']:.4f})"
    return msg


def train(args: argparse.Namespace) -> dict[str, Any]:
    ddp = _Dist(args.device)
    device = torch.device(args.device if not (ddp.enabled and args.device.startswith("cuda")) else f"cuda:{ddp.local_rank}")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    _seed_all(args.seed + ddp.rank)
    out = args.output
    state_path = out / STATE_FILE
    if args.resume and not state_path.is_file():
        raise FileNotFoundError(f"--resume given but {state_path} does not exist; start without --resume")
    if not args.resume and (out / "log.jsonl").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --output")

    config = get_variant(args.model)
    train_loader, val_loader, classes, train_sampler = _loaders(args, config, ddp)
    config = config.replace(num_classes=len(classes), class_names=tuple(classes), drop_path_rate=args.drop_path)
    model = S2MLPv2(config).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    global_batch = args.batch_size * ddp.world
    recipe = _recipe(args, model, device, len(classes), global_batch, len(train_loader))

    start_epoch, best, log_rows, elapsed_before = 0, {"top1": -1.0}, [], 0.0
    if args.resume:
        start_epoch, best, log_rows, elapsed_before = _resume(state_path, model, recipe, out / "log.jsonl")
        if ddp.main:
            print(f"resuming {out} at epoch {start_epoch}")

    forward_model: nn.Module = torch.compile(model) if args.compile else model
    if ddp.enabled:
        forward_model = nn.parallel.DistributedDataParallel(
            forward_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    command = (
        "python -m models.train " + " ".join(sys.argv[1:])
        if sys.argv and sys.argv[0].endswith("train.py")
        else " ".join(sys.argv)
    )
    t_run = time.time()
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, args.epochs):
        model.train()
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        t0 = time.time()
        counts = _train_epoch(args, epoch, forward_model, model, recipe, train_loader, device, ddp.main)
        seen, loss_sum, correct = ddp.all_sum(list(counts), device)
        train_seconds = time.time() - t0
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": recipe.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen,
            "train_acc_mixed": correct / seen,
            "train_img_s": seen / train_seconds,
            "epoch_seconds": train_seconds,
        }
        candidates = _validate(model, recipe, val_loader, device, args, ddp, row)
        row["elapsed"] = elapsed_before + time.time() - t_run
        log_rows.append(row)
        if ddp.main:
            provenance = {
                "command": command,
                "epochs_completed": epoch + 1,
                "epochs_planned": args.epochs,
                "wall_seconds": round(row["elapsed"], 1),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "processes": ddp.world,
                "global_batch": global_batch,
                "lr": recipe.lr,
                "torch": torch.__version__,
                "note": args.note,
            }
            best = _save_epoch(out, model, recipe, epoch, best, row, candidates, provenance)
            atomic_write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in log_rows))
            _plot(log_rows, out / "curves.png")
            print(_epoch_line(args, epoch, row), flush=True)
    ddp.close()
    summary = {"epochs": args.epochs, "best": best, "last": log_rows[-1] if log_rows else None, "output": str(out)}
    if ddp.main:
        atomic_write_json(out / "summary.json", summary)
    return summary


@command()
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except KeyboardInterrupt:
        return report_interrupt(f"the last completed epoch is saved in {args.output}; continue with --resume")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
