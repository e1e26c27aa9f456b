"""Where calibration and evaluation images come from: three layouts, one list of samples.

* an ImageFolder tree: one sub-folder per class (ImageNet train/val with synset folders);
* a flat folder of images, the label taken from a synset in the file name
  (``n01440764_tench.JPEG``) or from a labels file (``name label`` per line);
* a text file listing image paths, optionally followed by a label.

Folders are walked following directory links, but each real directory is visited once, so a
symlink loop cannot recurse forever.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from common.errors import S2MLPv2Error
from common.images import IMAGE_SUFFIXES

__all__ = ["Sample", "SourceError", "discover", "IMAGE_SUFFIXES"]

_SYNSET = re.compile(r"n\d{8}")


class SourceError(S2MLPv2Error, ValueError):
    """A data source that cannot be read as any supported layout; the message says what to give."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str | None


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _walk_images(root: Path, seen: set[str] | None = None) -> list[Path]:
    """Every image file under ``root``, in sorted order.

    Directories whose real path is in ``seen`` (or was visited already) are not entered, so a
    symlink loop, or a link to a folder walked elsewhere, contributes nothing twice.
    """
    seen = set() if seen is None else seen
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if dirpath != str(root) and real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if _is_image(Path(f))]
    return found


def _read_labels_file(path: Path) -> dict[str, str]:
    labels = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) < 2:
            raise SourceError(f"{path}:{n}: expected 'filename label', got {line!r}")
        labels[parts[0]] = parts[1]
    return labels


def discover(source: str | os.PathLike, labels_file: str | os.PathLike | None = None) -> list[Sample]:
    """List the images of ``source`` with their labels (``None`` where a layout has none)."""
    source = Path(source)
    if not source.exists():
        raise SourceError(f"data source not found: {source}")
    if source.is_file():
        return _from_list_file(source)
    subdirs = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs and not any(_is_image(p) for p in source.iterdir() if p.is_file()):
        # the root and every class folder count as visited, so links between them add nothing
        seen = {os.path.realpath(source), *(os.path.realpath(d) for d in subdirs)}
        samples = [Sample(p, d.name) for d in subdirs for p in _walk_images(d, seen)]
    else:
        files = [p for p in sorted(source.iterdir()) if p.is_file() and _is_image(p)]
        labels = _read_labels_file(Path(labels_file)) if labels_file else {}
        samples = []
        for p in files:
            label = labels.get(p.name)
            if label is None and not labels:
                m = _SYNSET.search(p.name)
                label = m.group(0) if m else None
            samples.append(Sample(p, label))
    if not samples:
        raise SourceError(
            f"no images found in {source}; give an ImageFolder tree (one sub-folder per class), a folder of images, "
            f"or a text file listing image paths (suffixes: {', '.join(IMAGE_SUFFIXES)})"
        )
    return samples


def _from_list_file(path: Path) -> list[Sample]:
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise SourceError(
            f"{path} is a binary file, not a folder or a list file; give a folder of images or a text file listing image paths"
        ) from None
    samples = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        candidate = Path(parts[0]) if len(parts) == 2 and not _is_image(Path(line)) else Path(line)
        label = parts[1] if candidate != Path(line) else None
        if not candidate.is_absolute():
            candidate = path.parent / candidate
        samples.append(Sample(candidate, label))
    if not samples:
        raise SourceError(f"{path} lists no image paths; list one image path (optionally followed by a label) per line")
    return samples
