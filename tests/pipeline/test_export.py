from __future__ import annotations

import collections
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import models
from engines.ort import OnnxRuntimeRunner
from pipeline.export import ExportError, ExportSettings, export_onnx, load_images, read_onnx_card
from pipeline.plugin_swap import PluginSwapError, swap_in_plugin_nodes
from tests.conftest import DATA
from tests.failures import Fails, assert_api_error_is_one_clean_line, assert_fails_cleanly, foreign_onnx


@pytest.fixture
def exported(graphs):
    """(eager model, graph, ExportResult) of each variant and shift form, exported once per session (``graphs``)."""
    variants = {"s2mlpv2_tiny_test": "tiny", "s2mlpv2_cifar10": "cifar10"}
    return lambda name, impl="onnx": graphs.export(variants[name], impl)


def _images(model, n):
    return load_images(DATA / "cifar10-val", model, n)


@pytest.mark.parametrize("name", ["s2mlpv2_tiny_test", pytest.param("s2mlpv2_cifar10", marks=pytest.mark.slow)])
@pytest.mark.parametrize("batch", [1, 7])
def test_ort_matches_pytorch_on_images_and_random_inputs(exported, name, batch):
    model, path, _ = exported(name)
    runner = OnnxRuntimeRunner(path)
    c, h, w = model.config.preprocessing.input_size
    for x in (_images(model, batch), torch.randn(batch, c, h, w)):
        with torch.no_grad():
            expected = model(x).numpy()
        got = runner(x)
        assert got.shape == expected.shape == (batch, model.config.num_classes)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("name", ["s2mlpv2_tiny_test", pytest.param("s2mlpv2_cifar10", marks=pytest.mark.slow)])
def test_standard_form_has_no_scatter_and_few_transposes(exported, name):
    from pipeline.plugin_swap import find_shifts

    model, path, result = exported(name)
    ops = result.op_histogram
    assert "ScatterND" not in ops and "ScatterElements" not in ops
    # 2 shifts a block, each one Gather of shifted rows straight from the mixer's expansion: no Split, Pad or Concat
    blocks = sum(model.config.layers)
    shifts = find_shifts(onnx.load(str(path)))
    assert sorted(s["pattern"] for s in shifts) == [1] * blocks + [2] * blocks
    assert not {"Split", "Pad", "Slice", "Concat"} & set(ops)
    # patch embed and transition need NCHW<->NHWC (3); split attention reads ViP's channel-major weights (1 per block)
    assert ops.get("Transpose", 0) <= 3 + blocks


def test_graph_interface_and_metadata(exported):
    model, path, _ = exported("s2mlpv2_tiny_test")
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    card = read_onnx_card(path)
    assert card.config == model.config
    assert card.preprocessing.input_size == (3, 32, 32)


def test_plugin_form_has_one_node_per_shift_with_plugin_attributes(exported):
    from engines.shift_node import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

    model, path, result = exported("s2mlpv2_tiny_test", "plugin")
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == PLUGIN_NAME]
    assert len(nodes) == 2 * 2  # 2 blocks x (SS1, SS2)
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert sorted(a["pattern"] for a in attrs) == [1, 1, 2, 2]
    assert all(
        a["plugin_namespace"] == PLUGIN_NAMESPACE.encode() and a["plugin_version"] == PLUGIN_VERSION.encode() for a in attrs
    )
    assert "Pad" not in result.op_histogram and "Slice" not in result.op_histogram


def test_plugin_form_is_otherwise_identical_to_standard_form(exported):
    from pipeline.plugin_swap import swap_in_plugin_nodes

    _, std_path, std = exported("s2mlpv2_tiny_test", "onnx")
    _, plug_path, plug = exported("s2mlpv2_tiny_test", "plugin")
    swapped = collections.Counter(n.op_type for n in swap_in_plugin_nodes(onnx.load(str(std_path))).graph.node)
    # the plugin export splits the shifted part of the expansion in two; the swapped graph slices each shift's half out
    mixers = plug.op_histogram["Split"]
    expected = collections.Counter(plug.op_histogram)
    expected.update({"Split": -mixers, "Slice": 2 * mixers})
    assert swapped == +expected


def test_plugin_form_gives_outputs_identical_to_standard_form(exported):
    model, std_path, _ = exported("s2mlpv2_tiny_test", "onnx")
    _, plug_path, _ = exported("s2mlpv2_tiny_test", "plugin")
    x = _images(model, 7)
    np.testing.assert_array_equal(OnnxRuntimeRunner(std_path)(x), OnnxRuntimeRunner(plug_path)(x))


@pytest.mark.parametrize("impl", ["onnx", "plugin"])
def test_onnx_checker_full_check_passes(exported, impl):
    from engines.shift_node import register_onnx_schema

    register_onnx_schema()
    _, path, _ = exported("s2mlpv2_tiny_test", impl)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_polygraphy_inspect_model_passes(exported):
    _, path, _ = exported("s2mlpv2_tiny_test")
    exe = shutil.which("polygraphy") or str(__import__("pathlib").Path(sys.executable).parent / "polygraphy")
    proc = subprocess.run([exe, "inspect", "model", str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "input" in proc.stdout and "logits" in proc.stdout


def test_a_lowering_that_disagrees_with_eager_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    from models.layers import S2MLPv2ExportMixer

    torch.manual_seed(0)
    model = models.create_model("s2mlpv2_tiny_test").eval()
    lowered = S2MLPv2ExportMixer.forward
    # a broken export form: the graph computes something the eager model does not
    monkeypatch.setattr(S2MLPv2ExportMixer, "forward", lambda self, x: lowered(self, x) * 1.5)
    with pytest.raises(ExportError, match="disagrees with PyTorch.*max \\|Δlogit\\|"):
        export_onnx(model, tmp_path / "bad.onnx", ExportSettings())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_prints_nodes_ops_and_seconds(tmp_path, run_cli):
    out = tmp_path / "tiny.onnx"
    proc = run_cli("pipeline.export", "--model", "s2mlpv2_tiny_test", "--out", out, "--json", tmp_path / "r.json", check=True)
    assert "RANDOM weights" in proc.stderr
    assert "nodes:" in proc.stdout and "ops:" in proc.stdout and "seconds:" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["nodes"] < report["nodes_exported"]
    assert out.is_file()


@pytest.mark.slow
def test_cli_exports_from_a_checkpoint(tmp_path, run_cli):
    torch.manual_seed(1)
    model = models.create_model("s2mlpv2_tiny_test")
    ckpt = models.save_checkpoint(model, tmp_path / "tiny.safetensors", {"note": "cli test"})
    out = tmp_path / "tiny.onnx"
    proc = run_cli("pipeline.export", "--checkpoint", ckpt, "--out", out, "--check-images", DATA / "cifar10-val", check=True)
    assert "RANDOM" not in proc.stderr
    assert "images from" in proc.stdout
    assert read_onnx_card(out).provenance == {"note": "cli test"}


def test_cli_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    status = importlib.import_module("pipeline.export").main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.onnx")])
    assert_fails_cleanly(status, capsys.readouterr().err, Fails("not a readable safetensors file", "re-copy or re-save"))
    assert not (tmp_path / "x.onnx").exists()


def test_plugin_swap_on_a_graph_without_shifts_is_refused(tmp_path: Path, capsys):
    with pytest.raises(PluginSwapError) as info:
        swap_in_plugin_nodes(onnx.load(str(foreign_onnx(tmp_path / "f.onnx"))))
    assert_api_error_is_one_clean_line(
        info.value, Fails("no spatial shifts", "export one with python -m pipeline.export"), capsys
    )
