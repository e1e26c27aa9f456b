"""Bad input, faults and untrusted files: the checks every tool's failures must pass, and the bad inputs themselves.

A case that fails must fail cleanly: exit status 2 (130 for an interrupt), exactly one
``error: <problem>; <fix>`` line on stderr, no traceback, and nothing written to the output
directory. The cases live in the test files that mirror the package they exercise; each file
lists its own ``CLEAN_FAILURES`` and runs them through :func:`run_case`. The ``shared`` fixture
(``tests/conftest.py``) builds the inputs they share once per session.
"""

from __future__ import annotations

import builtins
import errno
import importlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

import models
from common.cli import report_error
from engines.sidecar import Sidecar

TINY = "s2mlpv2_tiny_test"
FP32_BUILD = ["--precision", "fp32", "--model", TINY, "--batch", "1,2,4", "--backend", "onnxruntime", "--bench-seconds", "0.05"]


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


@dataclass(frozen=True)
class Shared:
    checkpoint: Path  # the tiny model, seed 0, with its card
    onnx: Path  # exported from it
    build: Path  # a finished fp32 build_engine output directory
    images: Path  # 2 classes x 4 RGB images, 32 x 32


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated(path: Path, into: Path) -> Path:
    data = path.read_bytes()
    return write_bytes(into, data[: len(data) // 2])


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header claims ``width`` x ``height`` (CRC recomputed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return write_bytes(path, bytes(data))


def foreign_onnx(path: Path, classes: int = 3, size: int = 32) -> Path:
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


def edited_card(checkpoint: Path, tmp: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of ``checkpoint`` whose JSON card has been edited by hand."""
    copy = Path(shutil.copy(checkpoint, tmp / checkpoint.name))
    card = json.loads(checkpoint.with_suffix(".json").read_text())
    edit(card)
    copy.with_suffix(".json").write_text(json.dumps(card))
    return copy


class RunsCode:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass(frozen=True)
class Case:
    id: str
    tool: str  # module whose main(argv) runs
    argv: Callable[[Path, Shared], list[str]]  # writes the bad input under tmp; outputs go to tmp/out
    expected: Fails


def other_variant(tmp: Path, s: Shared) -> list[str]:
    # a CIFAR-10 state dict with the tiny model's card beside it
    torch.save(models.create_model("s2mlpv2_cifar10").state_dict(), tmp / "weights.pt")
    shutil.copy(s.checkpoint.with_suffix(".json"), tmp / "weights.json")
    return ["--data", str(s.images), "--checkpoint", str(tmp / "weights.pt"), "--size", "2", "--cache-dir", str(tmp / "out")]


def pickle_running_code(tmp: Path, s: Shared) -> list[str]:
    # the marker would land in the output directory, which must stay absent
    with open(tmp / "evil.pt", "wb") as f:
        pickle.dump({"head.weight": RunsCode(tmp / "out" / "pwned")}, f)
    return [*FP32_BUILD, "--checkpoint", str(tmp / "evil.pt"), "--out", str(tmp / "out")]


def only_corrupt(tmp: Path, s: Shared) -> list[str]:
    for path in sorted((s.images / "class_0").iterdir())[:3]:
        truncated(path, tmp / "data" / path.name)
    return calibration_on(tmp / "data", tmp)


def calibration_on(data: Path, tmp: Path, size: int = 2) -> list[str]:
    return ["--data", str(data), "--model", TINY, "--size", str(size), "--cache-dir", str(tmp / "out")]


def verify_on(artifact: Path, data: Path, tmp: Path) -> list[str]:
    return ["--model", TINY, "--artifact", str(artifact), "--data", str(data), "--out", str(tmp / "out" / "report.json")]


def trt11_sidecar(**overrides) -> Sidecar:
    base = dict(
        flavour="tensorrt",
        flavour_version="11.4.0",
        gpu_name="NVIDIA H100",
        compute_capabilities=("9.0",),
        onnx_sha256="a" * 64,
        plugin_sha256=None,
        batch_profile=(1, 8, 32),
        input_shape=(3, 32, 32),
        precision="fp32",
    )
    return Sidecar(**{**base, **overrides})


class FillsTheDisk:
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


def full_disk(monkeypatch, *modules) -> None:
    """Every file these modules open for writing fills the disk."""

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return FillsTheDisk(f) if any(m in mode for m in "wax") else f

    for module in modules:
        monkeypatch.setattr(module, "open", open_on_full_disk, raising=False)


def without_module(monkeypatch, module: str) -> None:
    """Imports of ``module`` (and its submodules) fail from now on, as on a machine where it is not installed."""
    real_import = builtins.__import__

    def fails(name, *args, **kwargs):
        if name == module or name.startswith(f"{module}."):
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fails)


def run_case(case: Case, shared: Shared, tmp_path: Path, capsys) -> None:
    """Run ``case.tool``'s ``main`` on the bad input: one clean error line, and nothing new in ``tmp_path/out``."""
    argv = case.argv(tmp_path, shared)
    before = files_under(tmp_path / "out")
    status = importlib.import_module(case.tool).main(argv)
    assert_fails_cleanly(status, capsys.readouterr().err, case.expected)
    assert files_under(tmp_path / "out") == before
