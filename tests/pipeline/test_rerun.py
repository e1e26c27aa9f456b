"""A rerun skips exactly the stages whose output cannot have changed, and says why each other stage runs again.

Each test builds the tiny model for ONNX Runtime (fp32, batch 1,2,4) with labeled evaluation images,
changes one thing the way a user or a maintainer would, and runs the same build again.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.orchestrate import BuildOptions, run_pipeline
from tests.conftest import ROOT, make_image_folder
from tests.failures import TINY

STAGES = ["export", "build", "verify", "sample", "benchmark"]  # fp32: no precision stage


def _command(checkpoint: Path, images: Path, out: Path) -> list[str]:
    """build_engine.py's arguments for the same build as ``_options``."""
    command = ["--precision", "fp32", "--model", TINY, "--checkpoint", str(checkpoint), "--batch", "1,2,4"]
    return [*command, "--backend", "onnxruntime", "--eval-data", str(images), "--out", str(out), "--bench-seconds", "0.05"]


def _options(tmp_path: Path, checkpoint: Path, images: Path) -> BuildOptions:
    return BuildOptions(
        precision="fp32",
        model=TINY,
        checkpoint=checkpoint,
        batch=(1, 2, 4),
        backend="onnxruntime",
        eval_data=images,
        out=tmp_path / "out",
        bench_seconds=0.05,
    )


@pytest.fixture
def built(tmp_path, shared):
    """(options, images folder) of a finished build; the first run is not part of what the tests look at."""
    images = make_image_folder(tmp_path / "images", classes=2, per_class=3)
    opts = _options(tmp_path, shared.checkpoint, images)
    run_pipeline(opts)
    return opts, images


def _rerun(opts: BuildOptions, capsys) -> dict[str, str]:
    """Run again; returns each stage's state: 'skipped', or the reason it reran."""
    capsys.readouterr()
    run_pipeline(opts)
    out = capsys.readouterr().out
    states = {}
    for stage in STAGES:
        reran = re.search(rf"^\[{stage}\s*\] reran: (.*)$", out, re.M)
        skipped = re.search(rf"^\[{stage}\s*\] unchanged, skipped", out, re.M)
        assert bool(reran) != bool(skipped) or (not reran and not skipped), out
        states[stage] = "skipped" if skipped else (reran.group(1) if reran else "ran")
    return states


def test_nothing_changed_skips_every_stage(built, capsys):
    opts, _ = built
    assert _rerun(opts, capsys) == dict.fromkeys(STAGES, "skipped")


def test_an_unchanged_rerun_never_imports_torch(built):
    # what keeps a rerun fast: the stage keys come from the card, hashes and sources, and no stage needs the model
    opts, images = built
    argv = ["build_engine.py", *_command(opts.checkpoint, images, opts.out)]
    code = (
        f"import runpy, sys; sys.argv = {argv!r}\n"
        "try:\n    runpy.run_path('build_engine.py', run_name='__main__')\n"
        "except SystemExit as e:\n    print('exit', e.code)\n"
        "print('torch imported:', 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "exit 0" in proc.stdout and "torch imported: False" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    for stage in STAGES:
        assert re.search(rf"^\[{stage}\s*\] unchanged, skipped", proc.stdout, re.M), proc.stdout


def test_a_changed_evaluation_image_reruns_verify_only(built, capsys):
    opts, images = built
    victim = sorted(images.rglob("*.png"))[0]
    Image.new("RGB", (32, 32), (1, 2, 3)).save(victim)  # same path, new content
    states = _rerun(opts, capsys)
    assert states["verify"] == "1 evaluation image changed"
    assert [states[s] for s in ("export", "build", "benchmark")] == ["skipped"] * 3


def test_a_changed_gate_reruns_verify_only(built, capsys, monkeypatch):
    from deployment import gates

    opts, _ = built
    fp32 = dict(gates.GATES["fp32"])
    fp32["labeled"] = (gates.Gate("top1_agreement", ">=", 0.98), *fp32["labeled"][1:])
    monkeypatch.setitem(gates.GATES, "fp32", fp32)
    states = _rerun(opts, capsys)
    assert states["verify"] == "gates.labeled[0].threshold 1.0 -> 0.98"
    assert [states[s] for s in ("export", "build", "benchmark")] == ["skipped"] * 3


def test_a_changed_tool_version_reruns_the_stages_that_use_it(built, capsys):
    from importlib import metadata

    opts, _ = built
    manifest = opts.out / "manifest.json"
    data = json.loads(manifest.read_text())
    data["stages"]["export"]["tools"]["onnxscript"] = "0.0.1"  # as if it had been made with an older onnxscript
    manifest.write_text(json.dumps(data))
    states = _rerun(opts, capsys)
    installed = metadata.version("onnxscript")
    assert states["export"] == f"onnxscript 0.0.1 -> {installed}"
    # export wrote the same graph again, so nothing after it has a changed input
    assert [states[s] for s in ("build", "verify", "benchmark")] == ["skipped"] * 3


@pytest.mark.slow
def test_a_changed_export_module_reruns_export_and_everything_after_it(tmp_path, shared):
    # a copy of the project whose pipeline/export.py a maintainer has edited
    project = tmp_path / "project"
    for name in ("common", "models", "calibration", "engines", "pipeline", "build_engine.py"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, project / name)
    images = make_image_folder(tmp_path / "images", classes=2, per_class=3)
    args = [sys.executable, "build_engine.py", *_command(shared.checkpoint, images, tmp_path / "out")]

    def run() -> str:
        proc = subprocess.run(args, cwd=project, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    run()
    export = project / "pipeline" / "export.py"
    export.write_text(export.read_text().replace("INPUT_NAME, OUTPUT_NAME", "# edited\nINPUT_NAME, OUTPUT_NAME", 1))
    out = run()
    for stage in STAGES:
        # export reran because its code changed; the stages after it because their code or their input (the graph) did
        assert re.search(rf"^\[{stage}\s*\] reran: .*pipeline/export\.py changed", out, re.M) or stage != "export", out
        assert not re.search(rf"^\[{stage}\s*\] unchanged, skipped", out, re.M), out
