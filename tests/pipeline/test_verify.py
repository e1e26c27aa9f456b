from __future__ import annotations

import importlib
import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from deployment.gates import compare_logits
from pipeline.export import ExportSettings, export_onnx
from pipeline.precision import convert_precision
from pipeline.verify import verify
from tests.conftest import DATA
from tests.failures import (
    Case,
    Fails,
    Shared,
    assert_fails_cleanly,
    foreign_onnx,
    run_case,
    trt11_sidecar,
    truncated,
    verify_on,
    write_bytes,
)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """The shipped CIFAR-10 checkpoint, exported to fp32 ONNX once."""
    ckpt = models.load_checkpoint("models/weights/s2mlpv2_cifar10.safetensors")
    path = tmp_path_factory.mktemp("verify") / "cifar.onnx"
    export_onnx(ckpt, path, ExportSettings())
    return ckpt, path


def test_int8_gates_judge_the_top1_drop_and_the_agreement():
    labels = np.arange(1000) % 10
    reference = np.eye(10)[labels] * 5.0  # every image right
    deployed = reference.copy()
    deployed[:4] = np.roll(reference[:4], 1, axis=1)  # 4 flips: top-1 drop 0.004, agreement 0.996
    assert compare_logits(reference, deployed, labels, "int8")
    deployed[:6] = np.roll(reference[:6], 1, axis=1)  # 6 flips: drop 0.006 > 0.005
    result = compare_logits(reference, deployed, labels, "int8")
    assert not result and not result.gates["top1_drop"].passed and result.gates["top1_agreement"].passed


def test_the_precision_stage_gates_int8_with_the_same_table(monkeypatch):
    from deployment import gates
    from pipeline import precision

    logits = np.eye(10)[np.arange(100) % 10] * 8.0
    flipped = logits.copy()
    flipped[:2] = np.roll(logits[:2], 1, axis=1)  # agreement 0.98
    verdict = precision.holdout_check(logits, flipped, labeled=True)
    assert not verdict["passed"] and "top1_agreement" in verdict["failed"]
    assert verdict["checks"]["top1_agreement"] == {"value": 0.98, "op": ">=", "threshold": 0.99}
    looser = (gates.Gate("top1_drop", "<=", 0.005), gates.Gate("top1_agreement", ">=", 0.95))
    monkeypatch.setitem(gates.GATES["int8"], "labeled", looser)
    assert precision.holdout_check(logits, flipped, labeled=True)["checks"]["top1_agreement"]["threshold"] == 0.95


def test_the_held_out_check_judges_the_logits_not_only_top1():
    from pipeline.precision import HOLDOUT_KL, holdout_check

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 10)) * 3
    logits[np.arange(64), np.arange(64) % 10] += 20  # confident: the noise below flips none of them
    assert holdout_check(logits, logits + rng.normal(size=logits.shape) * 0.01, labeled=True)["passed"]
    blurred = logits + rng.normal(size=logits.shape) * 1.5  # no top-1 flips, but logits far off
    verdict = holdout_check(logits, blurred, labeled=True)
    assert verdict["checks"]["top1_agreement"]["value"] == 1.0
    assert not verdict["passed"] and set(verdict["failed"]) & {"cosine_min", "kl_mean"}
    assert verdict["checks"]["kl_mean"]["threshold"] == HOLDOUT_KL


def test_identical_logits_pass_fp32_gates():
    logits = np.random.default_rng(0).normal(size=(20, 10))
    result = compare_logits(logits, logits.copy(), np.arange(20) % 10, "fp32")
    assert result and result.metrics["top1_agreement"] == 1.0 and not result.flips
    assert result.metrics["kl_mean"] == pytest.approx(0.0, abs=1e-12)


def test_flips_are_listed_with_paths_and_class_names():
    ref = np.eye(3)[[0, 1, 2, 0]] * 5.0
    dep = ref.copy()
    dep[1] = [0, 0, 5]  # image 1 flips from class 1 to class 2
    result = compare_logits(
        ref, dep, np.array([0, 1, 2, 0]), "fp16", paths=["a", "b", "c", "d"], class_names=["cat", "dog", "fox"]
    )
    assert not result
    assert result.flips == [{"path": "b", "reference": "dog", "deployed": "fox", "cosine": pytest.approx(0.0, abs=1e-9)}]
    assert result.to_dict()["gates"]["top1_agreement"]["passed"] is False


def test_nonfinite_outputs_fail_every_gate():
    ref = np.ones((4, 3))
    dep = ref.copy()
    dep[2, 1] = np.nan
    result = compare_logits(ref, dep, None, "int8")
    assert not result and result.metrics["nonfinite_outputs"] == 1
    assert result.gates["finite_outputs"].passed is False


@pytest.mark.slow
def test_report_keys_other_scripts_read(cifar, tmp_path):
    model, onnx_path = cifar
    out = tmp_path / "report.json"
    result = verify(model, onnx_path, DATA / "cifar10-val", limit=40, out=out)
    report = json.loads(out.read_text())
    for key in (
        "precision",
        "backend",
        "n_images",
        "top1_agreement",
        "cosine_min",
        "cosine_mean",
        "max_abs_diff",
        "kl_mean",
        "gates",
        "passed",
    ):
        assert key in report
    assert report["reference"]["top1"] is not None and report["deployed"]["top1"] is not None
    assert report["precision"] == "fp32" and report["n_images"] == 40 and report["passed"] is True
    assert out.with_suffix(".md").read_text().startswith("# Parity report")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert bool(result)


