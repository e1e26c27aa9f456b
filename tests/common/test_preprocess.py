"""The run side's preprocessing (``common.images.CardTransform``, Pillow and numpy) against timm's eval transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.images import CardTransform, eval_transform, load_rgb
from models.config import Preprocessing

VERIFY = Path(__file__).resolve().parents[2] / "calibration" / "data" / "cifar10-verify"
SETTINGS = [
    (32, 1.0, "bicubic"),  # the shipped CIFAR-10 card
    (32, 1.0, "bilinear"),
    (224, 0.875, "bicubic"),  # ImageNet cards
    (224, 0.9, "bilinear"),
    (224, 0.95, "lanczos"),
    (64, 1.15, "bicubic"),  # crop_pct above 1: the resized image is smaller than the crop and is zero padded
    (32, 0.875, "nearest"),
    ((224, 160), 0.9, "bicubic"),  # a non-square input: timm's ResizeKeepRatio
    ((160, 224), 1.0, "bilinear"),
]


def _images() -> list:
    rng = np.random.default_rng(0)
    photos = [load_rgb(p) for p in sorted(VERIFY.rglob("*.jpg"))[::50]]
    shapes = [(31, 47), (300, 200), (7, 9), (224, 224), (256, 256), (33, 32)]
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    gray = [Image.fromarray(rng.integers(0, 256, (40, 60), dtype=np.uint8)).convert("RGB")]
    return photos + noise + gray


@pytest.mark.parametrize("size,crop_pct,interpolation", SETTINGS, ids=[f"{s}-{c}-{i}" for s, c, i in SETTINGS])
def test_card_transform_is_bit_for_bit_timm_s_eval_transform(size, crop_pct, interpolation):
    h, w = size if isinstance(size, tuple) else (size, size)
    pre = Preprocessing(
        input_size=(3, h, w),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        crop_pct=crop_pct,
        interpolation=interpolation,
    )
    timm_transform, ours = eval_transform(pre), CardTransform(pre)
    for image in _images():
        expected = timm_transform(image).numpy()
        got = ours(image)
        assert got.dtype == np.float32 and got.shape == expected.shape == (3, h, w)
        np.testing.assert_array_equal(got, expected, err_msg=f"image of size {image.size}")
