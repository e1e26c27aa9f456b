from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import models
from calibration.dataset import CalibrationError, OverlapError, build_calibration_set, check_disjoint
from calibration.sources import SourceError, discover
from common.images import ImageError, load_rgb
from models.s2mlpv2 import Preprocessing
from tests.conftest import make_image_folder
from tests.failures import (
    TINY,
    Case,
    Fails,
    Shared,
    calibration_on,
    only_corrupt,
    png_declaring,
    run_case,
    write_bytes,
)

PRE = Preprocessing(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear")


def _png_with_declared_size(path, width, height):
    """A tiny valid PNG whose header claims width x height (CRC recomputed)."""
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- readers


def test_imagefolder_tree_labels_come_from_folders(tmp_path):
    make_image_folder(tmp_path, classes=3, per_class=2)
    samples = discover(tmp_path)
    assert len(samples) == 6
    assert {s.label for s in samples} == {"class_0", "class_1", "class_2"}


def test_flat_folder_takes_synset_from_file_names(tmp_path):
    for name in ("n01440764_tench.JPEG", "n01530575_brambling.JPEG", "readme.txt"):
        if name.endswith("JPEG"):
            Image.new("RGB", (8, 8)).save(tmp_path / name, format="JPEG")
        else:
            (tmp_path / name).write_text("not an image")
    samples = discover(tmp_path)
    assert [s.label for s in samples] == ["n01440764", "n01530575"]


def test_flat_folder_with_labels_file(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    labels = tmp_path.parent / "labels.txt"
    labels.write_text("a.png cat\nb.png dog\n")
    assert [s.label for s in discover(tmp_path, labels)] == ["cat", "dog"]


def test_list_file_with_relative_paths_and_labels(tmp_path):
    make_image_folder(tmp_path / "imgs", classes=1, per_class=2)
    listing = tmp_path / "list.txt"
    listing.write_text("# calibration list\nimgs/class_0/000.png 7\nimgs/class_0/001.png\n")
    samples = discover(listing)
    assert [s.path for s in samples] == [tmp_path / "imgs/class_0/000.png", tmp_path / "imgs/class_0/001.png"]
    assert [s.label for s in samples] == ["7", None]


@pytest.mark.parametrize("layout", ["missing", "empty", "no-images"])
def test_sources_without_images_say_what_to_give(tmp_path, layout):
    src = tmp_path / "src"
    if layout != "missing":
        src.mkdir()
    if layout == "no-images":
        (src / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="not found|no images found"):
        discover(src)


def test_symlink_loop_does_not_recurse_forever(tmp_path):
    make_image_folder(tmp_path / "data", classes=2, per_class=2)
    os.symlink(tmp_path / "data", tmp_path / "data" / "class_0" / "loop")
    samples = discover(tmp_path / "data")
    assert len(samples) == 4


# ----------------------------------------------------------------------------- image modes


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "LA", "P", "I;16", "1"])
def test_every_image_mode_becomes_8bit_rgb(tmp_path, mode):
    path = tmp_path / f"img.{'tiff' if mode == 'CMYK' else 'png'}"
    if mode == "I;16":
        Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(path)
    elif mode == "P":
        img = Image.new("P", (6, 6), 1)
        img.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
        img.save(path)
    else:
        Image.new(mode, (6, 6)).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith(mode[:1])
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (6, 6)
    if mode == "I;16":
        assert np.asarray(img).min() == 255  # scaled by the 16-bit range, not clipped at 255
    if mode == "P":
        assert tuple(np.asarray(img)[0, 0]) == (200, 100, 50)


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(path)
    assert tuple(np.asarray(load_rgb(path))[0, 0]) == (255, 255, 255)


