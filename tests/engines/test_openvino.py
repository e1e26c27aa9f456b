"""OpenVINO IRs: built from the project's graphs, checked before they run, run like every other flavour."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from common.onnx_meta import CARD_KEY, read_metadata
from engines.openvino import (
    Int8FallbackError,
    IRError,
    OpenVINORunner,
    OpenVINOUnavailable,
    available,
    build_ir,
    check_int8,
    choose_hint,
    cpu_facts,
    ir_sidecar_path,
    quantized_gemms,
    read_ir_sidecar,
    source_precision,
)
from engines.ort import OnnxRuntimeRunner
from tests.conftest import missing
from tests.failures import Fails, assert_api_error_is_one_clean_line, foreign_onnx, without_module


@pytest.fixture(autouse=True)
def _needs_openvino():
    if not available():
        missing("needs OpenVINO: `pip install openvino` (a default dependency)", "openvino")


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory, graphs) -> Path:
    """The tiny model's fp32 graph as an IR (f32 hint)."""
    if not available():
        missing("needs OpenVINO: `pip install openvino` (a default dependency)", "openvino")
    return build_ir(graphs.get("tiny"), tmp_path_factory.mktemp("ir") / "model.xml").xml


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


# ----------------------------------------------------------------------------- the hint rule


@pytest.mark.parametrize(
    "precision,capabilities,hint",
    [
        ("fp32", ("BF16", "FP16", "INT8"), "f32"),
        ("fp16", ("BF16", "FP16", "INT8"), "bf16"),
        ("fp16", ("FP32", "FP16", "INT8"), "f16"),
        ("int8", ("BF16", "FP32", "INT8"), "bf16"),
    ],
)
def test_hint_is_explicit_and_prefers_the_cpus_native_16_bit_float(precision, capabilities, hint):
    assert choose_hint(precision, capabilities) == (hint, None)


@pytest.mark.parametrize(
    "precision,capabilities,source",
    [
        ("fp16", ("BF16", "FP16", "INT8"), "fp32"),  # bf16: OpenVINO rounds the fp32 graph once
        ("fp16", ("FP32", "INT8"), "fp32"),  # f32: nothing to gain from fp16-rounded weights
        ("fp16", ("FP16", "INT8"), "fp16"),  # f16: the fp16 graph, with its fp32 islands
        ("int8", ("BF16", "INT8"), "int8"),
        ("fp32", ("BF16", "INT8"), "fp32"),
    ],
)
def test_an_fp16_ir_is_built_from_the_graph_its_hint_rounds_once(precision, capabilities, source):
    assert source_precision(precision, capabilities) == source


def test_a_cpu_without_16_bit_floats_computes_fp16_in_f32_and_says_so_in_one_line():
    hint, note = choose_hint("fp16", ("FP32", "INT8"))
    assert hint == "f32" and "neither BF16 nor FP16" in note and "\n" not in note


# ----------------------------------------------------------------------------- building


def test_ir_files_and_sidecar_describe_what_was_built(tiny_ir, graphs):
    from common.fileio import sha256_file

    sc = read_ir_sidecar(tiny_ir)
    assert ir_sidecar_path(tiny_ir).name == "model.openvino.json"  # never model.json, a plan's sidecar
    assert sc.precision == "fp32" and sc.inference_precision_hint == sc.requested_hint == "f32" and sc.computes == "fp32"
    assert (sc.source_graph, sc.source_precision) == (graphs.get("tiny").name, "fp32")
    assert sc.xml_sha256 == sha256_file(tiny_ir) and sc.bin_sha256 == sha256_file(tiny_ir.with_suffix(".bin"))
    assert sc.onnx_sha256 == sha256_file(graphs.get("tiny"))
    assert (sc.cpu, sc.optimization_capabilities) == cpu_facts()
    assert sc.openvino_version and sc.input_shape == (3, 32, 32)
    card = json.loads(read_metadata(onnx.load(str(graphs.get("tiny"))))[CARD_KEY])
    assert sc.card == card


def test_card_stays_in_the_irs_rt_info_for_cpp(tiny_ir):
    import openvino as ov

    model = ov.Core().read_model(str(tiny_ir))
    card = json.loads(model.get_rt_info(["framework", CARD_KEY]).astype(str))
    assert card["model"] == "s2mlpv2_tiny_test"


def test_weights_are_saved_uncompressed(tiny_ir, graphs):
    # OpenVINO's save_model rounds fp32 weights to fp16 unless told not to: the .bin would be about half the graph's weights
    weights = sum(np.prod(t.dims) * 4 for t in onnx.load(str(graphs.get("tiny"))).graph.initializer if t.data_type == 1)
    assert tiny_ir.with_suffix(".bin").stat().st_size >= 0.9 * weights


