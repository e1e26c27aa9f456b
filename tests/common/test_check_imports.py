import subprocess
import sys

from common.check_imports import violations
from tests.conftest import ROOT


def test_the_code_keeps_to_the_layers():
    assert violations() == []
    proc = subprocess.run([sys.executable, "-m", "common.check_imports"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "imports follow the layers" in proc.stdout


def test_an_import_from_above_is_named(tmp_path):
    for package in ("common", "models", "calibration", "engines", "pipeline"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "models" / "data.py").write_text("import os\n\n\ndef f():\n    from calibration.images import load_rgb\n")
    (tmp_path / "engines" / "x.py").write_text("from . import y\nfrom pipeline import export\n")
    (tmp_path / "pipeline" / "ok.py").write_text("from engines import build\nfrom common.cli import report_error\n")
    assert violations(tmp_path) == [
        "models/data.py:5: models imports calibration, which sits above it",
        "engines/x.py:2: engines imports pipeline, which sits above it",
    ]
