import json

import numpy as np
import pytest
import torch

import models
from pipeline.export import ExportSettings, export_onnx
from pipeline.precision import convert_precision
from pipeline.verify import GATES, compare_logits, verify
from tests.conftest import DATA


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """The shipped CIFAR-10 checkpoint, exported to fp32 ONNX once."""
    ckpt = models.load_checkpoint("models/weights/s2mlpv2_cifar10.safetensors")
    path = tmp_path_factory.mktemp("verify") / "cifar.onnx"
    export_onnx(ckpt, path, ExportSettings())
    return ckpt, path


def test_gates_live_in_one_table_for_each_precision():
    assert set(GATES) == {"fp32", "fp16", "int8"}
    assert GATES["int8"]["unlabeled"][0].metric == "cosine_min"


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
    assert result.gates["finite_outputs"]["passed"] is False


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
    assert result.gates["cosine_min"]["passed"] is False


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


def test_cli_exits_1_on_failed_gate_and_2_on_bad_input(cifar, tmp_path, run_cli):
    model, onnx_path = cifar
    ok = run_cli("pipeline.verify", "--checkpoint", "models/weights/s2mlpv2_cifar10.safetensors", "--artifact", onnx_path,
                 "--data", DATA / "cifar10-val", "--limit", "20", "--out", tmp_path / "r.json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout
    wrong = run_cli("pipeline.verify", "--model", "s2mlpv2_cifar10", "--artifact", onnx_path,
                    "--data", DATA / "cifar10-val", "--limit", "20", "--out", tmp_path / "w.json")  # fmt: skip
    assert wrong.returncode == 1 and "FAIL" in wrong.stdout and "RANDOM" in wrong.stderr
    missing = run_cli("pipeline.verify", "--model", "s2mlpv2_cifar10", "--artifact", tmp_path / "none.onnx",
                      "--data", DATA / "cifar10-val", "--out", tmp_path / "m.json")  # fmt: skip
    assert missing.returncode == 2 and "error: artifact not found" in missing.stderr and "Traceback" not in missing.stderr
