"""The deployment package: ``package.json`` (engines.package), every backend x precision opening, and ``deployment.check``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MATRIX_BACKENDS, MATRIX_PRECISIONS

VERIFY = Path(__file__).resolve().parents[2] / "calibration" / "data" / "cifar10-verify"


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _copy(build: Path, folder: Path) -> Path:
    return Path(shutil.copytree(build, folder, ignore=shutil.ignore_patterns(".lock")))


def _rewrite(build: Path, change) -> None:
    data = json.loads((build / "package.json").read_text())
    change(data)
    (build / "package.json").write_text(json.dumps(data))


# ---- the contract ----------------------------------------------------------------------------


def test_the_package_lists_every_route_with_its_files_hashes_verdict_and_latency(shared):
    from common.fileio import sha256_file
    from engines.package import SCHEMA, SCHEMA_VERSION, Package

    data = json.loads((shared.build / "package.json").read_text())
    assert data["schema"] == SCHEMA and data["version"] == SCHEMA_VERSION
    package = Package.read(shared.build)
    (route,) = package.routes
    assert (route.runtime, route.artifact, route.precision) == ("onnxruntime", "model.ort.onnx", "fp32")
    assert route.verdict["passed"] is True and route.verdict["report"] == "verify.json"
    assert route.latency["p50_ms"] > 0 and route.needs["runtime_version"]
    assert package.cpu_route == "model.ort.onnx" and package.graph == "model.onnx"
    assert package.batch_profile == (1, 2, 4) and package.input_shape == (3, 32, 32)
    assert package.model_card().config.name == "s2mlpv2_tiny_test"
    assert {"model.ort.onnx", "model.onnx", "check-sample.npz"} <= set(package.files)
    assert all(sha256_file(shared.build / name) == digest for name, digest in package.files.items())


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: d.update(version=2), "version 2, newer than the version 1 this project reads"),
        (lambda d: d.update(schema="other"), "is not an s2mlpv2-package file"),
        (lambda d: d.pop("routes"), "is incomplete or damaged"),
    ],
    ids=["newer", "foreign", "damaged"],
)
def test_a_newer_foreign_or_damaged_package_is_refused_in_one_line(shared, tmp_path, run_cli, change, expected):
    build = _copy(shared.build, tmp_path / "build")
    _rewrite(build, change)
    for module in ("pipeline.classify", "pipeline.check"):
        proc = run_cli(module, build, *([shared.images] if module == "pipeline.classify" else []))
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_directory_that_is_no_package_names_the_command_that_makes_one(tmp_path):
    from engines.package import Package, PackageError

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    with pytest.raises(PackageError, match="built before packages recorded package.json; run the same build_engine.py"):
        Package.read(tmp_path / "old")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="python build_engine.py --precision fp16 --out"):
        Package.read(tmp_path / "empty")


def test_the_check_sample_holds_encoded_images_or_without_images_tensors_and_loads_without_pickle(shared, package_matrix):
    from engines.package import read_sample

    build = package_matrix.build("onnxruntime", "fp32")  # built with --eval-data: the images themselves
    sample = read_sample(build / "check-sample.npz")
    assert len(sample) == len(sample.images) == len(sample.logits) == 32 and sample.tensors is None
    assert all(image[:2] == b"\xff\xd8" for image in sample.images)  # JPEG, as bundled
    assert len({name.split("/")[0] for name in sample.names}) >= 8  # spread over the classes (32 of 40 images)
    random_inputs = read_sample(shared.build / "check-sample.npz")  # no evaluation data: the random inputs verify used
    assert random_inputs.images == () and random_inputs.tensors.shape == (16, 3, 32, 32)
    with np.load(build / "check-sample.npz", allow_pickle=False) as z:  # plain numeric arrays only
        assert all(z[k].dtype != object for k in z.files)


# ---- every build opens everywhere -----------------------------------------------------------------

MATRIX = [(b, p) for b in MATRIX_BACKENDS for p in MATRIX_PRECISIONS]


@pytest.mark.parametrize("backend,precision", MATRIX, ids=[f"{b}-{p}" for b, p in MATRIX])
def test_every_build_opens_classifies_passes_its_check_and_writes_a_triton_model(
    package_matrix, backend, precision, capsys, tmp_path
):
    from deployment.check import check_package
    from deployment.classify import main as classify
    from deployment.deployed import DeployedModel
    from deployment.triton_repo import read_config, write_package_repository
    from engines.package import Package

    build = package_matrix.build(backend, precision)
    package = Package.read(build)
    model = DeployedModel.open(build)
    assert model.precision == precision == package.precision
    if backend == "openvino":
        assert model.runner.backend == "openvino"  # the IR alone: no plan's sidecar is needed to read its card
    assert np.isfinite(model.logits(np.zeros((2, *package.input_shape), np.float32))).all()
    capsys.readouterr()
    assert classify([str(build), str(VERIFY / "cat"), "--json", "--top-k", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(list((VERIFY / "cat").iterdir()))
    report = check_package(build, timing_seconds=0)  # what serve runs before it reports ready
    assert report.passed, "\n".join(report.lines)
    # no TensorRT 11 plan is built here: a build whose CPU route is its IR serves it on Triton's OpenVINO backend,
    # with the portable graph as the fallback; any other serves its portable graph; named and shaped by its package
    models = write_package_repository(tmp_path / "repo", build)
    name = f"s2mlpv2_tiny_test_{precision}"
    if package.cpu_route == "model.xml":
        assert [(f.name, served) for f, served in models] == [(name, "model.xml"), (f"{name}_onnxruntime", package.graph)]
        config = read_config((models[0][0] / "config.pbtxt").read_text())
        assert config["backend"] == "openvino" and (models[0][0] / "1" / "model.bin").is_file()
        params = {p["key"]: p["value"]["string_value"] for p in _as_list(config["parameters"])}
        assert params["PERFORMANCE_HINT"] == "LATENCY" and params["NUM_STREAMS"] == "1"
        from engines.openvino import read_ir_sidecar

        assert ("HINT_BF16" in params) == (read_ir_sidecar(build / "model.xml").inference_precision_hint == "bf16")
    else:
        assert [(f.name, served) for f, served in models] == [(name, package.graph)]
    folder, served = models[-1]
    assert (folder / "1" / "model.onnx").read_bytes() == (build / served).read_bytes()
    config = read_config((folder / "config.pbtxt").read_text())
    assert config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == package.batch_profile[2]


# ---- deployment.check ------------------------------------------------------------------------------


def test_check_passes_on_the_build_machine_and_times_the_route(shared, run_cli):
    proc = run_cli("pipeline.check", shared.build, "--seconds", "0.2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "PASS"
    assert any(line.startswith("files: ") and line.endswith("all match") for line in lines)
    assert "environment: the same runtime versions and CPU as the build" in lines
    assert any(line.startswith("sample: ") for line in lines) and any(line.startswith("timing: p50") for line in lines)


def test_check_refuses_a_changed_or_missing_file_by_name_with_exit_1(package_matrix, tmp_path, run_cli):
    build = _copy(package_matrix.build("openvino", "fp16"), tmp_path / "build")
    with open(build / "model.bin", "r+b") as f:  # one weight's bytes changed
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    (build / "check-sample.npz").unlink()
    proc = run_cli("pipeline.check", build, "--seconds", "0")
    assert proc.returncode == 1
    assert "model.bin: changed since the build" in proc.stdout and "check-sample.npz: missing" in proc.stdout
    assert proc.stdout.strip().endswith("nothing was run")


def test_check_reports_an_environment_difference_with_its_consequence(package_matrix, tmp_path):
    from deployment.check import check_package

    build = _copy(package_matrix.build("openvino", "fp16"), tmp_path / "build")

    def older_openvino(d):
        for r in d["routes"]:
            if r["runtime"] == "openvino":
                r["needs"].update(runtime_version="2024.6.0", cpu="Some Other CPU")
        d["built"]["cpu"] = "Some Other CPU"

    _rewrite(build, older_openvino)
    report = check_package(build, timing_seconds=0)
    assert report.passed  # reported, not judged: the sample decides
    text = "\n".join(report.environment)
    assert "openvino 2024.6.0 at build" in text and "the sample below says whether its answers still pass" in text
    assert "CPU: built on Some Other CPU" in text


def test_check_fails_when_the_route_s_answers_leave_the_gates(shared, tmp_path, run_cli):
    from engines.package import CheckSample, read_sample, write_sample

    build = _copy(shared.build, tmp_path / "build")
    sample = read_sample(build / "check-sample.npz")
    write_sample(
        build / "check-sample.npz", CheckSample(sample.names, -sample.logits, sample.images, sample.tensors)
    )  # a wrong reference
    from engines.package import Package, write_package

    write_package(Package.read(build))  # its hash refreshed, as a rebuild would: only the answers are wrong
    proc = run_cli("pipeline.check", build, "--seconds", "0")
    assert proc.returncode == 1 and proc.stdout.strip().endswith("outside the gates"), proc.stdout
