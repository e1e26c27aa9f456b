"""Bad input, faults and untrusted files, each through a tool's ``main(argv)`` or the public API.

A case that fails must fail cleanly: exit status 2 (130 for an interrupt), exactly one
``error: <problem>; <fix>`` line on stderr, no traceback, and nothing written to the output
directory. Cases that should work (unusual image modes, tiny images, symlink loops) show they do.
"""

from __future__ import annotations

import builtins
import errno
import importlib
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import types
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import models
from calibration.images import ImageError, load_rgb
from engines.runtime import InputError, check_input
from engines.sidecar import ProfileError, Sidecar
from models.cli import report_error
from pipeline.manifest import Manifest, OutputLock
from pipeline.onnx_runtime import OnnxRuntimeRunner
from pipeline.plugin_swap import PluginSwapError, swap_in_plugin_nodes
from tests.conftest import ROOT, make_image_folder

TINY = "s2mlpv2_tiny_test"
FP32_BUILD = ["--precision", "fp32", "--model", TINY, "--batch", "1,2,4", "--backend", "onnxruntime"]


# ----------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Fails:
    problem: str  # regex the error line must match: what is wrong
    fix: str  # regex: what to do about it
    status: int = 2


def files_under(directory: Path) -> set[str]:
    """Every file below ``directory`` (relative paths); empty when it does not exist."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir()} if directory.exists() else set()


def assert_fails_cleanly(status: int, stderr: str, expected: Fails) -> str:
    """One ``error:`` line, the last one on stderr, naming the problem and the fix; returns it."""
    assert "Traceback" not in stderr, stderr
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr) if line.strip()]  # tqdm redraws with \r
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1] and errors[0].startswith("error: "), stderr
    assert re.search(expected.problem, errors[0]), f"problem {expected.problem!r} not named in: {errors[0]}"
    assert re.search(expected.fix, errors[0]), f"fix {expected.fix!r} not named in: {errors[0]}"
    assert status == expected.status, stderr
    return errors[0]


def assert_api_error_is_one_clean_line(error: Exception, expected: Fails, capsys) -> None:
    """An API error, reported the way every tool reports it, is one line naming the problem and the fix."""
    assert "\n" not in str(error)
    status = report_error(error)
    assert_fails_cleanly(status, capsys.readouterr().err, expected)


# ----------------------------------------------------------------------------- shared inputs


@dataclass(frozen=True)
class Shared:
    checkpoint: Path  # the tiny model, seed 0, with its card
    onnx: Path  # exported from it
    build: Path  # a finished fp32 build_engine output directory
    images: Path  # 2 classes x 4 RGB images, 32 x 32


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    from pipeline.orchestrate import BuildOptions, run_pipeline

    root = tmp_path_factory.mktemp("shared")
    torch.manual_seed(0)
    checkpoint = models.save_checkpoint(models.create_model(TINY).eval(), root / "tiny.safetensors")
    build = root / "build"
    # the same settings as FP32_BUILD, so that command finds every stage done
    opts = BuildOptions(precision="fp32", model=TINY, batch=(1, 2, 4), backend="onnxruntime", out=build, bench_seconds=0.05)
    run_pipeline(opts)
    return Shared(checkpoint, build / "model.onnx", build, make_image_folder(root / "images", classes=2, per_class=4))


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated(path: Path, into: Path) -> Path:
    data = path.read_bytes()
    return _write(into, data[: len(data) // 2])


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header claims ``width`` x ``height`` (CRC recomputed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return _write(path, bytes(data))


def _foreign_onnx(path: Path, classes: int = 3, size: int = 32) -> Path:
    """A valid classifier graph that is not ours: global average pool over (3, size, size) -> ``classes`` logits."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, classes], np.ones(3 * classes, np.float32))
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _edited_card(checkpoint: Path, tmp: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of ``checkpoint`` whose JSON card has been edited by hand."""
    copy = Path(shutil.copy(checkpoint, tmp / checkpoint.name))
    card = json.loads(checkpoint.with_suffix(".json").read_text())
    edit(card)
    copy.with_suffix(".json").write_text(json.dumps(card))
    return copy


class _RunsCode:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- bad files and data, through the tools


@dataclass(frozen=True)
class Case:
    id: str
    tool: str  # module whose main(argv) runs
    argv: Callable[[Path, Shared], list[str]]  # writes the bad input under tmp; outputs go to tmp/out
    expected: Fails


def _other_variant(tmp: Path, s: Shared) -> list[str]:
    # a CIFAR-10 state dict with the tiny model's card beside it
    torch.save(models.create_model("s2mlpv2_cifar10").state_dict(), tmp / "weights.pt")
    shutil.copy(s.checkpoint.with_suffix(".json"), tmp / "weights.json")
    return ["--data", str(s.images), "--checkpoint", str(tmp / "weights.pt"), "--size", "2", "--cache-dir", str(tmp / "out")]


def _pickle_running_code(tmp: Path, s: Shared) -> list[str]:
    # the marker would land in the output directory, which must stay absent
    with open(tmp / "evil.pt", "wb") as f:
        pickle.dump({"head.weight": _RunsCode(tmp / "out" / "pwned")}, f)
    return [*FP32_BUILD, "--checkpoint", str(tmp / "evil.pt"), "--out", str(tmp / "out")]


def _only_corrupt(tmp: Path, s: Shared) -> list[str]:
    for path in sorted((s.images / "class_0").iterdir())[:3]:
        _truncated(path, tmp / "data" / path.name)
    return ["--data", str(tmp / "data"), "--model", TINY, "--size", "2", "--cache-dir", str(tmp / "out")]


def _calibration_on(data: Path, tmp: Path, size: int = 2) -> list[str]:
    return ["--data", str(data), "--model", TINY, "--size", str(size), "--cache-dir", str(tmp / "out")]


def _verify_on(artifact: Path, data: Path, tmp: Path) -> list[str]:
    return ["--model", TINY, "--artifact", str(artifact), "--data", str(data), "--out", str(tmp / "out" / "report.json")]


CASES = [
    # checkpoints
    Case("checkpoint-missing", "build_engine",
         lambda tmp, s: [*FP32_BUILD, "--checkpoint", str(tmp / "nope.safetensors"), "--out", str(tmp / "out")],
         Fails("checkpoint not found", "check the path")),
    Case("checkpoint-empty", "pipeline.export",
         lambda tmp, s: ["--checkpoint", str(_write(tmp / "empty.safetensors", b"")), "--out", str(tmp / "out" / "m.onnx")],
         Fails(r"empty \(0 bytes\)", "re-copy or re-save")),
    Case("checkpoint-truncated", "pipeline.verify",
         lambda tmp, s: ["--checkpoint", str(_truncated(s.checkpoint, tmp / "t.safetensors")), "--artifact", str(s.onnx),
                         "--data", str(s.images), "--out", str(tmp / "out" / "report.json")],
         Fails("not a readable safetensors file", "truncated or corrupt: re-copy or re-save")),
    Case("checkpoint-random-bytes", "pipeline.verify",
         lambda tmp, s: ["--checkpoint", str(_write(tmp / "r.pt", np.random.default_rng(0).bytes(4096))),
                         "--artifact", str(s.onnx), "--data", str(s.images), "--out", str(tmp / "out" / "report.json")],
         Fails("not a readable PyTorch checkpoint", "re-copy or re-save")),
    Case("checkpoint-unsupported-type", "build_engine",
         lambda tmp, s: [*FP32_BUILD, "--checkpoint", str(_write(tmp / "w.h5", b"HDF")), "--out", str(tmp / "out")],
         Fails(r"unsupported checkpoint type '\.h5'", r"use \.safetensors or a PyTorch state dict")),
    Case("checkpoint-for-another-variant", "calibration.__main__", _other_variant,
         Fails(r"does not fit s2mlpv2_tiny_test \(\d+ mismatches: .* vs model", "s2mlpv2_cifar10 checkpoint .* delete the stale card")),
    Case("checkpoint-pickle-runs-code", "build_engine", _pickle_running_code,
         Fails("could run code when unpickled; refused", r"Re-save it as a plain state_dict")),
    Case("card-disagrees-with-weights", "pipeline.export",
         lambda tmp, s: ["--checkpoint", str(_edited_card(s.checkpoint, tmp, lambda c: c["config"].update(embed_dims=[16, 64]))),
                         "--out", str(tmp / "out" / "m.onnx")],
         Fails("disagrees with the card inside", "delete the stale JSON or re-save")),
    Case("card-with-zero-std", "build_engine",
         lambda tmp, s: [*FP32_BUILD, "--checkpoint",
                         str(_edited_card(s.checkpoint, tmp, lambda c: c["preprocessing"].update(std=[0, 0, 0]))),
                         "--out", str(tmp / "out")],
         Fails("std must be positive", "re-save it")),
    # ONNX files
    Case("onnx-corrupt", "pipeline.precision",
         lambda tmp, s: ["--onnx", str(_write(tmp / "c.onnx", np.random.default_rng(1).bytes(3000))), "--precision", "fp16",
                         "--out", str(tmp / "out" / "m.onnx")],
         Fails("not a readable ONNX file", "re-run the export stage")),
    Case("onnx-truncated", "pipeline.verify",
         lambda tmp, s: _verify_on(_truncated(s.onnx, tmp / "t.onnx"), s.images, tmp),
         Fails("cannot load .*t.onnx", "re-run the export stage")),
    Case("onnx-truncated-benchmark", "pipeline.benchmark",
         lambda tmp, s: ["--model", TINY, "--onnx", str(_truncated(s.onnx, tmp / "t.onnx")), "--threads", "1",
                         "--out", str(tmp / "out" / "b.json")],
         Fails("not a readable ONNX file", "re-run the export stage")),
    Case("onnx-of-another-project", "pipeline.precision",
         lambda tmp, s: ["--onnx", str(_foreign_onnx(tmp / "f.onnx")), "--precision", "fp16", "--out", str(tmp / "out" / "m.onnx")],
         Fails("not written by this project's export stage", "export it with python -m pipeline.export")),
    Case("onnx-of-another-model", "pipeline.verify",
         lambda tmp, s: _verify_on(_foreign_onnx(tmp / "f.onnx"), s.images, tmp),
         Fails(r"logits of shape \(8, 3\), the reference model \(8, 5\)", "verify the artifact against the checkpoint")),
    Case("onnx-for-another-input-size", "pipeline.verify",
         lambda tmp, s: _verify_on(_foreign_onnx(tmp / "f.onnx", size=64), s.images, tmp),
         Fails("input images are 32x32, the graph expects 64x64", "preprocess them with the card of the model")),
    # calibration and evaluation data
    Case("data-folder-empty", "calibration.__main__",
         lambda tmp, s: _calibration_on(_write(tmp / "data" / ".keep", b"").parent, tmp),
         Fails("no images found", "give an ImageFolder tree")),
    Case("data-folder-without-images", "calibration.__main__",
         lambda tmp, s: _calibration_on(_write(tmp / "data" / "notes.txt", b"hello").parent, tmp),
         Fails("no images found", "give an ImageFolder tree")),
    Case("data-only-corrupt-images", "calibration.__main__", _only_corrupt,
         Fails(r"only 0 usable images .*3 skipped as unreadable, first: .*corrupt or truncated", "add images")),
    Case("data-list-of-missing-files", "calibration.__main__",
         lambda tmp, s: _calibration_on(_write(tmp / "list.txt", b"gone/a.png\ngone/b.png\n"), tmp),
         Fails(r"only 0 usable images .*gone/[ab]\.png: does not exist", "add images")),
    Case("data-binary-file-as-list", "calibration.__main__",
         lambda tmp, s: _calibration_on(_write(tmp / "data.bin", bytes(range(256))), tmp),
         Fails("is a binary file", "give a folder of images or a text file listing image paths")),
    Case("data-text-named-jpg", "pipeline.verify",
         lambda tmp, s: _verify_on(s.onnx, _write(tmp / "data" / "photo.jpg", b"not an image").parent, tmp),
         Fails(r"no usable images .*1 unreadable", "give a folder of readable images")),
    Case("data-decompression-bomb", "calibration.__main__",
         lambda tmp, s: _calibration_on(_png_declaring(tmp / "data" / "bomb.png", 100_000, 100_000).parent, tmp, size=1),
         Fails(r"only 0 usable .*bomb\.png: over Pillow's pixel limit .*10000000000 pixels.*decompression bomb", "add images")),
    Case("evaluate-folder-empty", "models.evaluate",
         lambda tmp, s: ["--checkpoint", str(s.checkpoint), "--data", str(_write(tmp / "d" / ".keep", b"").parent), "--workers", "0"],
         Fails("is not an ImageFolder tree", "one sub-folder of images per class")),
    Case("evaluate-text-named-jpg", "models.evaluate",
         lambda tmp, s: ["--checkpoint", str(s.checkpoint), "--data", str(_write(tmp / "d" / "c0" / "a.jpg", b"text").parents[1]),
                         "--workers", "0"],
         Fails(r"no readable images .*1 unreadable", "give readable images")),
    Case("evaluate-folders-are-not-the-model-classes", "models.evaluate",
         lambda tmp, s: ["--checkpoint", str(ROOT / "models/weights/s2mlpv2_cifar10.safetensors"), "--data", str(s.images),
                         "--workers", "0"],
         Fails(r"folders \['class_0', 'class_1'\] .* are not classes of this model", "sub-folders are the class names")),
    Case("split-holds-out-too-many", "models.data",
         lambda tmp, s: ["split", "--src", str(s.images), "--out", str(tmp / "out"), "--per-class", "4"],
         Fails("class class_0 has 4 images, not more than the 4 to hold out", "hold out fewer per class")),
    # plans
    Case("plan-without-sidecar", "pipeline.verify",
         lambda tmp, s: _verify_on(_write(tmp / "m.plan", b"plan"), s.images, tmp),
         Fails(r"m\.json is missing", "rebuild the plan")),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    argv = case.argv(tmp_path, shared)
    before = files_under(tmp_path / "out")
    status = importlib.import_module(case.tool).main(argv)
    assert_fails_cleanly(status, capsys.readouterr().err, case.expected)
    assert files_under(tmp_path / "out") == before


# ----------------------------------------------------------------------------- a plan from another TensorRT or GPU


def _sidecar(**overrides) -> Sidecar:
    base = dict(flavour="tensorrt", flavour_version="11.4.0", gpu_name="NVIDIA H100", compute_capabilities=("9.0",),
                onnx_sha256="a" * 64, plugin_sha256=None, batch_profile=(1, 8, 32), input_shape=(3, 32, 32),
                precision="fp32")  # fmt: skip
    return Sidecar(**{**base, **overrides})


@pytest.mark.parametrize(
    "runtime_version,gpu,expected",
    [
        (
            "11.6.1",
            "9.0",
            Fails(r"built with TensorRT 11\.4\.0, but this machine has TensorRT 11\.6\.1", "rebuild the plan here"),
        ),
        (
            "11.4.0",
            "8.9",
            Fails(r"compute capability 9\.0 \(NVIDIA H100\), but this GPU is 8\.9", "rebuild the plan on this GPU"),
        ),
    ],
    ids=["plan-from-another-tensorrt", "plan-from-another-gpu"],
)
def test_plan_from_elsewhere_is_refused_before_loading(runtime_version, gpu, expected, shared, tmp_path, monkeypatch, capsys):
    import engines.runtime
    from engines.trt import Flavour

    # this machine, as far as the runtime can tell, without TensorRT 11 being installed: a fake
    # module stands in (only a version), and the header check that would need the real one is skipped
    monkeypatch.setattr(Flavour, "module", lambda self: types.SimpleNamespace(__version__=runtime_version))
    monkeypatch.setattr(engines.runtime, "_check_header", lambda *args: None)
    monkeypatch.setattr(engines.runtime, "cuda_device", lambda: ("a GPU", gpu))
    _sidecar().write(_write(tmp_path / "m.plan", b"plan"))
    status = importlib.import_module("pipeline.verify").main(_verify_on(tmp_path / "m.plan", shared.images, tmp_path))
    assert_fails_cleanly(status, capsys.readouterr().err, expected)
    assert not (tmp_path / "out").exists()


def test_plan_on_a_machine_without_tensorrt(shared: Shared, tmp_path: Path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("the tensorrt package is installed here; this case is a machine without it")
    _sidecar().write(_write(tmp_path / "m.plan", b"plan"))
    status = importlib.import_module("pipeline.verify").main(_verify_on(tmp_path / "m.plan", shared.images, tmp_path))
    assert_fails_cleanly(
        status,
        capsys.readouterr().err,
        Fails("cannot run .*m.plan: TensorRT 11 is not installed", r"pip install -e \.\[tensorrt\]"),
    )
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- data that should work


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
    status = importlib.import_module("calibration.__main__").main(_calibration_on(tmp_path / "data", tmp_path, len(names)))
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
    status = importlib.import_module("calibration.__main__").main(_calibration_on(data, tmp_path, size=8))
    assert status == 0 and "8 images (8 calibration + 0 held out) from 2 classes" in capsys.readouterr().out
    (meta,) = (tmp_path / "out").glob("calib-*.json")
    record = json.loads(meta.read_text())
    assert len(set(record["files"])) == 8 and all("/loop/" not in f for f in record["files"])
    assert len(record["skipped"]) == 1 and "self.png" in record["skipped"][0]


# ----------------------------------------------------------------------------- running the model


def _batches() -> list[tuple[str, np.ndarray | torch.Tensor, Fails]]:
    ok = np.zeros((2, 3, 32, 32), np.float32)
    nan, inf = ok.copy(), torch.zeros(2, 3, 32, 32)
    nan[1, 2, 3, 4] = np.nan
    inf[0, 0, 0, 0] = float("-inf")
    return [
        ("wrong-dtype", ok.astype(np.uint8), Fails("dtype uint8 is not a float type", "pass float32 images")),
        ("wrong-rank", ok[0], Fails("got rank 3", "add the batch dimension")),
        ("wrong-channels", ok[:, :1], Fails("input has 1 channels", "convert images to RGB")),
        ("wrong-size", np.zeros((2, 3, 64, 64), np.float32), Fails("input images are 64x64", "preprocess them with the card")),
        ("nan", nan, Fails("input contains NaN or Inf", "check the preprocessing")),
        ("inf", inf, Fails("input contains NaN or Inf", "check the preprocessing")),
    ]


@pytest.mark.parametrize("runner", ["onnxruntime", "tensorrt-checks"])
@pytest.mark.parametrize("bad", _batches(), ids=[b[0] for b in _batches()])
def test_bad_batches_are_refused_before_running(runner, bad, shared: Shared, capsys):
    _, batch, expected = bad
    run = OnnxRuntimeRunner(shared.onnx) if runner == "onnxruntime" else (lambda x: check_input(x, _sidecar()))
    with pytest.raises(InputError) as info:
        run(batch)
    assert_api_error_is_one_clean_line(info.value, expected, capsys)


def test_batch_outside_the_plan_profile_is_refused(capsys):
    with pytest.raises(ProfileError) as info:
        check_input(np.zeros((33, 3, 32, 32), np.float32), _sidecar())
    assert_api_error_is_one_clean_line(
        info.value, Fails(r"batch 33 is outside the plan's profile \[1, 32\]", "rebuild with --batch"), capsys
    )


def test_plugin_swap_on_a_graph_without_shifts_is_refused(tmp_path: Path, capsys):
    with pytest.raises(PluginSwapError) as info:
        swap_in_plugin_nodes(onnx.load(str(_foreign_onnx(tmp_path / "f.onnx"))))
    assert_api_error_is_one_clean_line(
        info.value, Fails("no spatial shifts", "export one with python -m pipeline.export"), capsys
    )


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_unwritable_output_directory(how, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions; the 'simulated' case covers this as root")
        out.chmod(0o500)
    else:
        real_open = os.open

        def refusing_open(path, flags, *args, **kwargs):
            if str(path).startswith(str(out)) and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
    try:
        status = importlib.import_module("build_engine").main([*FP32_BUILD, "--out", str(out)])
    finally:
        out.chmod(0o700)
    assert_fails_cleanly(
        status,
        capsys.readouterr().err,
        Fails(r"out/\.lock: Permission denied", "fix its permissions or choose another output directory"),
    )
    assert files_under(out) == set()


def test_output_path_under_a_file(tmp_path: Path, capsys):
    _write(tmp_path / "out", b"a file, not a folder")
    status = importlib.import_module("build_engine").main([*FP32_BUILD, "--out", str(tmp_path / "out" / "build")])
    assert_fails_cleanly(status, capsys.readouterr().err, Fails("is a file, not a directory", "choose another output path"))
    assert (tmp_path / "out").read_bytes() == b"a file, not a folder"


class _FillsTheDisk:
    """A writable file that takes half of the first write, then fails as a full disk does (no file name)."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _full_disk(monkeypatch, *modules) -> None:
    """Every file these modules open for writing fills the disk."""

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _FillsTheDisk(f) if any(m in mode for m in "wax") else f

    for module in modules:
        monkeypatch.setattr(module, "open", open_on_full_disk, raising=False)


@pytest.mark.parametrize(
    "tool,full",
    [
        ("calibration.__main__", ["calibration.dataset"]),
        ("calibration.__main__", ["models.fileio"]),
        ("pipeline.verify", ["models.fileio"]),
    ],
    ids=["calibration-array", "calibration-record", "verify-report"],
)
def test_disk_full_during_a_write_leaves_nothing(tool, full, shared: Shared, tmp_path: Path, monkeypatch, capsys):
    argv = (
        _calibration_on(shared.images, tmp_path, 4)
        if tool.startswith("calibration")
        else _verify_on(shared.onnx, shared.images, tmp_path)
    )
    _full_disk(monkeypatch, *map(importlib.import_module, full))
    status = importlib.import_module(tool).main(argv)
    line = assert_fails_cleanly(
        status, capsys.readouterr().err, Fails(r"no space left writing .*out/\S+ on the disk mounted at /\S*", "free some space")
    )
    assert ".tmp" not in line  # the file being written, not its temporary name
    assert files_under(tmp_path / "out") == set()


def test_disk_full_while_splitting_leaves_no_partial_tree(shared: Shared, tmp_path: Path, monkeypatch, capsys):
    copies = []

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))  # no hard links: every file is copied

    def copy_until_full(src, dst):
        if len(copies) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        copies.append(shutil.copyfile(src, dst))

    monkeypatch.setattr(os, "link", cross_device)
    monkeypatch.setattr(shutil, "copy2", copy_until_full)
    argv = ["split", "--src", str(shared.images), "--out", str(tmp_path / "out"), "--per-class", "1"]
    status = importlib.import_module("models.data").main(argv)
    assert_fails_cleanly(status, capsys.readouterr().err, Fails(r"no space left writing .*\.png on the disk", "free some space"))
    assert len(copies) == 3 and list(tmp_path.iterdir()) == []  # neither OUT nor OUT.partial