def test_fp16_build_records_the_hint_the_compiled_model_reports(graphs, tmp_path):
    result = build_ir(graphs.get("tiny", precision="fp16"), tmp_path / "model.xml")
    sc = result.sidecar
    expected, _ = choose_hint("fp16", cpu_facts()[1])
    assert sc.precision == "fp16" and sc.requested_hint == expected
    assert sc.inference_precision_hint in ("bf16", "f16", "f32") and sc.computes != "int8"
    assert OpenVINORunner(result.xml).precision == sc.computes


def test_every_quantized_gemm_runs_in_int8(graphs, tmp_path):
    graph = graphs.get("tiny", precision="int8")
    quantized = quantized_gemms(onnx.load(str(graph)))
    result = build_ir(graph, tmp_path / "model.xml")
    assert result.sidecar.precision == "int8" and result.sidecar.computes == "int8"
    assert result.sidecar.int8["passed"] and result.sidecar.int8["quantized_in_graph"] == len(quantized) > 0
    assert result.sidecar.int8["int8_at_runtime"] >= len(quantized) and result.sidecar.int8["not_int8"] == []
    assert "quantized GEMMs runs in int8" in result.line
    assert OpenVINORunner(result.xml).precision == "int8"


def test_the_int8_check_reads_the_runtime_model_and_names_float_gemms(graphs):
    import openvino as ov

    from engines.openvino import _compile

    # the fp32 graph's GEMMs all run in float: checked against the int8 graph's quantized GEMMs, each is named
    quantized = quantized_gemms(onnx.load(str(graphs.get("tiny", precision="int8"))))
    core = ov.Core()
    compiled = _compile(core, core.read_model(str(graphs.get("tiny"))), "f32", threads=1)
    check = check_int8(compiled, quantized)
    assert not check and check.int8_at_runtime == 0
    assert set(check.not_int8) <= set(quantized) and check.not_int8
    assert "in float:" in str(check)


def test_an_int8_build_whose_gemms_would_run_in_float_is_refused_in_one_line(graphs, tmp_path, monkeypatch, capsys):
    import engines.openvino

    # this CPU runs every quantized GEMM in int8; a check that finds one in float is what another CPU would give
    real = engines.openvino.check_int8

    def one_in_float(compiled, quantized):
        check = real(compiled, quantized)
        check.not_int8 = [quantized[0]]
        return check

    monkeypatch.setattr(engines.openvino, "check_int8", one_in_float)
    with pytest.raises(Int8FallbackError) as e:
        build_ir(graphs.get("tiny", precision="int8"), tmp_path / "model.xml")
    assert_api_error_is_one_clean_line(
        e.value, Fails("would run them in float under an int8 label", "build --precision fp16 for OpenVINO"), capsys
    )
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_foreign_graph_is_not_built(tmp_path, capsys):
    with pytest.raises(IRError) as e:
        build_ir(foreign_onnx(tmp_path / "f.onnx"), tmp_path / "model.xml")
    assert_api_error_is_one_clean_line(e.value, Fails("not written by this project's export stage", "export it first"), capsys)
    assert not (tmp_path / "model.xml").exists()


def test_a_plugin_form_graph_is_refused_with_the_export_to_use(graphs, tmp_path, capsys):
    with pytest.raises(IRError) as e:
        build_ir(graphs.get("tiny", "plugin"), tmp_path / "model.xml")
    assert_api_error_is_one_clean_line(e.value, Fails("SpatialShift plugin nodes", "--shift-impl onnx"), capsys)


# ----------------------------------------------------------------------------- running


def test_runner_matches_onnx_runtime_on_the_same_graph(tiny_ir, graphs):
    runner, reference = OpenVINORunner(tiny_ir, threads=1), OnnxRuntimeRunner(graphs.get("tiny"))
    x = _batch(3)
    got, expected = runner(x), reference(x)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_runner_has_the_interface_of_the_other_flavours(tiny_ir):
    runner = OpenVINORunner(tiny_ir)
    assert runner.backend == "openvino" and runner.path == tiny_ir and runner.input_shape == (3, 32, 32)
    assert (
        runner.device.startswith("CPU (")
        and runner.batch_range == (1, None)
        and runner.thread_safe
        and runner.precision == "fp32"
    )


