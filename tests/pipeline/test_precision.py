from __future__ import annotations

import collections
import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines.ort import OnnxRuntimeRunner
from pipeline.precision import (
    PrecisionError,
    convert_precision,
    qdq_summary,
    quantize_int8,
    sensitive_nodes,
    small_gemms,
)
from tests.conftest import DATA
from tests.failures import Case, Fails, Shared, assert_fails_cleanly, foreign_onnx, run_case, write_bytes


@pytest.fixture(scope="module")
def tiny(graphs):
    """(model, standard graph, plugin graph, 64 preprocessed images): the session's tiny exports (``graphs``)."""
    return graphs.model("tiny"), graphs.get("tiny"), graphs.get("tiny", "plugin"), graphs.images("tiny", 64)


@pytest.fixture(scope="module")
def int8(tiny, tmp_path_factory):
    """The tiny standard graph in int8, converted once for the tests that read it (ModelOpt is slow)."""
    _, std, _, images = tiny
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    return out, convert_precision(std, out, "int8", images[:32])


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp16_graph_keeps_float32_io_and_tracks_fp32(tiny, tmp_path):
    model, std, _, images = tiny
    out = tmp_path / "fp16.onnx"
    report = convert_precision(std, out, "fp16", images[:32])
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    ref = OnnxRuntimeRunner(std)(images)
    got = OnnxRuntimeRunner(out)(images)
    assert _cosine(ref, got).min() > 0.999
    assert report.activation_max  # measured LayerNorm / reduction / softmax ranges are recorded
    assert any(k.startswith("LayerNormalization:") for k in report.activation_max)


def test_fp16_keeps_nodes_over_data_max_in_fp32(tiny, tmp_path):
    _, std, _, images = tiny
    report = convert_precision(std, tmp_path / "fp16.onnx", "fp16", images[:16], fp16_data_max=1e-3)
    assert report.kept_fp32  # with a tiny threshold, measured activations force nodes to stay fp32
    strict = convert_precision(std, tmp_path / "fp16b.onnx", "fp16", images[:16])
    assert len(report.kept_fp32) > len(strict.kept_fp32)


def test_int8_graph_has_symmetric_qdq_and_reports_nodes(tiny, int8):
    _, std, _, images = tiny
    out, report = int8
    graph = onnx.load(str(out)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
    zero_points = [t for t in graph.initializer if "zero_point" in t.name]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)
    assert report.quantized
    assert set(report.quantized).isdisjoint(report.not_quantized)
    ref = OnnxRuntimeRunner(std)(images)
    got = OnnxRuntimeRunner(out)(images)
    assert _cosine(ref, got).mean() > 0.95


def test_small_gemm_exclusions_match_whole_names_only(tmp_path):
    # ModelOpt treats exclusions as unanchored patterns: its own "node_linear_2" once kept node_linear_21 unquantized
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "w21"], ["h"], name="node_linear_21"),  # (B, 4, 4, 32): quantize
        helper.make_node("MatMul", ["h", "w3"], ["t"], name="node_linear_3"),  # N = 8 < 16: keep fp32
        helper.make_node("ReduceMean", ["t", "axes"], ["pooled"], name="pool", keepdims=0),
        helper.make_node("MatMul", ["pooled", "w4"], ["v"], name="node_linear_4"),  # (B, 32): one row per image
        helper.make_node("Gemm", ["v", "w2", "b2"], ["y"], name="node_linear_2", transB=1),  # one row per image
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [
            weight("w21", 32, 32),
            weight("w3", 32, 8),
            weight("w4", 8, 32),
            weight("w2", 5, 32),
            weight("b2", 5),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        ],
    )
    src = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), str(src))
    assert sorted(small_gemms(onnx.load(str(src)))) == ["node_linear_2", "node_linear_3", "node_linear_4"]
    out = tmp_path / "q.onnx"
    quantize_int8(src, out, rng.standard_normal((8, 4, 4, 32)).astype(np.float32), "max")
    quantized, plain = qdq_summary(onnx.load(str(out)))
    assert quantized == ["MatMul:node_linear_21"]
    assert sorted(plain) == ["Gemm:node_linear_2", "MatMul:node_linear_3", "MatMul:node_linear_4"]


