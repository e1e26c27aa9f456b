"""The image sets shipped with the package for the shipped CIFAR-10 checkpoint.

``build_engine.py`` with no ``--checkpoint`` and no ``--model`` builds
``models/weights/s2mlpv2_cifar10.safetensors`` and uses these two folders, so a first run is
judged on real images:

* ``VERIFY`` (``calibration/data/cifar10-verify``): 500 labeled images, 50 per class, drawn from
  the 5,000 images the checkpoint held out of training (the CIFAR-10 train split, 500 per class
  held out by ``python -m models.data split --per-class 500``, seed 0; the checkpoint's card
  records the hash of that list). The model never trained on them.
* ``CALIBRATE`` (``calibration/data/cifar10-calibrate``): 320 labeled images, 32 per class,
  drawn from the images it trained on. ``build_engine.py`` calibrates on ``CALIBRATE_SIZE``
  (256) of them and holds the other 64 out to gate int8.

No image of one set is in the other, by content hash (a test checks it). Both are ImageFolder
trees of CIFAR-10's own 32x32 JPEGs, about 2 KB each. ``python -m calibration.bundled --src
cifar10/train --out DIR`` makes them again from a CIFAR-10 train folder, deterministically.
"""

from __future__ import annotations

import argparse
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from common.cli import command

__all__ = ["VERIFY", "CALIBRATE", "DATA", "VERIFY_PER_CLASS", "CALIBRATE_PER_CLASS", "CALIBRATE_SIZE", "write_bundle"]

DATA = Path(__file__).parent / "data"
VERIFY = DATA / "cifar10-verify"
CALIBRATE = DATA / "cifar10-calibrate"
VERIFY_PER_CLASS = 50
CALIBRATE_PER_CLASS = 32
CALIBRATE_SIZE = 256  # of the 320: build_engine.py's default --calib-holdout (64) takes the rest
HELD_OUT_PER_CLASS, SPLIT_SEED = 500, 0  # the checkpoint's own split (its card's "validation")


def write_bundle(train_root: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Draw both sets from a CIFAR-10 train folder into ``out/cifar10-verify`` and ``out/cifar10-calibrate``."""
    from models.data import holdout_split

    train_root, out = Path(train_root), Path(out)
    trained, held_out = holdout_split(train_root, HELD_OUT_PER_CLASS, SPLIT_SEED)
    verify, calibrate = out / VERIFY.name, out / CALIBRATE.name
    for files, target, per_class, salt in (
        (held_out, verify, VERIFY_PER_CLASS, "verify"),
        (trained, calibrate, CALIBRATE_PER_CLASS, "calibrate"),
    ):
        by_class: dict[str, list[Path]] = {}
        for f in files:
            by_class.setdefault(f.parent.name, []).append(f)
        for cls, members in sorted(by_class.items()):
            chosen = random.Random(f"{salt}:{cls}").sample(sorted(members), per_class)
            (target / cls).mkdir(parents=True, exist_ok=True)
            for f in sorted(chosen):
                shutil.copyfile(f, target / cls / f.name)
    return verify, calibrate


@command()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.bundled", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help="the CIFAR-10 train split as class folders")
    p.add_argument("--out", type=Path, default=DATA, help="where the two folders are written")
    args = p.parse_args(argv)
    for folder in write_bundle(args.src, args.out):
        print(f"wrote {folder} ({sum(1 for _ in folder.rglob('*.jpg'))} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
