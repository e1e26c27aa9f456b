"""Module names on every node, ``pipeline.diagnose`` naming the block where a planted int8 outlier enters, and the int8
stage repairing it (or not, with repair off; and leaving a clean model alone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.failures import Shared

CALIBRATE = Path(__file__).resolve().parents[2] / "calibration" / "data" / "cifar10-calibrate"
PLANTED = "network.2.0"  # the tiny model's second block


@pytest.fixture(scope="module")
def planted(shared: Shared, tmp_path_factory):
    """(checkpoint, fp32 graph, int8 graph, int8 IR) of the tiny model with a planted outlier."""
    import torch

    import models
    from calibration.dataset import load_images
    from engines.openvino import build_ir
    from models.outlier import plant_outlier
    from pipeline.export import export_onnx
    from pipeline.precision import convert_precision

    root = tmp_path_factory.mktemp("planted")
    model = models.load_checkpoint(shared.checkpoint)
    clean = models.load_checkpoint(shared.checkpoint)
    plant_outlier(model, PLANTED)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), clean(x), atol=1e-4)  # the same fp32 function
    checkpoint = models.save_checkpoint(model, root / "planted.safetensors")
    export_onnx(model, root / "model.onnx")
    calibration = load_images(CALIBRATE, model.config.preprocessing, 64)[0]
    convert_precision(root / "model.onnx", root / "model-int8.onnx", "int8", calibration, equalize_gelu=False)
    build_ir(root / "model-int8.onnx", root / "model.xml", "int8")
    return checkpoint, root / "model.onnx", root / "model-int8.onnx", root / "model.xml"


def test_every_exported_node_carries_its_module_and_conversions_keep_it(planted):
    import onnx

    from common.module_names import module_map, module_of

    _, fp32, int8, _ = planted
    graph = onnx.load(str(fp32))
    named = [n for n in graph.graph.node if module_of(n.name)]
    assert len(named) >= 0.9 * len(graph.graph.node)
    assert any(module_of(n.name) == f"{PLANTED}.mlp.fc1" for n in graph.graph.node)
    quantized = onnx.load(str(int8))
    modules = module_map(quantized)
    q = [n for n in quantized.graph.node if n.op_type == "QuantizeLinear"]
    assert q and all(n.name in modules for n in q)  # Q/DQ nodes take the module of the GEMM they feed
    assert f"{PLANTED}.mlp.fc1" in {modules[n.name] for n in q}


def test_the_ir_names_its_operations_after_the_modules(planted):
    from common.module_names import module_of
    from engines.openvino import OpenVINORunner, operation_names

    names = operation_names(OpenVINORunner(planted[3]))
    assert f"{PLANTED}.mlp.fc1" in {module_of(n) for n in names}


def test_diagnose_names_the_planted_block_first_on_onnx_runtime_and_openvino(planted, run_cli, tmp_path):
    checkpoint, _, int8, ir = planted
    png = tmp_path / "d.png"
    proc = run_cli(
        "pipeline.diagnose", int8, ir, "--checkpoint", checkpoint, "--data", CALIBRATE, "--limit", "32", "--json", "--png", png
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [d["runtime"] for d in out] == ["onnxruntime", "openvino"]
    for d in out:
        assert d["culprits"][0] == PLANTED, d
        rows = {m["module"]: m for m in d["modules"]}
        assert list(rows)[:2] == ["patch_embed", "network.0.0"] and "head" in rows
        assert rows[PLANTED]["growth"] > 2 and rows[PLANTED]["cosine"] < rows["network.0.0"]["cosine"]
    assert png.stat().st_size > 1000 and "culprit 1" in proc.stderr


def test_a_clean_fp32_graph_has_no_error_to_name(shared: Shared, run_cli, tmp_path):
    proc = run_cli(
        "pipeline.diagnose",
        shared.onnx,
        "--checkpoint",
        shared.checkpoint,
        "--data",
        CALIBRATE,
        "--limit",
        "8",
        "--json",
        "--png",
        tmp_path / "d.png",
    )
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert max(m["rel_error"] for m in d["modules"]) < 1e-4 and np.isfinite([m["cosine"] for m in d["modules"]]).all()


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.onnx"], "does not exist"),
        (["{plan}"], "model.json is missing: a plan is loaded only with the sidecar written beside it"),
    ],
)
def test_what_diagnose_cannot_read_is_one_line_and_exit_2(shared: Shared, run_cli, tmp_path, args, message):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    argv = [a.format(plan=plan) for a in args]
    proc = run_cli("pipeline.diagnose", *argv, "--checkpoint", shared.checkpoint, "--data", CALIBRATE)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def rtx_plan(shared: Shared, tmp_path_factory) -> Path:
    """The tiny model's fp32 graph built into a TensorRT for RTX plan, with the graph beside it (as in a build)."""
    import shutil

    from engines.build import BuildSettings, build_plan
    from engines.trt import TENSORRT_RTX
    from tests.conftest import missing

    if not TENSORRT_RTX.importable():
        missing(
            "needs TensorRT for RTX: `pip install tensorrt-rtx` (a default dependency on Linux and Windows x86_64)",
            "tensorrt-rtx",
        )
    folder = tmp_path_factory.mktemp("rtx")
    graph = shutil.copy(shared.onnx, folder / "model.onnx")
    settings = BuildSettings((1, 2, 4), timing_cache=None, flavour=TENSORRT_RTX.name)
    return build_plan(graph, folder / "model.plan", settings).plan