def test_second_run_on_a_locked_output_directory(tmp_path: Path, capsys):
    out = tmp_path / "out"
    with OutputLock(out):
        before = files_under(out)
        status = importlib.import_module("build_engine").main([*FP32_BUILD, "--out", str(out)])
    assert_fails_cleanly(
        status,
        capsys.readouterr().err,
        Fails(r"is being written by another build \(pid \d+\)", "wait for it to finish or pass another --out"),
    )
    assert files_under(out) == before == {".lock"}


def test_eval_set_overlapping_calibration_is_refused_before_any_stage(shared: Shared, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = ["--precision", "int8", "--model", TINY, "--batch", "1,2,4", "--backend", "onnxruntime", "--calib-data", str(shared.images),
            "--calib-size", "4", "--calib-holdout", "0", "--eval-data", str(shared.images), "--out", str(out)]  # fmt: skip
    status = importlib.import_module("build_engine").main(argv)
    assert_fails_cleanly(
        status,
        capsys.readouterr().err,
        Fails("4 evaluation images are also calibration images", "evaluate on images the calibration never saw"),
    )
    assert Manifest(out).stages == {}
    # only the lock and the (complete, reusable) calibration cache: no stage ran
    assert {p for p in files_under(out) if not p.startswith("calibration/calib-")} == {".lock"}


def test_interrupt_mid_stage_is_not_marked_done_and_rerun_completes(shared: Shared, tmp_path: Path, capsys):
    out = shutil.copytree(shared.build, tmp_path / "out", ignore=shutil.ignore_patterns(".lock"))
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        (out / name).unlink()  # every earlier stage is done, the benchmark (a few seconds) runs again
    argv = [*FP32_BUILD, "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "build_engine.py", *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while "benchmark" in Manifest(out).stages:  # a stage's record leaves the manifest when the stage starts
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    before = files_under(out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert_fails_cleanly(proc.returncode, stderr, Fails("interrupted", "run the same command again to continue", status=130))
    assert list(Manifest(out).stages) == ["export", "build", "verify"]
    assert files_under(out) == before and not any(name.startswith("benchmark") for name in before)
    assert importlib.import_module("build_engine").main(argv) == 0
    assert list(Manifest(out).stages) == ["export", "build", "verify", "benchmark"]
    assert capsys.readouterr().out.count("unchanged, skipped") == 3


@pytest.mark.parametrize("where", ["_measure", "_plot"])
def test_interrupt_inside_the_benchmark_is_one_line(shared: Shared, tmp_path: Path, capsys, monkeypatch, where: str):
    """Where the signal lands in a stage is up to timing; the subprocess test above cannot choose, this one does."""
    import pipeline.benchmark

    out = shutil.copytree(shared.build, tmp_path / "out", ignore=shutil.ignore_patterns(".lock"))
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        (out / name).unlink()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.benchmark, where, interrupted)
    before = files_under(out)
    status = importlib.import_module("build_engine").main([*FP32_BUILD, "--out", str(out)])
    assert_fails_cleanly(
        status, capsys.readouterr().err, Fails("interrupted", "run the same command again to continue", status=130)
    )
    assert list(Manifest(out).stages) == ["export", "build", "verify"]
    assert files_under(out) - {".lock"} == before  # the lock file stays; its lock does not


# ----------------------------------------------------------------------------- fuzzing the image decoder


FORMATS = {"PNG": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"), "JPEG": ("RGB", "L", "CMYK"), "TIFF": ("RGB", "CMYK", "I;16", "F"),
           "BMP": ("RGB", "P"), "GIF": ("P", "L"), "WEBP": ("RGB", "RGBA")}  # fmt: skip
ENCODINGS = [(fmt, mode) for fmt, modes in FORMATS.items() for mode in modes]
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Callable[[bytes, str], Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    return lambda data, suffix: _write(folder / f"image{suffix}", data)


def _decode_and_preprocess(path: Path, max_pixels: int = 1_000_000) -> None:
    """Decode and preprocess ``path`` as calibration does; only ``ImageError`` may escape."""
    from calibration.dataset import preprocess

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
    path = _png_declaring(fuzz_file(b"", ".png"), width, height)
    try:
        load_rgb(path, max_pixels=1_000_000)
    except ImageError as e:
        assert width * height <= 1_000_000 or "pixel limit" in str(e)
