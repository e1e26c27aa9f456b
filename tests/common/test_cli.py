"""Command-line error reporting, through the tools: permissions, paths, full disks."""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
from pathlib import Path

import pytest

from tests.failures import (
    FP32_BUILD,
    Fails,
    Shared,
    assert_fails_cleanly,
    calibration_on,
    files_under,
    full_disk,
    verify_on,
    write_bytes,
)


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
    write_bytes(tmp_path / "out", b"a file, not a folder")
    status = importlib.import_module("build_engine").main([*FP32_BUILD, "--out", str(tmp_path / "out" / "build")])
    assert_fails_cleanly(status, capsys.readouterr().err, Fails("is a file, not a directory", "choose another output path"))
    assert (tmp_path / "out").read_bytes() == b"a file, not a folder"


@pytest.mark.parametrize(
    "tool,full",
    [
        ("calibration.__main__", ["calibration.dataset"]),
        ("calibration.__main__", ["common.fileio"]),
        ("pipeline.verify", ["common.fileio"]),
    ],
    ids=["calibration-array", "calibration-record", "verify-report"],
)
def test_disk_full_during_a_write_leaves_nothing(tool, full, shared: Shared, tmp_path: Path, monkeypatch, capsys):
    argv = (
        calibration_on(shared.images, tmp_path, 4)
        if tool.startswith("calibration")
        else verify_on(shared.onnx, shared.images, tmp_path)
    )
    full_disk(monkeypatch, *map(importlib.import_module, full))
    status = importlib.import_module(tool).main(argv)
    line = assert_fails_cleanly(
        status, capsys.readouterr().err, Fails(r"no space left writing .*out/\S+ on the disk mounted at /\S*", "free some space")
    )
    assert ".tmp" not in line  # the file being written, not its temporary name
    assert files_under(tmp_path / "out") == set()
