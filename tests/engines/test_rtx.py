"""Real TensorRT for RTX: its ONNX parser and builder run on this CPU-only machine.

Every plan here is a real plan of the real builder; only running one needs a GPU (see
``test_engines.test_build_and_run_plan_matches_onnx_runtime``).
"""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

import engines.trt
from engines.build import BuildSettings, EngineBuildError, build_plan, kernel_report, log_path, report_path
from engines.runtime import TensorRTRunner, check_plan_file
from engines.sidecar import EngineMismatchError, read_sidecar
from engines.trt import TENSORRT_RTX, TensorRTUnavailable
from tests.conftest import ROOT, missing


@pytest.fixture(autouse=True)
def _needs_rtx():
    if not TENSORRT_RTX.importable():
        missing(
            "needs TensorRT for RTX: `pip install tensorrt-rtx` (a default dependency on Linux and Windows x86_64)",
            "tensorrt-rtx",
        )


def _rtx(tmp_path: Path, **overrides) -> BuildSettings:
    return BuildSettings((1, 4, 16), timing_cache=None, flavour="tensorrt-rtx", **overrides)


def _shift_nodes(graph: Path) -> int:
    return sum(n.op_type == "SpatialShift" for n in onnx.load(str(graph), load_external_data=False).graph.node)


GRAPHS = [
    ("onnx", "fp32", "gemm-inputs"),
    ("plugin", "fp32", "gemm-inputs"),
    ("onnx", "fp16", "gemm-inputs"),
    ("onnx", "int8", "gemm-inputs"),
    ("onnx", "int8", "modelopt"),
    ("plugin", "int8", "gemm-inputs"),
]
# The quick loop builds one plan of each export form; the converted graphs (ModelOpt) build in the full suite.
GRAPH_PARAMS = [pytest.param(*g, id="-".join(g), marks=() if g[1] == "fp32" else pytest.mark.slow) for g in GRAPHS]


@pytest.mark.parametrize("variant", ["tiny", pytest.param("cifar10", marks=pytest.mark.slow)])
@pytest.mark.parametrize("form,precision,placement", GRAPH_PARAMS)
def test_real_plan_from_every_graph(variant, form, precision, placement, graphs, tmp_path):
    graph = graphs.get(variant, form, precision, placement)
    result = build_plan(graph, tmp_path / "m.plan", _rtx(tmp_path))
    assert not result.reused
    plan = result.plan.read_bytes()
    assert len(plan) > 100_000
    sc = read_sidecar(result.plan)
    assert (sc.flavour, sc.flavour_version) == ("tensorrt-rtx", TENSORRT_RTX.version())
    assert sc.compute_capabilities == ("8.0", "8.6", "8.9", "12.0") and sc.gpu_name is None
    assert sc.precision == precision and sc.input_shape == (3, 32, 32)
    report = json.loads(report_path(result.plan).read_text())
    assert report == result.report and report["kernels"] > 10
    shifts = _shift_nodes(graph)
    if form == "plugin":
        assert shifts > 0 and report["plugin_kernels"] == shifts and report["fused_shift_kernels"] == 0
        assert sc.plugin_source.startswith("python-ipluginv3") and sc.plugin_sha256 == TENSORRT_RTX.plugin_sha256()
    else:
        assert shifts == 0 and report["plugin_kernels"] == 0 and report["fused_shift_kernels"] > 0
        assert sc.plugin_sha256 is None and sc.plugin_source is None
    if precision == "int8":
        assert "Datatype: Int8" in log_path(result.plan).read_text()
    check_plan_file(result.plan, "tensorrt-rtx")  # the header and hash checks accept a real plan


def test_unchanged_rebuild_is_skipped_and_changes_rebuild(graphs, tmp_path, monkeypatch):
    graph = graphs.get("tiny", "plugin")
    first = build_plan(graph, tmp_path / "m.plan", _rtx(tmp_path))
    again = build_plan(graph, tmp_path / "m.plan", _rtx(tmp_path))
    assert again.reused and again.report == first.report and again.sidecar == first.sidecar
    # another target
    other = build_plan(graph, tmp_path / "m.plan", _rtx(tmp_path, compute_capabilities=("8.6",)))
    assert not other.reused and other.sidecar.compute_capabilities == ("8.6",)
    # a changed plugin source: a copy of engines/ with one line more in the plugin
    changed = tmp_path / "engines"
    changed.mkdir()
    for name in TENSORRT_RTX.plugin_files:
        (changed / name).write_bytes((ROOT / "engines" / name).read_bytes())
    with (changed / "plugin_rtx.py").open("a") as f:
        f.write("\n# changed\n")
    monkeypatch.setattr(engines.trt, "PLUGIN_DIR", changed)
    rebuilt = build_plan(graph, tmp_path / "m.plan", _rtx(tmp_path, compute_capabilities=("8.6",)))
    assert not rebuilt.reused and rebuilt.sidecar.plugin_sha256 != other.sidecar.plugin_sha256