def test_runner_is_safe_from_several_threads_at_once(tiny_ir):
    runner = OpenVINORunner(tiny_ir, threads=1)
    batches = [_batch(1 + i % 3, seed=i) for i in range(12)]
    expected = [runner(b) for b in batches]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = runner(batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


def test_batch_sizes_past_the_static_ones_share_the_dynamic_compile(tiny_ir):
    runner, reference = OpenVINORunner(tiny_ir, max_static_shapes=2), OpenVINORunner(tiny_ir)
    for n in (1, 2, 3, 5):
        np.testing.assert_allclose(runner(_batch(n)), reference(_batch(n)), rtol=1e-5, atol=1e-5)
    assert sorted(runner._compiled, key=str) == [1, 2, None]


def test_runner_refuses_a_wrong_input_in_one_line(tiny_ir, capsys):
    from engines.runtime import InputError

    with pytest.raises(InputError) as e:
        OpenVINORunner(tiny_ir)(np.zeros((1, 3, 64, 64), np.float32))
    assert_api_error_is_one_clean_line(e.value, Fails("the IR expects 32x32", "preprocess them"), capsys)


def test_profile_names_kernels_and_adds_up(tiny_ir):
    prof = OpenVINORunner(tiny_ir).profile(_batch(2), runs=2)
    assert abs(sum(o["ms"] for o in prof["ops"]) - prof["kernel_ms"]) < 1e-6
    assert any(o["gemm"] and o["op"].startswith("FullyConnected") for o in prof["ops"])
    assert all(o["kernel"] for o in prof["ops"]) and 0 < prof["gemm_ms"] < prof["kernel_ms"]


# ----------------------------------------------------------------------------- refusals, one line each


def _copy_ir(ir: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for path in (ir, ir.with_suffix(".bin"), ir_sidecar_path(ir)):
        (into / path.name).write_bytes(path.read_bytes())
    return into / ir.name


def test_an_ir_without_its_sidecar_is_refused(tiny_ir, tmp_path, capsys):
    xml = _copy_ir(tiny_ir, tmp_path)
    ir_sidecar_path(xml).unlink()
    with pytest.raises(IRError) as e:
        OpenVINORunner(xml)
    assert_api_error_is_one_clean_line(e.value, Fails(r"model\.openvino\.json is missing", "rebuild the IR"), capsys)


def test_a_changed_or_truncated_ir_is_refused_before_it_is_read(tiny_ir, tmp_path, capsys):
    xml = _copy_ir(tiny_ir, tmp_path)
    data = xml.with_suffix(".bin").read_bytes()
    xml.with_suffix(".bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(IRError) as e:
        OpenVINORunner(xml)
    assert_api_error_is_one_clean_line(e.value, Fails(r"model\.bin is not the file its sidecar", "rebuild the IR"), capsys)


def test_a_foreign_ir_with_a_copied_sidecar_is_refused(tiny_ir, tmp_path, capsys):
    import openvino as ov

    from common.fileio import sha256_file

    # someone else's IR, with our sidecar copied beside it and its hashes made to match: it still lacks the card
    ov.save_model(ov.Core().read_model(str(foreign_onnx(tmp_path / "f.onnx"))), str(tmp_path / "model.xml"))
    sidecar = json.loads(ir_sidecar_path(tiny_ir).read_text())
    sidecar.update(xml_sha256=sha256_file(tmp_path / "model.xml"), bin_sha256=sha256_file(tmp_path / "model.bin"))
    ir_sidecar_path(tmp_path / "model.xml").write_text(json.dumps(sidecar))
    with pytest.raises(IRError) as e:
        OpenVINORunner(tmp_path / "model.xml")
    assert_api_error_is_one_clean_line(e.value, Fails(r"carries no s2mlpv2\.card", "not an IR of this project"), capsys)


def test_a_sidecar_of_another_kind_is_refused(tiny_ir, tmp_path, capsys):
    xml = _copy_ir(tiny_ir, tmp_path)
    ir_sidecar_path(xml).write_text(json.dumps({"format": "s2mlpv2-plan/2"}))
    with pytest.raises(IRError) as e:
        OpenVINORunner(xml)
    assert_api_error_is_one_clean_line(e.value, Fails("not an OpenVINO IR sidecar of this project", "rebuild the IR"), capsys)


def test_openvino_missing_is_one_line(tiny_ir, monkeypatch, capsys):
    without_module(monkeypatch, "openvino")
    assert not available()
    with pytest.raises(OpenVINOUnavailable) as e:
        OpenVINORunner(tiny_ir)
    assert_api_error_is_one_clean_line(e.value, Fails("OpenVINO is not installed", "pip install openvino"), capsys)
