"""Images, in one place: which files count as images, decoding untrusted files into RGB, and the card's preprocessing.

* ``IMAGE_SUFFIXES``: what every folder reader (training, evaluation, calibration) takes.
* ``load_rgb`` (a file) and ``decode_rgb`` (bytes): every failure is an ``ImageError`` with a one-line reason: unreadable or
  truncated files, files that are not images, and decompression bombs (a declared size over
  ``max_pixels``, checked from the header before any pixel is decoded). Grayscale, CMYK,
  RGBA, LA, palette and 16-bit images all come out as 8-bit RGB.
* ``CardTransform`` / ``preprocess``: resize, center-crop and normalise exactly as a model
  card's preprocessing says (any object with ``input_size``, ``interpolation``, ``mean``,
  ``std`` and ``crop_pct``), with Pillow and numpy: bit for bit timm's eval transform, which
  ``eval_transform`` returns for torch datasets (training, evaluation).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

from .errors import S2MLPv2Error

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageError",
    "DEFAULT_MAX_PIXELS",
    "load_rgb",
    "decode_rgb",
    "declared_pixels",
    "file_kind",
    "os_reason",
    "to_rgb",
    "eval_transform",
    "CardTransform",
    "preprocess",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; ImageNet's largest images are far below this


class ImageError(S2MLPv2Error, ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def to_rgb(img):
    """Any PIL image as 8-bit RGB: 16-bit grayscale scaled by its range, transparency over white."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and 32-bit grayscale: scale by the type's range, not by clipping to 255.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, as a viewer shows them, not whatever colour they hide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open ``path`` and return an 8-bit RGB ``PIL.Image``, or raise ``ImageError``.

    Only regular files are opened: a FIFO named ``x.jpg`` would block the read forever.
    """
    name = os.fspath(path)
    try:
        kind = file_kind(os.stat(name).st_mode)
    except OSError as e:
        raise ImageError(f"{name}: {os_reason(e)}") from None
    if kind != "regular file":
        raise ImageError(f"{name}: not a regular file ({kind})")
    return _open_rgb(name, name, max_pixels)


def file_kind(mode: int) -> str:
    """What ``os.stat`` says a path is, in words: ``regular file``, ``directory``, ``FIFO``, ``socket``, ..."""
    import stat

    for test, words in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return words
    return "not a file"


def os_reason(e: OSError) -> str:
    """An ``OSError`` as the reason a user can act on: permission denied, symlink loop, no such file, ..."""
    import errno

    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ELOOP: "symlink loop (too many levels of symbolic links)",
        errno.ENOENT: "no such file (or a broken symlink)",
        errno.ENOTDIR: "a path component is not a directory",
        errno.ENAMETOOLONG: "file name too long",
    }
    return reasons.get(e.errno, e.strerror or type(e).__name__)


def decode_rgb(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS):
    """Encoded image bytes (JPEG, PNG, ...) -> an 8-bit RGB ``PIL.Image``, or ``ImageError`` naming ``name``."""
    import io

    if not data:
        raise ImageError(f"{name}: empty (0 bytes)")
    return _open_rgb(io.BytesIO(bytes(data)), name, max_pixels)


def declared_pixels(data: bytes, name: str = "image") -> int:
    """The pixel count an encoded image's header declares, read without decoding a pixel; ``ImageError`` if unreadable."""
    import io

    from PIL import Image

    if not data:
        raise ImageError(f"{name}: empty (0 bytes)")
    with _pillow_errors(name, bomb_warning="ignore"), Image.open(io.BytesIO(bytes(data))) as img:
        w, h = img.size
    return w * h


def _open_rgb(source, name: str, max_pixels: int):
    """``load_rgb``'s checks for a file name or a file object; ``name`` is what errors call it."""
    from PIL import Image

    with _pillow_errors(name, bomb_warning="error"), Image.open(source) as img:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(
                f"{name}: declares {w}x{h} = {w * h:,} pixels, over the {max_pixels:,}-pixel limit (possible decompression bomb)"
            )
        if w == 0 or h == 0:
            raise ImageError(f"{name}: has zero size")
        img.load()
        return to_rgb(img)