def test_a_graph_the_parser_rejects_is_one_line_listing_its_messages(graphs, tmp_path, run_cli):
    model = onnx.load(str(graphs.get("tiny")))
    node = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    node.op_type, node.domain = "NoSuchOp", "example.unknown"  # an op no parser or plugin knows
    model.opset_import.append(onnx.helper.make_opsetid("example.unknown", 1))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(EngineBuildError, match=r"could not parse .*bad\.onnx: .*NoSuchOp") as info:
        build_plan(bad, tmp_path / "m.plan", _rtx(tmp_path))
    assert "\n" not in str(info.value) and "Plugin not found" in str(info.value)
    # the command line: one line, exit 2, no abort, nothing written
    proc = run_cli("engines.build", "--onnx", bad, "--plan", tmp_path / "cli.plan", "--flavour", "tensorrt-rtx")
    assert proc.returncode == 2, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == proc.stderr.strip().splitlines()[-1:]
    assert not list(tmp_path.glob("cli*"))


def test_plugin_graph_builds_in_a_fresh_process_without_aborting(graphs, tmp_path, run_cli):
    # the parser's dlopen of libtensorrt_rtx.so once aborted the process here (engines.trt)
    proc = run_cli(
        "engines.build", "--onnx", graphs.get("tiny", "plugin"), "--plan", tmp_path / "p.plan", "--flavour", "tensorrt-rtx"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 plugin" in proc.stdout and "not executed on this machine" in proc.stdout


def test_missing_library_link_is_made_or_refused_in_one_line(tmp_path, monkeypatch):
    import types

    libs = tmp_path / "tensorrt_rtx_libs"
    libs.mkdir()
    (libs / "__init__.py").write_text("")
    (libs / "libtensorrt_rtx.so.1").write_bytes(b"\x7fELF")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_libs", types.SimpleNamespace(__file__=str(libs / "__init__.py")))
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    engines.trt._ensure_unversioned_rtx_library()
    assert os.readlink(libs / "libtensorrt_rtx.so") == "libtensorrt_rtx.so.1"
    (libs / "libtensorrt_rtx.so").unlink()

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(engines.trt.os, "replace", refuse)
    with pytest.raises(
        TensorRTUnavailable, match=r"could not be created \(Permission denied\); run `ln -s libtensorrt_rtx\.so\.1 .*`"
    ):
        engines.trt._ensure_unversioned_rtx_library()
    assert sorted(p.name for p in libs.iterdir()) == ["__init__.py", "libtensorrt_rtx.so.1"]  # no link, no temporary


@pytest.fixture(scope="module")
def tiny_plan(graphs, tmp_path_factory) -> Path:
    return build_plan(graphs.get("tiny"), tmp_path_factory.mktemp("plan") / "m.plan", _rtx(None)).plan


def _copy(plan: Path, folder: Path, data: bytes | None = None) -> Path:
    target = folder / "copy.plan"
    target.write_bytes(plan.read_bytes() if data is None else data)
    (folder / "copy.json").write_text(plan.with_suffix(".json").read_text())
    return target


def test_truncated_plan_is_caught_by_the_sidecar_hash(tiny_plan, tmp_path):
    plan = _copy(tiny_plan, tmp_path, tiny_plan.read_bytes()[:-1000])
    with pytest.raises(EngineMismatchError, match="truncated or changed since it was built"):
        TensorRTRunner(plan)


def test_random_bytes_are_flagged_by_the_header_without_a_gpu(tiny_plan, tmp_path):
    import hashlib

    junk = os.urandom(200_000)
    plan = _copy(tiny_plan, tmp_path, junk)
    sidecar = replace(read_sidecar(plan), plan_sha256=hashlib.sha256(junk).hexdigest())  # a sidecar that vouches for it
    sidecar.write(plan)
    with pytest.raises(EngineMismatchError, match=r"is not a TensorRT for RTX plan \(its header is malformed\)"):
        TensorRTRunner(plan)


def test_plan_handed_to_the_other_flavour_is_refused_by_name(tiny_plan):
    with pytest.raises(EngineMismatchError, match=r"built with TensorRT for RTX .*handed to TensorRT;"):
        TensorRTRunner(tiny_plan, flavour_name="tensorrt")


def test_a_good_plan_without_a_gpu_stops_at_the_gpu(tiny_plan):
    if TENSORRT_RTX.gpu_here() is not None:
        pytest.skip("this machine has a GPU TensorRT for RTX runs on; the GPU test covers it")
    with pytest.raises(TensorRTUnavailable, match="needs an NVIDIA GPU"):
        TensorRTRunner(tiny_plan)


def test_kernel_report_reads_both_log_formats():
    lines = [
        "Name: __myl_ReshGathReshMean_myl0_6, LayerType: kgen, Inputs: []",
        "Name: node_spatial_shift_myl0_8, LayerType: custom_layer, Inputs: []\nName: __mye1_0, LayerType: shape_call, Inputs: []",
        "Layer(CaskGemm): node_linear_1, Tactic: 0x1, input -> out",
        "Layer(PluginV3): node_spatial_shift_2, Tactic: 0x0, a -> b",
    ]
    r = kernel_report(lines)
    assert (r["kernels"], r["plugin_kernels"], r["fused_shift_kernels"]) == (4, 2, 1)
    assert r["by_type"] == {"CaskGemm": 1, "PluginV3": 1, "custom_layer": 1, "kgen": 1}
