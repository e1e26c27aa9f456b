import subprocess
import sys

from common.check_imports import circles, violations
from tests.conftest import ROOT


def test_the_code_keeps_to_the_layers():
    assert violations() == []
    proc = subprocess.run([sys.executable, "-m", "common.check_imports"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "imports follow the layers" in proc.stdout
    assert circles() == [] and "no two files import each other" in proc.stdout


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


def test_files_that_import_each_other_are_named_even_through_lazy_imports(tmp_path):
    for package in ("common", "models", "calibration", "engines", "pipeline"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "models" / "card.py").write_text("def f():\n    from .checkpoint import load\n")
    (tmp_path / "models" / "checkpoint.py").write_text("from models.card import f\n")
    (tmp_path / "pipeline" / "a.py").write_text("from . import b\n")
    (tmp_path / "pipeline" / "b.py").write_text("from pipeline import c\n")
    (tmp_path / "pipeline" / "c.py").write_text("import pipeline.a\n")
    (tmp_path / "engines" / "x.py").write_text("from .y import z\n")
    (tmp_path / "engines" / "y.py").write_text("import os\n")
    assert circles(tmp_path) == [
        "models.card -> models.checkpoint -> models.card: these files import each other",
        "pipeline.a -> pipeline.b -> pipeline.c -> pipeline.a: these files import each other",
    ]