@contextlib.contextmanager
def _pillow_errors(name: str, bomb_warning: str):
    """Pillow's and the operating system's errors while reading ``name`` as one ``ImageError`` each, in words.
    ``bomb_warning``: what Pillow's decompression-bomb warning does (``"error"`` refuses, ``"ignore"`` reads on)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter(bomb_warning, Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: a directory, not an image file") from None
    except PermissionError as e:
        raise ImageError(f"{name}: {os_reason(e)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        reason = " ".join(str(e).split())[:120]
        raise ImageError(f"{name}: over Pillow's pixel limit ({reason}); refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        # PIL reports truncated data, bad headers and decoder errors with these types
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise ImageError(f"{name}: corrupt or truncated image ({reason})") from None


def eval_transform(pre):
    """Resize, center-crop and normalise exactly as the card says (timm's eval transform), for torch datasets.

    The run side uses :class:`CardTransform`, which computes the same floats with Pillow and numpy alone.
    """
    from timm.data import create_transform

    return create_transform(
        input_size=pre.input_size,
        is_training=False,
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
        crop_pct=pre.crop_pct,
    )


_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}  # PIL.Image.Resampling


class CardTransform:
    """The card's eval preprocessing with Pillow and numpy alone: bit for bit what :func:`eval_transform` computes.

    timm's eval transform (the default ``center`` crop mode), step by step, for an input of
    ``H x W`` and ``scale = (floor(H / crop_pct), floor(W / crop_pct))``:

    1. resize. A square scale: the shorter side becomes ``scale`` and the longer one
       ``int(scale * long / short)`` (torchvision's ``Resize(int)``). Otherwise (timm's
       ``ResizeKeepRatio``): both sides are divided by ``min(h / scale_h, w / scale_w)`` and
       rounded. Pillow's filter for ``interpolation``; an image already that size is not resampled;
    2. the centre ``H x W`` is cropped, offsets ``int(round((dim - size) / 2))``, after zero
       padding where the image is smaller (torchvision's ``CenterCrop``);
    3. ``uint8 -> float32 / 255``, then ``(x - mean) / std`` per channel in float32
       (``ToTensor`` and ``Normalize``), channels first.
    """

    def __init__(self, pre) -> None:
        import math

        _, h, w = pre.input_size
        if pre.interpolation not in _PIL_FILTERS:
            raise ImageError(f"interpolation {pre.interpolation!r} is not one of {', '.join(_PIL_FILTERS)}")
        crop_pct = pre.crop_pct or 0.875  # timm's DEFAULT_CROP_PCT
        self.crop = (int(h), int(w))
        self.scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        self.filter = _PIL_FILTERS[pre.interpolation]
        self.mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)

    def _resized(self, w: int, h: int) -> tuple[int, int]:
        scale_h, scale_w = self.scale
        if scale_h == scale_w:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = scale_h, int(scale_h * long / short)
            return (new_short, new_long) if w <= h else (new_long, new_short)
        ratio = min(h / scale_h, w / scale_w)
        return round(w / ratio), round(h / ratio)

    def __call__(self, image) -> np.ndarray:
        w, h = image.size
        new_w, new_h = self._resized(w, h)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), self.filter)
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        crop_h, crop_w = self.crop
        if crop_w > new_w or crop_h > new_h:  # pad with zeros first, as torchvision's CenterCrop does
            pad_w, pad_h = max(crop_w - new_w, 0), max(crop_h - new_h, 0)
            pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
            new_h, new_w = pixels.shape[:2]
        top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
        crop = pixels[top : top + crop_h, left : left + crop_w].transpose(2, 0, 1)
        x = crop.astype(np.float32) / np.float32(255)
        return ((x - self.mean) / self.std).astype(np.float32, copy=False)


def preprocess(image, pre) -> np.ndarray:
    """One RGB PIL image -> the model's input ``(3, H, W)`` float32, exactly as the card says (no torch needed)."""
    return CardTransform(pre)(image)
