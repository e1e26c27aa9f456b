"""The README's examples run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- readme-example: MARKER -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- readme-example: {marker} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert match, f"README.md has no example marked {marker!r}"
    return match.group(1)


def test_the_python_example_is_at_most_ten_lines():
    assert len(readme_block("python").splitlines()) <= 10


@pytest.mark.slow
def test_the_python_example_prints_the_top5_with_class_names(shipped_fp16_build: Path, tmp_path):
    # a checkout after the README's set-up: build/s2mlpv2_cifar10-fp16 and the bundled images, relative to the working directory
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "s2mlpv2_cifar10-fp16").symlink_to(shipped_fp16_build)
    (tmp_path / "calibration").symlink_to(ROOT / "calibration")
    proc = subprocess.run(
        [sys.executable, "-c", readme_block("python")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    route = json.loads((shipped_fp16_build / "summary.json").read_text())["cpu_route"]
    assert lines[0].startswith(f"{route['backend']} on CPU") and route["artifact"] in lines[0]
    classes = r"(airplane|automobile|bird|cat|deer|dog|frog|horse|ship|truck)"
    assert re.fullmatch(rf"\S+/cat/2695\.jpg cat \d+\.\d%(, {classes} \d+\.\d%){{4}}", lines[1]), lines[1]
    assert re.fullmatch(rf"\S+/ship/0015\.jpg ship \d+\.\d%(, {classes} \d+\.\d%){{4}}", lines[2]), lines[2]


def test_every_console_script_names_a_main_that_exists():
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"s2mlpv2-build", "s2mlpv2-classify", "s2mlpv2-check", "s2mlpv2-serve", "s2mlpv2-loadtest"} <= set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