@pytest.mark.slow
def test_planted_wrong_artifact_is_caught(cifar, tmp_path):
    """Export a copy of the model with perturbed weights: the gates must fail."""
    model, _ = cifar
    wrong = models.load_checkpoint("models/weights/s2mlpv2_cifar10.safetensors")
    with torch.no_grad():
        for name, p in wrong.named_parameters():
            if name.endswith("mlp.fc2.weight"):
                p.add_(torch.randn_like(p) * p.std() * 0.5)
    bad = tmp_path / "wrong.onnx"
    export_onnx(wrong, bad, ExportSettings())
    result = verify(model, bad, DATA / "cifar10-val", limit=60)
    assert not result
    assert result.gates["cosine_min"].passed is False


@pytest.mark.slow
def test_fp16_and_int8_of_trained_model_pass_on_labeled_sample(cifar, tmp_path):
    model, onnx_path = cifar
    from calibration.dataset import build_calibration_set

    calib = build_calibration_set(DATA / "cifar10-val", model.config.preprocessing, 60, seed=1, progress=False)
    fp16 = tmp_path / "fp16.onnx"
    convert_precision(onnx_path, fp16, "fp16", calib.calibration)
    assert verify(model, fp16, DATA / "cifar10-val")
    int8 = tmp_path / "int8.onnx"
    convert_precision(onnx_path, int8, "int8", calib.calibration)
    result = verify(model, int8, DATA / "cifar10-val")
    assert result.precision == "int8" and result.labeled
    assert result.metrics["top1_agreement"] >= 0.95  # a 200-image sample: the gate proper is measured on the full split


@pytest.mark.slow
def test_cli_exits_1_on_failed_gate_and_2_on_bad_input(cifar, tmp_path, run_cli):
    model, onnx_path = cifar
    ok = run_cli(
        "pipeline.verify",
        "--checkpoint",
        "models/weights/s2mlpv2_cifar10.safetensors",
        "--artifact",
        onnx_path,
        "--data",
        DATA / "cifar10-val",
        "--limit",
        "20",
        "--out",
        tmp_path / "r.json",
    )
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout
    wrong = run_cli(
        "pipeline.verify",
        "--model",
        "s2mlpv2_cifar10",
        "--artifact",
        onnx_path,
        "--data",
        DATA / "cifar10-val",
        "--limit",
        "20",
        "--out",
        tmp_path / "w.json",
    )
    assert wrong.returncode == 1 and "FAIL" in wrong.stdout and "RANDOM" in wrong.stderr
    missing = run_cli(
        "pipeline.verify",
        "--model",
        "s2mlpv2_cifar10",
        "--artifact",
        tmp_path / "none.onnx",
        "--data",
        DATA / "cifar10-val",
        "--out",
        tmp_path / "m.json",
    )
    assert missing.returncode == 2 and "error: artifact not found" in missing.stderr and "Traceback" not in missing.stderr


# ----------------------------------------------------------------------------- bad input, through the tools


CLEAN_FAILURES = [
    Case(
        "onnx-truncated",
        "pipeline.verify",
        lambda tmp, s: verify_on(truncated(s.onnx, tmp / "t.onnx"), s.images, tmp),
        Fails("cannot load .*t.onnx", "re-run the export stage"),
    ),
    Case(
        "onnx-of-another-model",
        "pipeline.verify",
        lambda tmp, s: verify_on(foreign_onnx(tmp / "f.onnx"), s.images, tmp),
        Fails(r"logits of shape \(8, 3\), the reference model \(8, 5\)", "verify the artifact against the checkpoint"),
    ),
    Case(
        "onnx-for-another-input-size",
        "pipeline.verify",
        lambda tmp, s: verify_on(foreign_onnx(tmp / "f.onnx", size=64), s.images, tmp),
        Fails("input images are 32x32, the graph expects 64x64", "preprocess them with the card of the model"),
    ),
    Case(
        "data-text-named-jpg",
        "pipeline.verify",
        lambda tmp, s: verify_on(s.onnx, write_bytes(tmp / "data" / "photo.jpg", b"not an image").parent, tmp),
        Fails(r"no usable images .*1 unreadable", "give a folder of readable images"),
    ),
    Case(
        "plan-without-sidecar",
        "pipeline.verify",
        lambda tmp, s: verify_on(write_bytes(tmp / "m.plan", b"plan"), s.images, tmp),
        Fails(r"m\.json is missing", "rebuild the plan"),
    ),
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)


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
    trt11_sidecar().write(write_bytes(tmp_path / "m.plan", b"plan"))
    status = importlib.import_module("pipeline.verify").main(verify_on(tmp_path / "m.plan", shared.images, tmp_path))
    assert_fails_cleanly(status, capsys.readouterr().err, expected)
    assert not (tmp_path / "out").exists()


def test_plan_on_a_machine_without_tensorrt(shared: Shared, tmp_path: Path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("the tensorrt package is installed here; this case is a machine without it")
    trt11_sidecar().write(write_bytes(tmp_path / "m.plan", b"plan"))
    status = importlib.import_module("pipeline.verify").main(verify_on(tmp_path / "m.plan", shared.images, tmp_path))
    assert_fails_cleanly(
        status,
        capsys.readouterr().err,
        Fails("cannot run .*m.plan: TensorRT 11 is not installed", r"pip install -e \.\[tensorrt\]"),
    )
    assert not (tmp_path / "out").exists()