def test_every_quantized_matmul_runs_as_one_integer_kernel_in_onnx_runtime(int8, tmp_path):
    # the mixer's two expansion GEMMs share their input; one shared Q/DQ pair left both as fp32 MatMuls in ORT
    from engines.ort import make_session

    (out, report), optimized = int8, tmp_path / "int8-ort.onnx"
    make_session(out, optimized_model_path=str(optimized), optimization="extended")
    nodes = onnx.load(str(optimized)).graph.node
    ops = collections.Counter(n.op_type for n in nodes)
    quantized_matmuls = sum(name.startswith("MatMul:") for name in report.quantized)
    assert quantized_matmuls == 5 * 2  # per block: the two expansion GEMMs, proj, fc1, fc2; tiny has 2 blocks
    assert ops["MatMulIntegerToFloat"] == quantized_matmuls
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    assert {n.op_type for n in nodes if dequantized & set(n.input)} <= {"Conv"}  # ORT has no float-output int8 Conv


def test_plugin_graph_is_quantized_through_its_standard_twin(tiny, int8, tmp_path):
    _, _, plug, images = tiny
    out = tmp_path / "plug-int8.onnx"
    convert_precision(plug, out, "int8", images[:32])
    graph = onnx.load(str(out)).graph
    assert sum(n.op_type == "SpatialShift" for n in graph.node) == 4
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
    std_out, _ = int8
    np.testing.assert_allclose(OnnxRuntimeRunner(out)(images), OnnxRuntimeRunner(std_out)(images), rtol=0, atol=1e-6)


def test_metadata_survives_and_records_precision(tiny, tmp_path):
    _, std, _, images = tiny
    out = tmp_path / "fp16.onnx"
    convert_precision(std, out, "fp16")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["s2mlpv2.precision"] == "fp16"
    assert json.loads(props["s2mlpv2.card"])["model"] == "s2mlpv2_tiny_test"


def test_int8_without_calibration_is_a_clear_error(tiny, tmp_path):
    _, std, _, _ = tiny
    with pytest.raises(PrecisionError, match="--calib-data"):
        convert_precision(std, tmp_path / "x.onnx", "int8")
    assert not (tmp_path / "x.onnx").exists()