def test_truncated_and_fake_images_raise_image_error(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is a text file")
    for path in (truncated, fake):
        with pytest.raises(ImageError, match=path.name):
            load_rgb(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_with_declared_size(bomb, 100_000, 100_000)
    with pytest.raises(ImageError, match="pixel limit"):
        load_rgb(bomb, max_pixels=10_000_000)


# ----------------------------------------------------------------------------- sampling and cache


def test_sampling_is_class_stratified_and_deterministic(tmp_path):
    make_image_folder(tmp_path, classes=3, per_class=10)
    a = build_calibration_set(tmp_path, PRE, 9, seed=3, progress=False)
    b = build_calibration_set(tmp_path, PRE, 9, seed=3, progress=False)
    c = build_calibration_set(tmp_path, PRE, 9, seed=4, progress=False)
    assert a.files == b.files and np.array_equal(a.images, b.images)
    assert a.files != c.files
    assert sorted(a.labels) == ["class_0"] * 3 + ["class_1"] * 3 + ["class_2"] * 3
    assert a.images.shape == (9, 3, 32, 32) and a.images.dtype == np.float32


def test_preprocessing_follows_the_card(tmp_path):
    make_image_folder(tmp_path, classes=1, per_class=2, size=48)
    pre = Preprocessing(input_size=(3, 24, 24), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.75, interpolation="bicubic")
    s = build_calibration_set(tmp_path, pre, 2, progress=False)
    assert s.images.shape == (2, 3, 24, 24)
    assert -1.0 - 1e-6 <= s.images.min() and s.images.max() <= 1.0 + 1e-6  # (x - 0.5) / 0.5


def test_cache_is_reused_and_records_files_and_hashes(tmp_path):
    make_image_folder(tmp_path / "d", classes=2, per_class=4)
    first = build_calibration_set(tmp_path / "d", PRE, 4, cache_dir=tmp_path / "cache", progress=False)
    second = build_calibration_set(tmp_path / "d", PRE, 4, cache_dir=tmp_path / "cache", progress=False)
    assert not first.from_cache and second.from_cache
    assert np.array_equal(first.images, second.images)
    import json

    meta = json.loads(first.cache_path.with_suffix(".json").read_text())
    assert meta["files"] == first.files and len(meta["file_hashes"]) == 4
    assert meta["content_hash"] == first.content_hash
    assert meta["preprocessing"]["input_size"] == [3, 32, 32]
    other = build_calibration_set(tmp_path / "d", PRE, 3, cache_dir=tmp_path / "cache", progress=False)
    assert not other.from_cache


def test_corrupt_files_are_skipped_counted_and_named(tmp_path, caplog):
    make_image_folder(tmp_path, classes=2, per_class=3)
    (tmp_path / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with caplog.at_level(logging.WARNING, logger="calibration"):
        s = build_calibration_set(tmp_path, PRE, 6, progress=False)
    assert len(s.files) == 6 and len(s.skipped) == 1
    assert "broken.png" in s.skipped[0] and "broken.png" in caplog.text


def test_too_few_usable_images_says_how_many_were_found(tmp_path):
    make_image_folder(tmp_path, classes=1, per_class=3)
    (tmp_path / "class_0" / "bad.jpg").write_text("nope")
    with pytest.raises(CalibrationError, match=r"only 3 usable images .*4 found, 1 skipped.*10 calibration"):
        build_calibration_set(tmp_path, PRE, 10, progress=False)


def test_only_corrupt_images_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_text("x")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(CalibrationError, match="only 0 usable"):
        build_calibration_set(tmp_path, PRE, 1, progress=False)


def test_holdout_slice_is_separate_from_calibration(tmp_path):
    make_image_folder(tmp_path, classes=2, per_class=5)
    s = build_calibration_set(tmp_path, PRE, 6, holdout=2, progress=False)
    assert s.calibration.shape[0] == 6 and s.holdout.shape[0] == 2
    assert len(set(s.files)) == 8


def test_overlap_between_eval_and_calibration_is_an_error(tmp_path):
    make_image_folder(tmp_path / "calib", classes=2, per_class=3)
    s = build_calibration_set(tmp_path / "calib", PRE, 4, progress=False)
    copy = tmp_path / "eval" / "copy.png"
    copy.parent.mkdir()
    copy.write_bytes(open(s.files[0], "rb").read())
    with pytest.raises(OverlapError, match="also calibration images"):
        check_disjoint(s, [copy])
    other = tmp_path / "eval" / "new.png"
    Image.new("RGB", (32, 32), (1, 1, 1)).save(other)
    check_disjoint(s, [other])  # no overlap: no error


# ----------------------------------------------------------------------------- bad input, through the tools


CLEAN_FAILURES = [
    Case(
        "data-folder-empty",
        "calibration.__main__",
        lambda tmp, s: calibration_on(write_bytes(tmp / "data" / ".keep", b"").parent, tmp),
        Fails("no images found", "give an ImageFolder tree"),
    ),
    Case(
        "data-folder-without-images",
        "calibration.__main__",
        lambda tmp, s: calibration_on(write_bytes(tmp / "data" / "notes.txt", b"hello").parent, tmp),
        Fails("no images found", "give an ImageFolder tree"),
    ),
    Case(
        "data-only-corrupt-images",
        "calibration.__main__",
        only_corrupt,
        Fails(r"only 0 usable images .*3 skipped as unreadable, first: .*corrupt or truncated", "add images"),
    ),
    Case(
        "data-list-of-missing-files",
        "calibration.__main__",
        lambda tmp, s: calibration_on(write_bytes(tmp / "list.txt", b"gone/a.png\ngone/b.png\n"), tmp),
        Fails(r"only 0 usable images .*gone/[ab]\.png: does not exist", "add images"),
    ),
    Case(
        "data-binary-file-as-list",
        "calibration.__main__",
        lambda tmp, s: calibration_on(write_bytes(tmp / "data.bin", bytes(range(256))), tmp),
        Fails("is a binary file", "give a folder of images or a text file listing image paths"),
    ),
    Case(
        "data-decompression-bomb",
        "calibration.__main__",
        lambda tmp, s: calibration_on(png_declaring(tmp / "data" / "bomb.png", 100_000, 100_000).parent, tmp, size=1),
        Fails(r"only 0 usable .*bomb\.png: over Pillow's pixel limit .*10000000000 pixels.*decompression bomb", "add images"),
    ),
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)


def _white_images(folder: Path) -> list[str]:
    """A white image in every mode the decoder converts, plus images smaller than the model's crop."""
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), "white").save(folder / "rgb.png")
    Image.new("L", (32, 32), 255).save(folder / "gray.png")
    Image.new("LA", (32, 32), (255, 255)).save(folder / "gray-alpha.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(folder / "transparent.png")  # hidden colour: shown as white
    Image.new("CMYK", (32, 32), (0, 0, 0, 0)).save(folder / "cmyk.tiff")
    Image.new("1", (32, 32), 1).save(folder / "bilevel.png")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.save(folder / "palette.png")
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(folder / "gray16.png")
    Image.new("RGB", (2, 2), "white").save(folder / "tiny.png")  # smaller than the 32 x 32 crop: resized up
    Image.new("RGB", (1, 40), "white").save(folder / "sliver.png")
    return sorted(p.name for p in folder.iterdir())


def test_every_image_mode_and_size_becomes_the_same_input(tmp_path: Path, capsys):
    names = _white_images(tmp_path / "data")
    status = importlib.import_module("calibration.__main__").main(calibration_on(tmp_path / "data", tmp_path, len(names)))
    assert status == 0 and f"{len(names)} images ({len(names)} calibration" in capsys.readouterr().out
    (meta,) = (tmp_path / "out").glob("calib-*.json")
    images = np.load(meta.with_suffix(".npy"))
    files = [Path(f).name for f in json.loads(meta.read_text())["files"]]
    assert sorted(files) == names and images.shape == (len(names), 3, 32, 32)
    white = images[files.index("rgb.png")]
    for name, image in zip(files, images):
        np.testing.assert_allclose(image, white, atol=1e-5, err_msg=name)


def test_symlink_loops_end_and_count_every_image_once(shared: Shared, tmp_path: Path, capsys):
    data = shutil.copytree(shared.images, tmp_path / "data")
    os.symlink(data, data / "class_0" / "loop")  # a folder inside itself
    (data / "links").mkdir()
    os.symlink("self.png", data / "links" / "self.png")  # a file link to itself
    status = importlib.import_module("calibration.__main__").main(calibration_on(data, tmp_path, size=8))
    assert status == 0 and "8 images (8 calibration + 0 held out) from 2 classes" in capsys.readouterr().out
    (meta,) = (tmp_path / "out").glob("calib-*.json")
    record = json.loads(meta.read_text())
    assert len(set(record["files"])) == 8 and all("/loop/" not in f for f in record["files"])
    assert len(record["skipped"]) == 1 and "self.png" in record["skipped"][0]


FORMATS = {
    "PNG": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"),
    "JPEG": ("RGB", "L", "CMYK"),
    "TIFF": ("RGB", "CMYK", "I;16", "F"),
    "BMP": ("RGB", "P"),
    "GIF": ("P", "L"),
    "WEBP": ("RGB", "RGBA"),
}
ENCODINGS = [(fmt, mode) for fmt, modes in FORMATS.items() for mode in modes]
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Callable[[bytes, str], Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    return lambda data, suffix: write_bytes(folder / f"image{suffix}", data)


def _decode_and_preprocess(path: Path, max_pixels: int = 1_000_000) -> None:
    """Decode and preprocess ``path`` as calibration does; only ``ImageError`` may escape."""
    from common.images import preprocess

    try:
        image = load_rgb(path, max_pixels)
    except ImageError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    assert preprocess(image, models.get_variant(TINY).preprocessing).shape == (3, 32, 32)


def _encode(fmt: str, mode: str, width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert("L" if mode in ("I;16", "F") else mode)
    if mode in ("I;16", "F"):
        image = Image.fromarray(np.asarray(image).astype(np.uint16 if mode == "I;16" else np.float32) * 257)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damage it is handed
@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".jpg", ".png", ".tiff", ".gif", ".bmp", ".webp"]))
def test_fuzz_random_bytes(fuzz_file, data: bytes, suffix: str):
    _decode_and_preprocess(fuzz_file(data, suffix))


@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(
    encoding=st.sampled_from(ENCODINGS),
    width=st.integers(1, 48),
    height=st.integers(1, 48),
    seed=st.integers(0, 2**16),
    keep=st.floats(0.0, 1.0),
    damage=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=4),
)
def test_fuzz_truncated_and_damaged_encodings(fuzz_file, encoding, width, height, seed, keep, damage):
    fmt, mode = encoding
    data = bytearray(_encode(fmt, mode, width, height, seed))
    data = data[: max(1, int(len(data) * keep))]
    for offset, value in damage:
        data[offset % len(data)] = value
    _decode_and_preprocess(fuzz_file(bytes(data), f".{fmt.lower()}"))


@FUZZ
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1))
def test_fuzz_declared_sizes(fuzz_file, width: int, height: int):
    path = png_declaring(fuzz_file(b"", ".png"), width, height)
    try:
        load_rgb(path, max_pixels=1_000_000)
    except ImageError as e:
        assert width * height <= 1_000_000 or "pixel limit" in str(e)
