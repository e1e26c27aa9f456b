"""Command-line argument group for calibration images, declared once (in the manner of Polygraphy's argument groups).

``CalibrationArgs(...).add_to_parser(parser)`` adds ``--calib-data``, ``--calib-size``,
``--calib-holdout``, ``--calib-method``, ``--calib-seed`` and ``--labels`` (and, where asked,
``--cache-dir``); ``CalibrationArgs.build(args, preprocessing)`` makes the calibration set.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import CALIB_SEED, CALIB_SIZE

if TYPE_CHECKING:  # the heavy imports wait until a set is built
    from models.config import Preprocessing

    from .dataset import CalibrationSet

__all__ = ["CalibrationArgs", "CALIB_METHODS", "CALIB_SIZE", "CALIB_SEED"]

CALIB_METHODS = ("entropy", "max")  # ModelOpt's int8 calibration methods, the default first


@dataclass(frozen=True)
class CalibrationArgs:
    title: str = "calibration"
    data_help: str = "calibration images: an ImageFolder tree, a flat folder (synset in file names) or a text file of image paths"
    size_default: int | None = CALIB_SIZE
    size_help: str = "images used to calibrate"
    holdout_default: int = 0
    holdout_help: str = "extra images held out to gate int8 (sensitivity fallback)"
    cache_dir: bool = False  # add --cache-dir (the pipeline caches under its output directory instead)

    def add_to_parser(self, parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
        g = parser.add_argument_group(self.title)
        g.add_argument("--calib-data", type=Path, help=self.data_help)
        g.add_argument("--calib-size", type=int, default=self.size_default, help=self.size_help)
        g.add_argument("--calib-holdout", type=int, default=self.holdout_default, help=self.holdout_help)
        g.add_argument("--calib-method", choices=CALIB_METHODS, default=CALIB_METHODS[0], help="ModelOpt's int8 calibration")
        g.add_argument("--calib-seed", type=int, default=CALIB_SEED, help="selects which images calibrate (class-stratified)")
        g.add_argument("--labels", type=Path, help="labels file for a flat folder: 'filename label' per line")
        if self.cache_dir:
            g.add_argument(
                "--cache-dir",
                type=Path,
                default=Path("build/calibration-cache"),
                help="where preprocessed calibration sets are cached",
            )
        return g

    @staticmethod
    def build(args: argparse.Namespace, preprocessing: Preprocessing) -> CalibrationSet | None:
        """The calibration set the arguments ask for (cached under ``--cache-dir`` where declared), or None without ``--calib-data``."""
        if args.calib_data is None:
            return None
        from .dataset import build_calibration_set

        return build_calibration_set(
            args.calib_data,
            preprocessing,
            args.calib_size,
            holdout=args.calib_holdout,
            seed=args.calib_seed,
            cache_dir=getattr(args, "cache_dir", None),
            labels_file=args.labels,
        )
