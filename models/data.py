"""Image data for training and evaluation: the training transform, folders, splits.

Decoding, the image suffixes and the card's eval preprocessing are ``common.images``'.

``python -m models.data split --src DIR --out DIR --per-class N`` carves a deterministic,
class-stratified validation set out of an ImageFolder tree.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from common.cli import HelpFormatter, command
from common.errors import UsageError
from common.images import IMAGE_SUFFIXES, load_rgb

from .s2mlpv2 import Preprocessing

__all__ = ["train_transform", "image_folder", "holdout_split", "main"]


def _guard_posterize() -> None:
    """Make timm's RandAugment posterize accept 0 bits again.

    The 'inc1' policy maps the top magnitude to 0 kept bits. Pillow 13 rejects that
    (``bits must be between 1 and 8``) where older Pillow returned an all-black image; this
    restores the old result instead of crashing a training run at random.
    """
    from PIL import Image
    from timm.data import auto_augment

    original = auto_augment.posterize
    if getattr(original, "_zero_bits_guard", False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep < 1:
            return Image.new(img.mode, img.size)
        return original(img, bits_to_keep, **kwargs)

    posterize._zero_bits_guard = True  # type: ignore[attr-defined]
    auto_augment.posterize = posterize
    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is original:
            auto_augment.NAME_TO_OP[name] = posterize


def train_transform(
    pre: Preprocessing,
    scale: Sequence[float] = (0.08, 1.0),
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
):
    """The paper's training augmentation: random resized crop, flip, RandAugment, random erasing."""
    from timm.data import create_transform

    _guard_posterize()
    return create_transform(
        input_size=pre.input_size,
        is_training=True,
        scale=tuple(scale),
        hflip=0.5,
        auto_augment=auto_augment,
        interpolation="random",
        re_prob=re_prob,
        re_mode="pixel",
        re_count=1,
        mean=pre.mean,
        std=pre.std,
    )


def image_folder(root: str | os.PathLike, transform=None, class_names: Sequence[str] | None = None):
    """An ImageFolder over ``root``. With ``class_names`` (from the card), labels follow the card's order."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}; check the path")
    try:
        ds = ImageFolder(str(root), transform=transform, loader=load_rgb)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{root} is not an ImageFolder tree (one sub-folder of images per class): {e}") from None
    if class_names is not None:
        index = {name: i for i, name in enumerate(class_names)}
        unknown = [c for c in ds.classes if c not in index]
        if unknown:
            raise UsageError(
                f"folders {unknown[:5]} in {root} are not classes of this model (it knows {len(index)} classes); "
                "give a folder whose sub-folders are the class names in the model card"
            )
        ds.samples = [(p, index[ds.classes[t]]) for p, t in ds.samples]
        ds.targets = [t for _, t in ds.samples]
        ds.classes = list(class_names)
        ds.class_to_idx = index
    return ds


def holdout_split(root: str | os.PathLike, per_class: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Deterministically hold out ``per_class`` images of every class: ``(train_files, val_files)``."""
    root = Path(root)
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    if not classes:
        raise UsageError(f"{root} has no class sub-folders")
    train, val = [], []
    for cls_dir in classes:
        files = sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) <= per_class:
            raise UsageError(
                f"class {cls_dir.name} has {len(files)} images, not more than the {per_class} to hold out; "
                "hold out fewer per class (--per-class)"
            )
        rng = random.Random(f"{seed}:{cls_dir.name}")
        held = set(rng.sample(range(len(files)), per_class))
        for i, f in enumerate(files):
            (val if i in held else train).append(f)
    return train, val


def _materialise(files: list[Path], src: Path, dst: Path) -> None:
    for f in files:
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


@command()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.data",
        description="Data utilities. 'split' holds out N images per class of an ImageFolder tree into OUT/train and OUT/val.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="deterministic class-stratified train/val split", formatter_class=HelpFormatter)
    split.add_argument("--src", required=True, type=Path, help="ImageFolder tree (one folder per class)")
    split.add_argument("--out", required=True, type=Path, help="writes OUT/train and OUT/val (hard links where possible)")
    split.add_argument("--per-class", type=int, default=500, help="validation images per class")
    split.add_argument("--seed", type=int, default=0, help="selects which images are held out")
    args = parser.parse_args(argv)
    tmp = args.out.with_name(args.out.name + ".partial")
    try:
        if (args.out / "train").exists() or (args.out / "val").exists():
            raise UsageError(f"{args.out} already holds a split; remove it first")
        train, val = holdout_split(args.src, args.per_class, args.seed)
        shutil.rmtree(tmp, ignore_errors=True)
        _materialise(train, args.src, tmp / "train")
        _materialise(val, args.src, tmp / "val")
        args.out.mkdir(parents=True, exist_ok=True)
        for part in ("train", "val"):
            os.replace(tmp / part, args.out / part)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed split leaves no half-copied tree
    print(f"wrote {len(train)} training and {len(val)} validation images under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