def test_sensitive_nodes_names_the_node_that_causes_the_error_not_those_after_it(tiny, int8, tmp_path):
    # every node downstream of a badly rounded one sees its error too; only bypassing the culprit removes it
    _, std, _, images = tiny
    out, report = int8
    model = onnx.load(str(out))
    culprit = report.quantized[1].split(":", 1)[1]  # the first block's expansion, upstream of most GEMMs
    producer = {o: n for n in model.graph.node for o in n.output}
    q = producer[producer[next(n for n in model.graph.node if n.name == culprit).input[0]].input[0]]
    scale = next(t for t in model.graph.initializer if t.name == q.input[1])
    coarse = onnx.numpy_helper.to_array(scale) * np.float32(40)  # 40x coarser steps
    scale.CopyFrom(onnx.numpy_helper.from_array(coarse, scale.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    quantized, _ = qdq_summary(model)
    assert sensitive_nodes(onnx.load(str(std)), bad, images[:16], quantized, 1) == [culprit]


def test_convolutions_stay_fp32_by_default(int8):
    _, report = int8
    assert [n for n in report.not_quantized if n.startswith("Conv:")] == [
        "Conv:patch_embed.proj/node_conv2d",
        "Conv:network.1.proj/node_conv2d_1",
    ]
    assert not [n for n in report.quantized if n.startswith("Conv:")]


def test_quantize_conv_puts_qdq_on_convolutions(tiny, tmp_path):
    _, std, _, images = tiny
    report = convert_precision(std, tmp_path / "int8.onnx", "int8", images[:16], quantize_conv=True)
    assert [n for n in report.quantized if n.startswith("Conv:")] == [
        "Conv:patch_embed.proj/node_conv2d",
        "Conv:network.1.proj/node_conv2d_1",
    ]


def test_int8_equalizes_every_gelu_fed_gemm(tiny, int8):
    # each block's second MLP GEMM reads a Gelu; the split attention's GEMV does too, but it stays fp32
    out, report = int8
    graph = onnx.load(str(out)).graph
    producer = {o: n for n in graph.node for o in n.output}
    fc2 = [
        n.name
        for n in graph.node
        if n.op_type == "MatMul"
        and n.name in {q.split(":")[1] for q in report.quantized}
        and producer[producer[producer[n.input[0]].input[0]].input[0]].op_type == "Mul"
    ]
    assert len(report.equalized) == 2 and sorted(report.equalized) == sorted(fc2)


def test_no_equalize_gelu_leaves_the_graph_as_exported(tiny, tmp_path):
    _, std, _, images = tiny
    out = tmp_path / "int8.onnx"
    report = convert_precision(std, out, "int8", images[:16], equalize_gelu=False)
    assert report.equalized == [] and not [n for n in onnx.load(str(out)).graph.node if n.op_type == "Sub"]


def test_keep_fp32_keeps_the_named_gemm_unquantized(tiny, int8, tmp_path):
    _, std, _, images = tiny
    _, before = int8
    pinned = before.quantized[-1]
    report = convert_precision(std, tmp_path / "int8.onnx", "int8", images[:16], keep_fp32=[pinned])
    assert pinned in report.not_quantized and pinned not in report.quantized


def test_keep_fp32_takes_module_paths(tiny, tmp_path):
    _, std, _, images = tiny
    report = convert_precision(std, tmp_path / "int8.onnx", "int8", images[:16], keep_fp32=["network.2.0.mlp"])
    kept = [n for n in report.not_quantized if "network.2.0.mlp." in n]
    assert len(kept) == 2 and not [n for n in report.quantized if "network.2.0.mlp." in n]  # fc1 and fc2
    assert report.settings["keep_fp32"] == ["network.2.0.mlp"] and len(report.settings["keep_fp32_nodes"]) == 2


@pytest.mark.slow
def test_cli_int8_with_folder_and_report(tiny, tmp_path, run_cli):
    _, std, _, _ = tiny
    out = tmp_path / "int8.onnx"
    command = ["pipeline.precision", "--onnx", std, "--precision", "int8", "--calib-data", DATA / "cifar10-val"]
    command += ["--calib-size", "40", "--calib-holdout", "20", "--cache-dir", tmp_path / "cache", "--out", out]
    proc = run_cli(*command, "--report", tmp_path / "report.json", check=True)
    assert "Q/DQ on" in proc.stdout and "held-out check, as quantized: " in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    check = report["fallback_rounds"][0]
    assert report["quantized"] and check["step"] == "as quantized" and check["passed"] and report["repairs"] == []
    assert set(check["checks"]) == {"top1_agreement", "cosine_min", "kl_mean"}
    assert out.is_file()
    again = run_cli(*command, check=True)
    assert "(cached)" in again.stdout


def test_cli_int8_without_calib_data_fails_cleanly(tiny, tmp_path, capsys):
    _, std, _, _ = tiny
    argv = ["--onnx", str(std), "--precision", "int8", "--out", str(tmp_path / "x.onnx")]
    status = importlib.import_module("pipeline.precision").main(argv)
    assert_fails_cleanly(status, capsys.readouterr().err, Fails("int8 needs calibration images", "--calib-data"))


# ----------------------------------------------------------------------------- bad input, through the tools


CLEAN_FAILURES = [
    Case(
        "onnx-corrupt",
        "pipeline.precision",
        lambda tmp, s: [
            "--onnx",
            str(write_bytes(tmp / "c.onnx", np.random.default_rng(1).bytes(3000))),
            "--precision",
            "fp16",
            "--out",
            str(tmp / "out" / "m.onnx"),
        ],
        Fails("not a readable ONNX file", "re-run the export stage"),
    ),
    Case(
        "keep-fp32-unknown-node",
        "pipeline.precision",
        lambda tmp, s: [
            "--onnx",
            str(s.onnx),
            "--precision",
            "int8",
            "--calib-data",
            str(s.images),
            "--calib-size",
            "4",
            "--cache-dir",
            str(tmp / "cache"),
            "--keep-fp32",
            "node_nowhere",
            "--out",
            str(tmp / "out" / "m.onnx"),
        ],
        Fails("has no module or node 'node_nowhere'", "as the int8 report lists them"),
    ),
    Case(
        "onnx-of-another-project",
        "pipeline.precision",
        lambda tmp, s: ["--onnx", str(foreign_onnx(tmp / "f.onnx")), "--precision", "fp16", "--out", str(tmp / "out" / "m.onnx")],
        Fails("not written by this project's export stage", "export it with python -m pipeline.export"),
    ),
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)
