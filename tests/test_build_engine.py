import json
import subprocess
import sys

import pytest

import models
from pipeline.manifest import LockedError, Manifest, OutputLock
from pipeline.triton_repo import read_config
from tests.conftest import DATA, ROOT, make_image_folder

TINY = ["--model", "s2mlpv2_tiny_test", "--batch", "1,2,4"]


def _run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "build_engine.py", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_help_shows_groups_and_defaults():
    proc = _run("--help")
    assert proc.returncode == 0
    for text in (
        "model:",
        "calibration:",
        "evaluation:",
        "shapes:",
        "backend:",
        "output:",
        "(default: fp16)",
        "(default: 1,8,32)",
    ):
        assert text in proc.stdout


def test_fp16_run_then_unchanged_rerun_skips_every_stage(tmp_path):
    out = tmp_path / "out"
    first = _run("--precision", "fp16", *TINY, "--out", out)
    assert first.returncode == 0, first.stderr
    assert "building for ONNX Runtime" in first.stdout and "RANDOM weights" in first.stderr
    for name in (
        "model.onnx",
        "model-fp16.onnx",
        "model.ort.onnx",
        "verify.json",
        "benchmark.json",
        "manifest.json",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    assert list(manifest) == ["export", "precision", "build", "verify", "benchmark"]
    for record in manifest.values():
        assert {"inputs", "settings", "outputs", "seconds", "tool_versions"} <= set(record)
    second = _run("--precision", "fp16", *TINY, "--out", out)
    assert second.returncode == 0 and second.stdout.count("unchanged, skipped") == 5
    forced = _run("--precision", "fp16", *TINY, "--out", out, "--force")
    assert forced.returncode == 0 and "unchanged, skipped" not in forced.stdout


def test_int8_without_calibration_data_says_what_is_needed(tmp_path):
    proc = _run("--precision", "int8", *TINY, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--calib-data" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_int8_with_calibration_folder_and_triton_repository(tmp_path):
    calib = make_image_folder(tmp_path / "calib", classes=3, per_class=12)
    out, repo = tmp_path / "out", tmp_path / "repo"
    proc = _run("--precision", "int8", *TINY, "--calib-data", calib, "--calib-size", "24", "--calib-holdout", "20",
                "--out", out, "--triton-repo", repo)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "held-out slice" in proc.stdout
    assert "36 images: 24 calibrate, 12 are held out (asked for 20)" in proc.stdout
    config = read_config((repo / "s2mlpv2_tiny_test_int8" / "config.pbtxt").read_text())
    model = models.create_model("s2mlpv2_tiny_test")
    assert config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 4
    assert config["input"][0]["name"] == "input" and config["input"][0]["dims"] == list(model.config.preprocessing.input_size)
    assert config["output"][0]["name"] == "logits" and config["output"][0]["dims"] == [model.config.num_classes]
    assert config["input"][0]["data_type"] == "TYPE_FP32" and "dynamic_batching" in config
    assert (repo / "s2mlpv2_tiny_test_int8" / "1" / "model.onnx").is_file()


def test_trained_checkpoint_passes_fp16_gates_on_labeled_eval_folder(tmp_path):
    proc = _run("--precision", "fp16", "--checkpoint", "models/weights/s2mlpv2_cifar10.safetensors", "--batch", "1,8,16",
                "--eval-data", DATA / "cifar10-val", "--out", tmp_path / "o")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "o" / "verify.json").read_text())
    assert report["passed"] and report["deployed"]["top1"] is not None and report["n_images"] == 200


def test_eval_set_overlapping_calibration_is_refused(tmp_path):
    proc = _run("--precision", "int8", *TINY, "--calib-data", DATA / "cifar10-val", "--calib-size", "40", "--calib-holdout", "0",
                "--eval-data", DATA / "cifar10-val", "--out", tmp_path / "o")  # fmt: skip
    assert proc.returncode == 2 and "also calibration images" in proc.stderr and "Traceback" not in proc.stderr


def test_second_run_into_a_locked_directory_fails_clearly(tmp_path):
    out = tmp_path / "o"
    with OutputLock(out):
        proc = _run("--precision", "fp32", *TINY, "--out", out)
        with pytest.raises(LockedError):
            OutputLock(out).__enter__()
    assert proc.returncode == 2 and "being written by another build" in proc.stderr


def test_interrupted_stage_is_not_marked_done_and_rerun_completes(tmp_path, monkeypatch):
    import pipeline.precision as precision
    from pipeline.orchestrate import BuildOptions, run_pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    opts = BuildOptions(precision="fp16", model="s2mlpv2_tiny_test", batch=(1, 2, 4), backend="onnxruntime", out=tmp_path / "o")
    monkeypatch.setattr(precision, "convert_precision", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(opts)
    assert list(Manifest(tmp_path / "o").stages) == ["export"]
    assert not (tmp_path / "o" / "model-fp16.onnx").exists()
    monkeypatch.undo()
    summary = run_pipeline(opts)
    assert list(Manifest(tmp_path / "o").stages) == ["export", "precision", "build", "verify", "benchmark"]
    assert summary["verify_passed"] in (True, False) and (tmp_path / "o" / "model-fp16.onnx").is_file()
