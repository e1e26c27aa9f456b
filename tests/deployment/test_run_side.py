"""The run side needs no training stack: classify, check, serve and loadtest with torch, torchvision, timm and modelopt
made unimportable (a ``sitecustomize`` that refuses them, on ``PYTHONPATH`` of the command and of what it starts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.failures import Shared

BLOCKER = """
import sys

BLOCKED = {"torch", "torchvision", "timm", "modelopt"}


class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} may not be imported on the run side")
        return None


sys.meta_path.insert(0, _Refuse())
"""


@pytest.fixture
def without_training_stack(tmp_path) -> dict[str, str]:
    folder = tmp_path / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": str(folder)}


def test_the_blocker_blocks(run_cli, without_training_stack):
    proc = run_cli("pipeline.classify", "--help", env=without_training_stack)
    assert proc.returncode == 0
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", "import torch"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **without_training_stack},
    )
    assert probe.returncode == 1 and "may not be imported on the run side" in probe.stderr


def test_classify_and_check_run_without_torch_timm_or_modelopt(shared: Shared, package_matrix, run_cli, without_training_stack):
    env = without_training_stack
    image = sorted(shared.images.rglob("*.png"))[0]
    with_torch = run_cli("pipeline.classify", shared.build, image, "--json")
    without = run_cli("pipeline.classify", shared.build, image, "--json", env=env)
    assert without.returncode == 0, without.stderr
    assert json.loads(without.stdout) == json.loads(with_torch.stdout)  # the same preprocessing and answers
    for build in (shared.build, package_matrix.build("openvino", "fp16"), package_matrix.build("auto", "int8")):
        proc = run_cli("pipeline.check", build, "--seconds", "0", env=env)
        assert proc.returncode == 0 and proc.stdout.strip().endswith("PASS"), proc.stdout + proc.stderr


def test_the_plugin_form_custom_op_runs_without_torch(graphs, tmp_path, without_training_stack):
    import os
    import subprocess
    import sys

    import torch

    from models.layers import shift_reference
    from models.shift import shift_numpy

    x = torch.randn(2, 5, 7, 16)
    for pattern in (1, 2):
        np.testing.assert_array_equal(shift_numpy(x.numpy(), pattern), shift_reference(x, pattern).numpy())
    with pytest.raises(ValueError, match="divisible by 4"):
        shift_numpy(np.zeros((1, 2, 2, 6), np.float32), 1)

    model, graph, _ = graphs.export("tiny", "plugin")  # SpatialShift nodes: ONNX Runtime runs them through shift_numpy
    batch = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    script = (
        "import sys, numpy as np; from engines.ort import OnnxRuntimeRunner; "
        "np.save(sys.argv[2], OnnxRuntimeRunner(sys.argv[1])(np.load(sys.argv[3])))"
    )
    run = [sys.executable, "-c", script, str(graph), str(tmp_path / "out.npy"), str(tmp_path / "batch.npy")]
    proc = subprocess.run(run, capture_output=True, text=True, env={**os.environ, **without_training_stack}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-4, atol=1e-4)


def test_serve_and_loadtest_run_without_torch(shared: Shared, run_cli, without_training_stack, tmp_path):
    from tests.deployment.serving import require_pytriton

    require_pytriton()
    out = tmp_path / "load.md"
    proc = run_cli(
        "pipeline.loadtest", shared.build, "--concurrency", "1", "--requests", "10", "--seconds", "5", "--out", out,
        env=without_training_stack, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    levels = json.loads(out.with_suffix(".json").read_text())["levels"]
    assert levels and all(level["errors"] == 0 for level in levels)


def test_build_engine_on_a_run_side_install_names_the_build_extra(run_cli, without_training_stack, tmp_path, capsys):
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "out"
    command = [sys.executable, "build_engine.py", "--precision", "fp16", "--out", str(out)]
    env = {**__import__("os").environ, **without_training_stack}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip() == (
        "error: building needs torch, timm, modelopt, which this install lacks: pip install -e '.[build]' (the build extra)"
    )
