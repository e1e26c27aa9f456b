"""Build (or load from cache) a calibration set and print what it holds.

``python -m calibration --data DIR --checkpoint P [--calib-size N] [--cache-dir build/calibration-cache]``
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common.cli import HelpFormatter, command
from models import get_variant, load_checkpoint
from models.args import ModelArgs

from .args import CALIB_SEED, CALIB_SIZE
from .dataset import build_calibration_set


@command()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="ImageFolder tree, flat folder (synset in file names) or list file")
    ModelArgs(
        exclusive=True,
        checkpoint_help="take the preprocessing from this checkpoint's card",
        model_help="take the preprocessing from this variant",
    ).add_to_parser(p, "preprocessing from")
    p.add_argument("--labels", type=Path, help="labels file for a flat folder: 'filename label' per line")
    p.add_argument(
        "--calib-size", "--size", dest="size", type=int, default=CALIB_SIZE, help="images that calibrate, spread over classes"
    )
    p.add_argument(
        "--calib-holdout", "--holdout", dest="holdout", type=int, default=0, help="further images held out (gate int8, verify)"
    )
    p.add_argument("--calib-seed", "--seed", dest="seed", type=int, default=CALIB_SEED, help="selects which images calibrate")
    p.add_argument("--cache-dir", type=Path, default=Path("build/calibration-cache"), help="where the preprocessed set is cached")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    pre = load_checkpoint(args.checkpoint).config.preprocessing if args.checkpoint else get_variant(args.model).preprocessing
    s = build_calibration_set(
        args.data, pre, args.size, holdout=args.holdout, seed=args.seed, cache_dir=args.cache_dir, labels_file=args.labels
    )
    classes = len(set(s.labels))
    print(
        f"{len(s.files)} images ({s.size} calibration + {len(s.holdout)} held out) from {classes} classes, "
        f"array {tuple(s.images.shape)}, sha256 {s.content_hash[:16]}; {len(s.skipped)} skipped"
        f"{'; loaded from cache' if s.from_cache else ''}: {s.cache_path.with_suffix('.npy') if s.cache_path else ''}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
