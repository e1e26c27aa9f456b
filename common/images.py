"""Images, in one place: which files count as images, decoding untrusted files into RGB, and the card's preprocessing.

* ``IMAGE_SUFFIXES``: what every folder reader (training, evaluation, calibration) takes.
* ``load_rgb`` (a file) and ``decode_rgb`` (bytes): every failure is an ``ImageError`` with a one-line reason: unreadable or
  truncated files, files that are not images, and decompression bombs (a declared size over
  ``max_pixels``, checked from the header before any pixel is decoded). Grayscale, CMYK,
  RGBA, LA, palette and 16-bit images all come out as 8-bit RGB.
* ``eval_transform`` / ``preprocess``: resize, center-crop and normalise exactly as a model
  card's preprocessing says (any object with ``input_size``, ``interpolation``, ``mean``,
  ``std`` and ``crop_pct``), with timm's eval transform.
"""

from __future__ import annotations

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

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(f"{name}: empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as img:
                w, h = img.size
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: declares more pixels than Pillow opens; refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: corrupt or truncated image ({' '.join(str(e).split())[:120] or type(e).__name__})") from None
    return w * h


def _open_rgb(source, name: str, max_pixels: int):
    """``load_rgb``'s checks for a file name or a file object; ``name`` is what errors call it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{name}: declares {w}x{h} = {w * h:,} pixels, over the {max_pixels:,}-pixel limit (possible decompression bomb)"
                    )
                if w == 0 or h == 0:
                    raise ImageError(f"{name}: has zero size")
                img.load()
                return to_rgb(img)
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
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a readable image ({type(e).__name__})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        # PIL reports truncated data, bad headers and decoder errors with these types
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise ImageError(f"{name}: corrupt or truncated image ({reason})") from None


def eval_transform(pre):
    """Resize, center-crop and normalise exactly as the card says (timm's eval transform)."""
    from timm.data import create_transform

    return create_transform(
        input_size=pre.input_size,
        is_training=False,
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
        crop_pct=pre.crop_pct,
    )


def preprocess(image, pre) -> np.ndarray:
    """One RGB PIL image -> the model's input ``(3, H, W)`` float32, exactly as the card says."""
    return eval_transform(pre)(image).numpy()
