"""OpenVINO through the pipeline: verify runs an IR, the benchmark times IRs and peers, the build makes CPU routes."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engines.openvino import available, build_ir, ir_sidecar_path
from engines.trt import TENSORRT_RTX
from pipeline.benchmark import time_interleaved
from tests.conftest import DATA, ROOT, missing
from tests.failures import TINY, Case, Fails, Shared, assert_fails_cleanly, run_case, verify_on, without_module, write_bytes

TINY_ARGS = ["--model", TINY, "--batch", "1,2,4", "--bench-seconds", "0.05"]


@pytest.fixture
def openvino_installed():
    if not available():
        missing("needs OpenVINO: `pip install openvino` (a default dependency)", "openvino")


@pytest.fixture(scope="module")
def ir(shared: Shared, tmp_path_factory) -> Path:
    if not available():
        missing("needs OpenVINO: `pip install openvino` (a default dependency)", "openvino")
    """The shared tiny checkpoint's fp32 graph as an IR."""
    return build_ir(shared.onnx, tmp_path_factory.mktemp("ir") / "model.xml").xml


def _build(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "build_engine.py", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


# ----------------------------------------------------------------------------- verify


def _verify_ir(run_cli, ir: Path, shared: Shared, report: Path, check: bool = False):
    """``python -m pipeline.verify`` of the IR against the tiny checkpoint on the shared images."""
    command = ["--checkpoint", shared.checkpoint, "--artifact", ir, "--data", shared.images, "--out", report]
    return run_cli("pipeline.verify", *command, check=check)


def test_verify_cli_runs_an_ir_and_judges_it_by_its_precision(ir, shared: Shared, tmp_path, run_cli):
    proc = _verify_ir(run_cli, ir, shared, tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["backend"] == "openvino" and report["precision"] == "fp32" and report["passed"]
    assert report["provenance"]["artifact"].endswith("model.xml") and report["n_images"] == 8


CLEAN_FAILURES = [
    Case(
        "xml-without-sidecar",
        "pipeline.verify",
        lambda tmp, s: verify_on(write_bytes(tmp / "model.xml", b"<net/>"), s.images, tmp),
        Fails(r"cannot run .*model\.xml: .*model\.openvino\.json is missing", "rebuild the IR"),
    ),
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, openvino_installed, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)


def test_a_corrupt_xml_is_refused_in_one_line(ir, shared: Shared, tmp_path: Path, capsys):
    for path in (ir, ir.with_suffix(".bin"), ir_sidecar_path(ir)):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    xml = tmp_path / "model.xml"
    xml.write_bytes(xml.read_bytes()[:200])
    status = importlib.import_module("pipeline.verify").main(verify_on(xml, shared.images, tmp_path))
    assert_fails_cleanly(status, capsys.readouterr().err, Fails(r"model\.xml is not the file its sidecar", "rebuild the IR"))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- benchmark


def test_interleaved_timing_gives_every_function_its_calls_and_seconds():
    calls = {"a": 0, "b": 0}

    def count(name):
        calls[name] += 1
        time.sleep(0.001)  # a call that takes time, as a model's does: 50 ms is reached in tens of calls

    times = time_interleaved(
        {"a": lambda: count("a"), "b": lambda: count("b")}, warmup=1, iters=4, min_seconds=0.05, slice_seconds=0.01
    )
    assert set(times) == {"a", "b"} and all(len(t) >= 4 for t in times.values())
    assert all(t.sum() >= 50 for t in times.values())  # ms
    # a turn's first call is not counted when the turn has more than one
    assert calls["a"] > len(times["a"]) + 1


@pytest.mark.slow
def test_benchmark_times_irs_and_peers_and_names_our_fastest_passing_artifact(ir, shared: Shared, tmp_path, run_cli):
    report = tmp_path / "verify.json"
    _verify_ir(run_cli, ir, shared, report, check=True)
    out = tmp_path / "bench.json"
    run_cli(
        "pipeline.benchmark",
        "--checkpoint",
        shared.checkpoint,
        "--onnx",
        shared.onnx,
        "--openvino",
        ir,
        "--peers",
        "--verified",
        report,
        "--batches",
        "1",
        "2",
        "--iters",
        "2",
        "--min-seconds",
        "0",
        "--gemm-size",
        "64",
        "--threads",
        "1",
        "--profile",
        "--out",
        out,
        check=True,
    )
    result = json.loads(out.read_text())
    rows = {r["backend"] for r in result["rows"]}
    assert {"openvino fp32 (model.xml)", "onnxruntime fp32 (model.onnx)", "torch eager fp32"} <= rows
    peers = {r["backend"] for r in result["rows"] if r["peer"]}
    assert "peer: torch.onnx.export, onnxruntime fp32" in peers and "peer: torch.onnx.export, openvino fp32" in peers
    for r in result["rows"]:
        assert (r["speedup_vs_fastest_peer"] is None) == r["peer"]
        if not r["peer"]:
            fastest = min(p["p50_ms"] for p in result["rows"] if p["peer"] and p["batch"] == r["batch"])
            assert np.isclose(r["speedup_vs_fastest_peer"], fastest / r["p50_ms"])
    ir_rows = [r for r in result["rows"] if r["artifact"] == "model.xml"]
    assert all(r["gates"] == "pass" and r["runtime"] == "openvino" for r in ir_rows)
    # only the verified artifact may head the table: the ONNX graph's gates are not known here
    assert [h["ours"] for h in result["headline"]] == ["openvino fp32 (model.xml)"] * 2
    profiles = [(p["runtime"], p["batch"]) for p in result["profiles"]]
    assert ("openvino", 1) in profiles and ("onnxruntime", 2) in profiles
    text = out.with_suffix(".md").read_text()
    assert "## Against the fastest peer" in text and "OpenVINO PERF_COUNT" in text and "| op | kernel |" in text
    assert result["provenance"]["openvino_settings"]["INFERENCE_PRECISION_HINT"] == "f32"


# ----------------------------------------------------------------------------- the build


@pytest.mark.slow
def test_openvino_backend_builds_verifies_and_times_the_ir(openvino_installed, tmp_path):
    out = tmp_path / "o"
    proc = _build("--precision", "fp32", *TINY_ARGS, "--backend", "openvino", "--out", out)
    assert proc.returncode == 0, proc.stderr
    for name in ("model.xml", "model.bin", "model.openvino.json", "verify.json", "benchmark.json", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.plan").exists() and not (out / "model.json").exists()
    assert list(json.loads((out / "manifest.json").read_text())["stages"]) == [
        "export",
        "openvino",
        "verify",
        "sample",
        "benchmark",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "openvino" and summary["artifact"] == "model.xml"
    assert summary["cpu_route"]["backend"] == "openvino" and summary["cpu_route"]["artifact"] == "model.xml"
    assert json.loads((out / "verify.json").read_text())["backend"] == "openvino"
    assert "openvino fp32 (model.xml)" in {r["backend"] for r in json.loads((out / "benchmark.json").read_text())["rows"]}
    assert "INFERENCE_PRECISION_HINT f32" in proc.stdout
    again = _build("--precision", "fp32", *TINY_ARGS, "--backend", "openvino", "--out", out)
    assert again.returncode == 0 and again.stdout.count("unchanged, skipped") == 5


@pytest.mark.slow
def test_auto_without_a_gpu_verifies_and_times_both_cpu_routes_and_records_the_fastest(openvino_installed, tmp_path):
    from engines.trt import TENSORRT_RTX

    out = tmp_path / "o"
    proc = _build(
        "--precision",
        "fp32",
        "--checkpoint",
        "models/weights/s2mlpv2_cifar10.safetensors",
        "--batch",
        "1,8,8",
        "--eval-data",
        DATA / "cifar10-val",
        "--eval-limit",
        "64",
        "--bench-seconds",
        "0.1",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == ("tensorrt-rtx" if TENSORRT_RTX.importable() else "onnxruntime")
    routes = {r["backend"]: r for r in summary["cpu_routes"]}
    assert set(routes) == {"onnxruntime", "openvino"} and routes["openvino"]["artifact"] == "model.xml"
    assert all(r["passed"] and r["p50_ms"] > 0 for r in routes.values())
    fastest = min(routes.values(), key=lambda r: r["p50_ms"])
    assert (summary["cpu_route"]["backend"], summary["cpu_route"]["artifact"]) == (fastest["backend"], fastest["artifact"])
    assert json.loads((out / "verify-openvino.json").read_text())["backend"] == "openvino"
    rows = {r["backend"] for r in json.loads((out / "benchmark.json").read_text())["rows"]}
    assert "openvino fp32 (model.xml)" in rows
    assert "== cpu route:" in proc.stdout or len(routes) == 1


def test_forcing_openvino_where_it_is_missing_is_one_line(monkeypatch, capsys):
    from pipeline.orchestrate import PipelineError, choose_backend

    without_module(monkeypatch, "openvino")
    with pytest.raises(PipelineError) as e:
        choose_backend("openvino")
    assert str(e.value).startswith("--backend openvino: OpenVINO is not installed") and "pip install openvino" in str(e.value)
    backend, note = choose_backend("onnxruntime")
    assert backend.name == "onnxruntime" and not backend.openvino


def test_auto_without_openvino_keeps_one_cpu_route_and_says_why(monkeypatch):
    import engines.openvino
    from pipeline.orchestrate import choose_backend

    monkeypatch.setattr(engines.openvino, "available", lambda: False)
    backend, note = choose_backend("auto")
    assert not backend.openvino and "OpenVINO is not installed" in note


def _run_for(backend, tmp_path: Path, records: dict | None = None):
    from pipeline.orchestrate import BuildOptions, Run

    opts = BuildOptions(precision="int8", model=TINY, calib_data=tmp_path, backend=backend.name)
    return Run(opts, None, tmp_path, backend, None, {"weights": "random-init"}, records=records or {})


def test_an_ir_refused_as_a_second_route_drops_the_route_not_the_run(tmp_path, monkeypatch):
    import engines.openvino
    from engines.openvino import Int8FallbackError
    from pipeline.orchestrate import Backend, openvino_stage

    def refuse(*args, **kwargs):
        raise Int8FallbackError("2 quantized GEMMs would run in float; build --precision fp16 for OpenVINO")

    monkeypatch.setattr(engines.openvino, "build_ir", refuse)
    monkeypatch.setattr(engines.openvino, "source_precision", lambda precision, capabilities: precision)
    monkeypatch.setattr(engines.openvino, "hint_candidates", lambda precision, capabilities: ("f32",))  # no measuring
    second = _run_for(Backend(TENSORRT_RTX.name, openvino=True, flavour=TENSORRT_RTX), tmp_path)
    outputs, record = openvino_stage(second)
    assert outputs == [] and "would run in float" in record["refused"]
    second.records["openvino"] = record
    assert [(r.backend, r.artifact.name) for r in second.routes] == [("onnxruntime", "model-int8.onnx")]
    alone = _run_for(Backend("openvino", openvino=True), tmp_path)
    with pytest.raises(Int8FallbackError):
        openvino_stage(alone)


def test_routes_put_the_deployed_artifact_first_and_the_ir_second(tmp_path):
    from pipeline.orchestrate import Backend

    auto = _run_for(Backend(TENSORRT_RTX.name, openvino=True, flavour=TENSORRT_RTX), tmp_path)
    assert [(r.backend, r.artifact.name, r.report) for r in auto.routes] == [
        ("onnxruntime", "model-int8.onnx", "verify.json"),
        ("openvino", "model.xml", "verify-openvino.json"),
    ]
    assert auto.artifact.name == "model-int8.onnx"
    alone = _run_for(Backend("openvino", openvino=True), tmp_path)
    assert [(r.backend, r.artifact.name, r.report) for r in alone.routes] == [("openvino", "model.xml", "verify.json")]
    on_gpu = _run_for(Backend(TENSORRT_RTX.name, runs_plan=True, flavour=TENSORRT_RTX), tmp_path)
    assert [r.artifact.name for r in on_gpu.routes] == ["model.plan"]
