from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import models
from deployment.triton_repo import TritonRepoError, read_config, validate_config, write_model_repository
from engines.openvino import available as openvino_available
from engines.sidecar import Sidecar
from engines.trt import TENSORRT_RTX
from pipeline.manifest import Manifest, OutputLock
from tests.conftest import DATA, ROOT, make_image_folder, missing
from tests.failures import FP32_BUILD, TINY, Fails, Shared, assert_fails_cleanly, files_under

TINY_ARGS = ["--model", "s2mlpv2_tiny_test", "--batch", "1,2,4", "--bench-seconds", "0.05"]


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


@pytest.mark.slow
def test_fp16_run_builds_a_real_plan_then_unchanged_rerun_skips_every_stage(tmp_path):
    if not TENSORRT_RTX.importable():
        missing(
            "needs TensorRT for RTX (`pip install tensorrt-rtx`), which --backend auto builds with on a CPU-only machine",
            "tensorrt-rtx",
        )
    out = tmp_path / "out"
    first = _run("--precision", "fp16", *TINY_ARGS, "--out", out)
    assert first.returncode == 0, first.stderr
    assert "RANDOM weights" in first.stderr and "gates: not judged (random weights)" in first.stdout
    # no GPU here: a TensorRT for RTX plan, built and not executed, checked through its ONNX graph
    assert "model.plan was built, not executed on this machine" in first.stdout
    assert "verify and benchmark run the graph it was built from, model-fp16.onnx, on ONNX Runtime" in first.stdout
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["flavour"] == "tensorrt-rtx" and sidecar["compute_capabilities"] == ["8.0", "8.6", "8.9", "12.0"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "tensorrt-rtx" and summary["plan_executed"] is False
    assert summary["verified_artifact"] == "model-fp16.onnx" and summary["plan"]["fused_shift_kernels"] > 0
    assert json.loads((out / "verify.json").read_text())["provenance"]["artifact"].endswith("model-fp16.onnx")
    for name in (
        "model.onnx",
        "model-fp16.onnx",
        "model.plan",
        "model.json",
        "model-build.json",
        "verify.json",
        "benchmark.json",
        "manifest.json",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    # no GPU runs the plan: the same graph also becomes an OpenVINO IR, a second CPU route
    ir = ["openvino"] if openvino_available() else []
    assert list(manifest) == ["export", "precision", "build", *ir, "verify", "sample", "benchmark"]
    for record in manifest.values():
        assert {"inputs", "settings", "code", "tools", "outputs", "seconds"} <= set(record)
    second = _run("--precision", "fp16", *TINY_ARGS, "--out", out)
    assert second.returncode == 0 and second.stdout.count("unchanged, skipped") == len(manifest)
    forced = _run("--precision", "fp16", *TINY_ARGS, "--out", out, "--force")
    assert forced.returncode == 0 and "unchanged, skipped" not in forced.stdout


def _summary_block(stdout: str, title: str) -> str:
    return stdout.split(f"== {title}", 1)[1].split("\n== ", 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_first_run_builds_the_shipped_model_and_judges_it_on_bundled_images(precision, tmp_path):
    out = tmp_path / "out"
    proc = _run("--precision", precision, "--bench-seconds", "0.1", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RANDOM" not in proc.stderr
    # top-down: what was built, whether it is right, how fast
    assert (
        proc.stdout.index("== built: s2mlpv2_cifar10")
        < proc.stdout.index("== right: gates: PASS, on 500 images")
        < proc.stdout.index("== fast:")
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gates_enforced"] and summary["verify_passed"] and summary["verified_on"]["images"] == 500
    assert summary["verified_on"]["data"].endswith("cifar10-verify")
    verify = json.loads((out / "verify.json").read_text())
    assert verify["reference"]["top1"] > 0.7  # a trained model on images it never saw
    if precision == "int8":
        assert verify["reference"]["top1"] - verify["deployed"]["top1"] <= 0.005 and verify["top1_agreement"] >= 0.99
        calib = json.loads((out / "manifest.json").read_text())["stages"]["precision"]
        assert calib["inputs"]["calibration images"] is not None
        from engines.openvino import cpu_facts, hint_candidates, read_ir_sidecar

        sidecar, candidates = read_ir_sidecar(out / "model.xml"), hint_candidates("int8", cpu_facts()[1])
        if len(candidates) > 1:  # the IR's float parts were measured on the held-out images, and the choice kept
            assert f"[openvino ] float parts: measuring {' and '.join(candidates)} on 64 held-out" in proc.stdout
            assert sidecar.hint_choice["chosen"] == sidecar.requested_hint == sidecar.inference_precision_hint
            assert [m["hint"] for m in sidecar.hint_choice["measured"]] == list(candidates)
        else:
            assert sidecar.hint_choice is None and "float parts" not in proc.stdout
    fast = _summary_block(proc.stdout, "fast")
    assert "onnxruntime fp32 (model.onnx)" in fast and "the fp32 graph" in fast
    if precision == "fp16":
        assert "computes fp16 by casting to fp32: no speed-up is possible here" in fast
    again = _run("--precision", precision, "--bench-seconds", "0.1", "--out", out)
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert again.returncode == 0 and again.stdout.count("unchanged, skipped") == len(stages)


def test_bundled_sets_are_real_labeled_and_disjoint():
    import hashlib

    from calibration.bundled import CALIBRATE, VERIFY
    from calibration.sources import discover

    verify, calibrate = discover(VERIFY), discover(CALIBRATE)
    assert len(verify) >= 500 and len(calibrate) >= 256
    names = set(models.read_card(models.SHIPPED_CHECKPOINT).class_names)
    assert {s.label for s in verify} == names == {s.label for s in calibrate}

    def digests(samples):
        return {hashlib.sha256(s.path.read_bytes()).hexdigest() for s in samples}

    assert not digests(verify) & digests(calibrate)
    assert sum(s.path.stat().st_size for s in verify + calibrate) < 2_000_000  # small on disk


@pytest.mark.slow
def test_onnxruntime_backend_builds_an_optimized_graph(tmp_path):
    proc = _run("--precision", "fp32", *TINY_ARGS, "--backend", "onnxruntime", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "model.ort.onnx").is_file() and not (tmp_path / "o" / "model.plan").exists()
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["backend"] == "onnxruntime"


def test_forcing_tensorrt_11_where_it_is_missing_is_one_line(tmp_path):
    from engines.trt import TENSORRT

    if TENSORRT.importable():
        pytest.skip("TensorRT 11 is installed here; this case is a machine without it")
    proc = _run("--precision", "fp32", *TINY_ARGS, "--backend", "tensorrt", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --backend tensorrt: TensorRT 11 is not installed")
    assert not (tmp_path / "o").exists()


def test_triton_configs_fit_tritons_own_schema_and_rtx_plans_are_refused(tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (the [dev] extra) for Triton's ModelConfig")
    from deployment.triton_repo import config_text

    text = config_text("m", "onnxruntime_onnx", 8, [4, 8], (3, 32, 32), 10)
    validate_config(text)
    with pytest.raises(TritonRepoError, match="ModelConfig schema.*max_batchsize"):
        validate_config(text.replace("max_batch_size", "max_batchsize"))
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")

    Sidecar("tensorrt-rtx", "1.7.1", None, ("8.6",), "a" * 64, None, (1, 4, 8), (3, 32, 32), "fp16").write(plan)
    with pytest.raises(
        TritonRepoError, match="TensorRT for RTX 1.7.1 plan, and Triton's TensorRT backend runs TensorRT plans only"
    ):
        write_model_repository(tmp_path / "repo", "m", plan, (1, 4, 8), (3, 32, 32), 10)
    assert not (tmp_path / "repo").exists()


def test_triton_repository_refuses_a_plugin_form_graph(graphs, tmp_path):
    with pytest.raises(TritonRepoError, match="SpatialShift plugin nodes"):
        write_model_repository(tmp_path / "repo", "m", graphs.get("tiny", "plugin"), (1, 4, 8), (3, 32, 32), 5)
    assert not (tmp_path / "repo").exists()


def test_int8_without_calibration_data_says_what_is_needed(tmp_path):
    proc = _run("--precision", "int8", *TINY_ARGS, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--calib-data" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_int8_with_calibration_folder_and_triton_repository(tmp_path):
    calib = make_image_folder(tmp_path / "calib", classes=3, per_class=12)
    out, repo = tmp_path / "out", tmp_path / "repo"
    proc = _run(
        "--precision",
        "int8",
        *TINY_ARGS,
        "--calib-data",
        calib,
        "--calib-size",
        "24",
        "--calib-holdout",
        "20",
        "--out",
        out,
        "--triton-repo",
        repo,
    )
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


@pytest.mark.slow
def test_trained_checkpoint_passes_fp16_gates_on_labeled_eval_folder(tmp_path):
    proc = _run(
        "--precision",
        "fp16",
        "--checkpoint",
        "models/weights/s2mlpv2_cifar10.safetensors",
        "--batch",
        "1,8,16",
        "--eval-data",
        DATA / "cifar10-val",
        "--out",
        tmp_path / "o",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "o" / "verify.json").read_text())
    assert report["passed"] and report["deployed"]["top1"] is not None and report["n_images"] == 200


def test_second_run_on_a_locked_output_directory(tmp_path: Path, capsys):
    out = tmp_path / "out"
    with OutputLock(out):
        before = files_under(out)
        status = importlib.import_module("build_engine").main([*FP32_BUILD, "--out", str(out)])
    assert_fails_cleanly(
        status,
        capsys.readouterr().err,
        Fails(r"is being written by another build \(pid \d+\)", "wait for it to finish or pass another --out"),
    )
    assert files_under(out) == before == {".lock"}


def _int8_on(images: Path, out: Path) -> list[str]:
    """build_engine's arguments for the tiny model in int8 on ONNX Runtime, calibrated on ``images``, into ``out``."""
    command = ["--precision", "int8", "--model", TINY, "--batch", "1,2,4", "--backend", "onnxruntime"]
    return [*command, "--calib-data", str(images), "--out", str(out)]


def test_eval_set_overlapping_calibration_is_refused_before_any_stage(shared: Shared, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = [*_int8_on(shared.images, out), "--calib-size", "4", "--calib-holdout", "0", "--eval-data", str(shared.images)]
    status = importlib.import_module("build_engine").main(argv)
    assert_fails_cleanly(
        status,
        capsys.readouterr().err,
        Fails("4 evaluation images are also calibration images", "evaluate on images the calibration never saw"),
    )
    assert Manifest(out).stages == {}
    # only the lock and the (complete, reusable) calibration cache: no stage ran
    assert {p for p in files_under(out) if not p.startswith("calibration/calib-")} == {".lock"}


def test_too_few_calibration_images_name_the_option_before_any_stage(shared: Shared, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = [*_int8_on(shared.images, out), "--calib-size", "16"]
    status = importlib.import_module("build_engine").main(argv)
    assert_fails_cleanly(
        status, capsys.readouterr().err, Fails("has 8 images, fewer than the 16 to calibrate on", "pass --calib-size 8 or less")
    )
    assert Manifest(out).stages == {} and files_under(out) == {".lock"}


@pytest.mark.slow
def test_interrupt_mid_stage_is_not_marked_done_and_rerun_completes(shared: Shared, tmp_path: Path, capsys):
    out = shutil.copytree(shared.build, tmp_path / "out", ignore=shutil.ignore_patterns(".lock"))
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        (out / name).unlink()  # every earlier stage is done, the benchmark (a few seconds) runs again
    argv = [*FP32_BUILD, "--out", str(out)]
    slow_benchmark = [*argv, "--bench-seconds", "30"]  # long enough that the interrupt lands inside the stage
    proc = subprocess.Popen(
        [sys.executable, "build_engine.py", *slow_benchmark], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while "benchmark" in Manifest(out).stages:  # a stage's record leaves the manifest when the stage starts
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    before = files_under(out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert_fails_cleanly(proc.returncode, stderr, Fails("interrupted", "run the same command again to continue", status=130))
    assert list(Manifest(out).stages) == ["export", "build", "verify", "sample"]
    assert files_under(out) == before and not any(name.startswith("benchmark") for name in before)
    assert importlib.import_module("build_engine").main(argv) == 0
    assert list(Manifest(out).stages) == ["export", "build", "verify", "sample", "benchmark"]
    assert capsys.readouterr().out.count("unchanged, skipped") == 4