def test_a_diagnostic_plan_marks_every_modules_output_with_the_plans_flavour_and_profile(rtx_plan, tmp_path):
    import models
    from engines.sidecar import read_sidecar
    from pipeline.diagnose import compared_modules, diagnostic_plan, plan_graph

    assert plan_graph(rtx_plan) == rtx_plan.parent / "model.onnx"  # found by the hash the sidecar records
    modules = compared_modules(models.create_model("s2mlpv2_tiny_test"))
    plan, tensors = diagnostic_plan(rtx_plan, modules, tmp_path)
    built = json.loads((tmp_path / "diagnose-build.json").read_text())
    assert set(modules) == set(tensors) and built["outputs"][0] == "logits"
    assert set(built["outputs"]) == {"logits", *tensors.values()} and len(set(tensors.values())) == len(modules)
    assert (read_sidecar(plan).flavour, read_sidecar(plan).batch_profile) == ("tensorrt-rtx", (1, 2, 4))


def test_a_plan_this_machine_cannot_run_is_refused_naming_the_graph_to_diagnose(rtx_plan, shared: Shared, run_cli):
    from engines.trt import cuda_device

    if cuda_device() is not None:
        pytest.skip("this machine has a GPU: the plan may run here (the refusal is for machines without one)")
    proc = run_cli("pipeline.diagnose", rtx_plan, "--checkpoint", shared.checkpoint, "--data", CALIBRATE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "diagnosing a TensorRT for RTX" in proc.stderr and "this machine has no CUDA GPU" in proc.stderr
    assert "diagnose the graph it was built from, model.onnx" in proc.stderr


def test_a_plan_whose_graph_is_not_beside_it_says_where_to_put_it(rtx_plan, tmp_path):
    import shutil

    from pipeline.diagnose import DiagnoseError, plan_graph

    alone = tmp_path / "model.plan"
    shutil.copy(rtx_plan, alone)
    shutil.copy(rtx_plan.with_suffix(".json"), tmp_path / "model.json")
    with pytest.raises(DiagnoseError, match="is not beside it; diagnosing a plan builds a copy from that graph"):
        plan_graph(alone)


def _calibration(model_config, count: int = 96):
    from calibration.dataset import load_images

    return load_images(CALIBRATE, model_config.preprocessing, count)[0]


def test_int8_repairs_the_planted_outlier_and_names_the_repair_by_module(planted, tmp_path):
    import models
    from pipeline.precision import convert_precision

    checkpoint, fp32, _, _ = planted
    x = _calibration(models.load_checkpoint(checkpoint).config)
    as_is = convert_precision(fp32, tmp_path / "a.onnx", "int8", x[:64], holdout=x[64:], holdout_labeled=True, repair=False)
    assert [c["passed"] for c in as_is.fallback_rounds] == [False] and as_is.repairs == []
    repaired = convert_precision(fp32, tmp_path / "b.onnx", "int8", x[:64], holdout=x[64:], holdout_labeled=True)
    assert [c["step"] for c in repaired.fallback_rounds] == ["as quantized", "LayerNorm outliers smoothed"]
    assert repaired.fallback_rounds[-1]["passed"]
    assert [(r["module"], r["repair"]) for r in repaired.repairs] == [(f"{PLANTED}.mlp.fc1", "input equalized")]
    assert f"{PLANTED}.mlp.fc1: input equalized" in str(repaired)
    # the graph, ONNX Runtime's optimized graph and the IR carry the same list
    import openvino as ov

    from common.onnx_meta import REPAIRS_KEY, load_onnx, read_metadata
    from engines.openvino import build_ir
    from engines.ort import build_optimized_graph

    listed = [f"{PLANTED}.mlp.fc1: input equalized"]
    assert json.loads(read_metadata(load_onnx(tmp_path / "b.onnx"))[REPAIRS_KEY]) == listed
    build_optimized_graph(tmp_path / "b.onnx", tmp_path / "b.ort.onnx")
    assert json.loads(read_metadata(load_onnx(tmp_path / "b.ort.onnx"))[REPAIRS_KEY]) == listed
    build_ir(tmp_path / "b.onnx", tmp_path / "b.xml", "int8")
    ir = ov.Core().read_model(str(tmp_path / "b.xml"))
    assert json.loads(ir.get_rt_info(["framework", REPAIRS_KEY]).astype(str)) == listed
    assert json.loads(read_metadata(load_onnx(tmp_path / "a.onnx"))[REPAIRS_KEY]) == []


def test_a_clean_model_gets_no_repair(shared: Shared, tmp_path):
    import models
    from pipeline.precision import convert_precision

    x = _calibration(models.load_checkpoint(shared.checkpoint).config)
    report = convert_precision(shared.onnx, tmp_path / "c.onnx", "int8", x[:64], holdout=x[64:], holdout_labeled=True)
    assert [c["step"] for c in report.fallback_rounds] == ["as quantized"] and report.fallback_rounds[0]["passed"]
    assert report.repairs == []
