"""Calibration sets: class-stratified, deterministic samples, preprocessed by the model card and cached.

``build_calibration_set(source, preprocessing, size)`` lists the images of ``source``
(any layout of ``calibration.sources``), orders them by a seeded round-robin over classes, and
decodes them in that order until ``size`` usable images are found (plus ``holdout`` more for a
held-out slice). Corrupt files are skipped, counted and named in the log. The result is cached
as ``.npy`` + ``.json``; the JSON holds the file list, each file's SHA-256, the array's SHA-256
and the preprocessing, and a re-run with the same inputs loads the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import S2MLPv2Error
from common.fileio import atomic_path, atomic_write_json, sha256_file
from common.images import DEFAULT_MAX_PIXELS, ImageError, load_rgb, preprocess
from models.config import Preprocessing

from . import CALIB_SIZE
from .sources import Sample, discover

__all__ = [
    "CalibrationSet",
    "CalibrationError",
    "OverlapError",
    "build_calibration_set",
    "check_disjoint",
    "eval_samples",
    "load_images",
    "stratified_order",
]

log = logging.getLogger("calibration")
CACHE_VERSION = 1


class CalibrationError(S2MLPv2Error, ValueError):
    """Not enough usable images, or a cache that cannot be used; the message says what to do."""


class OverlapError(CalibrationError):
    """Evaluation images that are also calibration images (same content)."""


@dataclass
class CalibrationSet:
    images: np.ndarray  # (N + holdout, 3, H, W) float32, preprocessed
    files: list[str]
    labels: list[str | None]
    file_hashes: list[str]
    preprocessing: Preprocessing
    size: int
    skipped: list[str] = field(default_factory=list)
    cache_path: Path | None = None
    from_cache: bool = False

    @property
    def calibration(self) -> np.ndarray:
        return self.images[: self.size]

    @property
    def holdout(self) -> np.ndarray:
        return self.images[self.size :]

    @property
    def holdout_labels(self) -> list[str | None]:
        return self.labels[self.size :]

    @property
    def holdout_labeled(self) -> bool:
        """Every held-out image has a label, so the int8 gate can compare top-1 rather than logits."""
        return all(label is not None for label in self.holdout_labels)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()


def eval_samples(data: str | os.PathLike, limit: int | None, labels_file=None) -> list[Sample]:
    """The images of ``data`` that evaluation uses: all of them, or ``limit`` spread evenly over classes."""
    samples = discover(data, labels_file)
    return samples if limit is None else stratified_order(samples, seed=0)[:limit]


def load_images(
    data: str | os.PathLike,
    preprocessing: Preprocessing,
    limit: int | None,
    class_names=None,
    labels_file=None,
    stratified: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """The project's one image loader for checks: ``(images, label indices or None, paths)``.

    Images are decoded safely and preprocessed by the card; labels are indices into
    ``class_names`` when every image's label is one of them. ``stratified`` takes ``limit``
    images spread evenly over classes (evaluation); otherwise the first ``limit`` in listing
    order (the export's quick check). Unreadable files are skipped with a warning; none at all
    usable is a ``CalibrationError``.
    """
    from tqdm import tqdm

    samples = eval_samples(data, limit, labels_file) if stratified else discover(data, labels_file)[:limit]
    index = {n: i for i, n in enumerate(class_names)} if class_names else {}
    images, labels, paths, skipped = [], [], [], 0
    for s in tqdm(samples, desc="images", unit="img", leave=False, file=sys.stderr, disable=None):
        try:
            images.append(preprocess(load_rgb(s.path), preprocessing))
        except ImageError as e:
            skipped += 1
            print(f"warning: skipped {e}", file=sys.stderr)
            continue
        labels.append(index.get(s.label) if s.label is not None else None)
        paths.append(str(s.path))
    if not images:
        raise CalibrationError(
            f"no usable images in {data} ({len(samples)} found, {skipped} unreadable: see the warnings above); "
            "give a folder of readable images"
        )
    have_labels = all(label is not None for label in labels)
    return np.stack(images).astype(np.float32), (np.array(labels) if have_labels else None), paths


def stratified_order(samples: list[Sample], seed: int) -> list[Sample]:
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label or ""].append(s)
    queues = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda s: str(s.path))
        random.Random(f"{seed}:{label}").shuffle(members)
        queues.append(members)
    order = []
    for i in range(max(len(q) for q in queues)):
        order += [q[i] for q in queues if i < len(q)]
    return order


def _cache_key(samples: list[Sample], pre: Preprocessing, size: int, holdout: int, seed: int, max_pixels: int) -> str:
    listing = []
    for s in samples:
        try:
            st = s.path.stat()
            listing.append([str(s.path), s.label, st.st_size, st.st_mtime_ns])
        except OSError:
            listing.append([str(s.path), s.label, None, None])
    blob = json.dumps([CACHE_VERSION, listing, pre.to_dict(), size, holdout, seed, max_pixels], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_cache(stem: Path, pre: Preprocessing) -> CalibrationSet | None:
    meta_path, array_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    if not (meta_path.is_file() and array_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(array_path, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        log.warning("calibration cache %s is unreadable; rebuilding it", stem)
        return None
    result = CalibrationSet(
        images, meta["files"], meta["labels"], meta["file_hashes"], pre, meta["size"], meta["skipped"], stem, True
    )
    if result.content_hash != meta["content_hash"]:
        log.warning("calibration cache %s does not match its recorded hash; rebuilding it", stem)
        return None
    return result


def build_calibration_set(
    source: str | os.PathLike,
    preprocessing: Preprocessing,
    size: int = CALIB_SIZE,
    *,
    holdout: int = 0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    labels_file: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> CalibrationSet:
    if size < 1:
        raise CalibrationError(f"calibration size must be at least 1, got {size}")
    samples = discover(source, labels_file)
    stem = None
    if cache_dir is not None:
        key = _cache_key(samples, preprocessing, size, holdout, seed, max_pixels)
        stem = Path(cache_dir) / f"calib-{key[:16]}"
        cached = _load_cache(stem, preprocessing)
        if cached is not None:
            log.info("calibration set loaded from cache %s", stem.with_suffix(".npy"))
            return cached

    from tqdm import tqdm

    wanted = size + holdout
    arrays, files, labels, hashes, skipped = [], [], [], [], []
    order = stratified_order(samples, seed)
    with tqdm(
        total=wanted, desc="calibration images", unit="img", disable=None if progress else True, file=sys.stderr, leave=False
    ) as bar:
        for sample in order:
            if len(arrays) == wanted:
                break
            try:
                if not sample.path.is_file():
                    raise ImageError(f"{sample.path}: {'not a regular file' if sample.path.exists() else 'does not exist'}")
                image = load_rgb(sample.path, max_pixels)
            except ImageError as e:
                skipped.append(str(e))
                log.warning("skipped %s", e)
                continue
            arrays.append(preprocess(image, preprocessing))
            files.append(str(sample.path))
            labels.append(sample.label)
            hashes.append(sha256_file(sample.path))
            bar.update(1)
    if len(arrays) < wanted:
        what = f"{size} calibration" + (f" + {holdout} held-out" if holdout else "")
        first = f", first: {skipped[0]}" if skipped else ""
        raise CalibrationError(
            f"only {len(arrays)} usable images in {source} ({len(samples)} found, {len(skipped)} skipped as unreadable{first}); "
            f"{what} images were asked for: pass --calib-size {max(len(arrays) - holdout, 1)}"
            + (f" (or --calib-holdout {max(len(arrays) - size, 0)})" if holdout else "")
            + " or less, or add images"
        )
    if skipped:
        log.warning("%d of the images tried in %s were skipped as unreadable", len(skipped), source)
    result = CalibrationSet(np.stack(arrays).astype(np.float32), files, labels, hashes, preprocessing, size, skipped)
    if stem is not None:
        # The array is renamed into place only after its JSON is written, so a failed write
        # (a full disk) leaves no array without its record.
        with atomic_path(stem.with_suffix(".npy")) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, result.images, allow_pickle=False)
            atomic_write_json(stem.with_suffix(".json"), _meta(result, source, seed, holdout))
        result.cache_path = stem
    return result


def _meta(result: CalibrationSet, source: Any, seed: int, holdout: int) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "source": str(source),
        "size": result.size,
        "holdout": holdout,
        "seed": seed,
        "shape": list(result.images.shape),
        "content_hash": result.content_hash,
        "preprocessing": result.preprocessing.to_dict(),
        "files": result.files,
        "labels": result.labels,
        "file_hashes": result.file_hashes,
        "skipped": result.skipped,
    }


def check_disjoint(calibration: CalibrationSet, eval_files: list[str | os.PathLike]) -> None:
    """Raise ``OverlapError`` if any evaluation file has the same content as a calibration file."""
    calib = {h: f for h, f in zip(calibration.file_hashes, calibration.files)}
    clashes = []
    for f in eval_files:
        try:
            h = sha256_file(f)
        except OSError:
            continue
        if h in calib:
            clashes.append((str(f), calib[h]))
    if clashes:
        shown = "; ".join(f"{e} = {c}" for e, c in clashes[:3])
        raise OverlapError(
            f"{len(clashes)} evaluation images are also calibration images ({shown}); "
            "evaluate on images the calibration never saw (use a different folder or split)"
        )
