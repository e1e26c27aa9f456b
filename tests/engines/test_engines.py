from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import models
from engines.build import BuildSettings, parse_batch, parse_compute_capabilities, planned_sidecar, reusable
from engines.ort import OnnxRuntimeRunner
from engines.runtime import InputError, check_input
from engines.shift_kernel import block_config, compile_ptx, launch_grid, shift_into, spatial_shift
from engines.sidecar import EngineMismatchError, ProfileError, read_sidecar
from engines.trt import FLAVOURS, TENSORRT, TENSORRT_RTX, Flavour, TensorRTUnavailable, is_available
from models.layers import shift_reference
from pipeline.export import ExportSettings, export_onnx
from tests.conftest import ROOT
from tests.failures import Fails, Shared, assert_api_error_is_one_clean_line, trt11_sidecar


def _gpu_for(name: str) -> bool:
    fl = FLAVOURS[name]
    return fl.importable() and fl.gpu_here() is not None


def test_import_engines_works_without_tensorrt_or_cuda():
    proc = subprocess.run(
        [sys.executable, "-c", "import engines, engines.build, engines.runtime, engines.sidecar; print('ok')"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.parametrize("shape", [(2, 5, 7, 8), (1, 1, 6, 12), (3, 4, 1, 16), (1, 1, 1, 4), (2, 9, 3, 72), (1, 3, 5, 192)])
@pytest.mark.parametrize("pattern", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_kernel_equals_reference(shape, pattern, dtype):
    x = torch.randn(shape).to(dtype)
    assert torch.equal(spatial_shift(x, pattern), shift_reference(x, pattern))


def test_compiling_under_the_interpreter_says_what_to_do():
    with pytest.raises(RuntimeError, match="unset it"):
        compile_ptx("fp32", 1, 192, 90)


def test_shift_into_writes_the_given_buffer():
    # what the TensorRT for RTX plugin calls on TensorRT's own buffers
    x = torch.randn(2, 5, 7, 16)
    y = torch.full_like(x, float("nan"))
    shift_into(x, y, 2)
    assert torch.equal(y, shift_reference(x, 2))
    with pytest.raises(ValueError, match="same shape and dtype"):
        shift_into(x, torch.empty(2, 5, 7, 8), 1)


def test_triton_kernel_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible by 4"):
        spatial_shift(torch.randn(1, 2, 2, 6), 1)
    with pytest.raises(ValueError, match="pattern"):
        spatial_shift(torch.randn(1, 2, 2, 4), 3)


def test_block_shape_covers_the_quarter():
    assert block_config(48)[:2] == (16, 64)  # Small/7 stage 1: 192 channels, one masked step per quarter
    assert block_config(96)[:2] == (16, 64)  # stage 2: two steps
    assert block_config(3)[:2] == (256, 4)
    assert launch_grid(1000, 32) == (32,)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_kernel_compiles_to_ptx_without_a_gpu(arch, dtype):
    # a subprocess without TRITON_INTERPRET: the interpreter (used by the other kernel tests) cannot compile

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json; from engines.shift_kernel import compile_ptx; "
        f"print(json.dumps([compile_ptx({dtype!r}, 2, c, {arch}) for c in (192, 12)]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (name, ptx, threads, shared), (_, ptx_odd, _, _) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert f".target sm_{arch}" in ptx and f".entry {name}" in ptx
    assert threads == 256 and shared >= 0
    # 48-channel quarters move as 16-byte vectors (8 halves or 4 floats); 3-channel quarters cannot
    assert "ld.global.v4.b32" in ptx and "st.global.v4.b32" in ptx
    assert "ld.global.v" not in ptx_odd
    assert ("ld.global.b16" in ptx_odd) == (dtype == "fp16")


def _sidecar(**overrides):
    """A TensorRT 11 fp16 plan's sidecar for a 224 x 224 model."""
    return trt11_sidecar(**{"input_shape": (3, 224, 224), "precision": "fp16", **overrides})


def test_sidecar_key_depends_on_what_the_plan_depends_on():
    base = _sidecar()
    assert base.key() == _sidecar(gpu_name="H100 PCIe").key()  # same architecture, same plan
    assert base.key() == _sidecar(plan_sha256="f" * 64).key()  # the plan's own hash is an output
    for change in (
        dict(onnx_sha256="b" * 64),
        dict(batch_profile=(1, 8, 64)),
        dict(flavour_version="11.5.0"),
        dict(compute_capabilities=("8.0",)),
        dict(plugin_sha256="c" * 64),
        dict(precision="int8"),
        dict(flavour="tensorrt-rtx"),
        dict(plugin_source="other"),
    ):
        assert _sidecar(**change).key() != base.key(), change


def test_sidecar_round_trip_and_reuse(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan bytes")
    sc = _sidecar()
    assert not reusable(plan, sc)  # no sidecar yet
    sc.write(plan)
    assert read_sidecar(plan) == sc
    assert reusable(plan, sc)
    assert not reusable(plan, _sidecar(batch_profile=(1, 4, 8)))
    (tmp_path / "m.json").write_text("{broken")
    assert not reusable(plan, sc)


def test_plan_from_another_tensorrt_version_names_both():
    with pytest.raises(EngineMismatchError, match=r"TensorRT 11\.4\.0.*TensorRT 11\.6\.1"):
        _sidecar().check_runtime("tensorrt", "11.6.1", "9.0")
    _sidecar(version_compatible=True).check_runtime("tensorrt", "11.6.1", "9.0")  # same major, built version-compatible
    with pytest.raises(EngineMismatchError):
        _sidecar(version_compatible=True).check_runtime("tensorrt", "12.0.0", "9.0")


def test_plan_from_another_gpu_names_both():
    with pytest.raises(EngineMismatchError, match=r"compute capability 9\.0 \(NVIDIA H100\).*8\.9"):
        _sidecar().check_runtime("tensorrt", "11.4.0", "8.9")
    _sidecar(hardware_compatible=True).check_runtime("tensorrt", "11.4.0", "8.6")


def test_plan_of_one_flavour_is_refused_by_the_other_by_name():
    rtx = _sidecar(flavour="tensorrt-rtx", flavour_version="1.7.1", gpu_name=None, compute_capabilities=("8.6", "8.9"))
    with pytest.raises(
        EngineMismatchError, match=r"built with TensorRT for RTX 1\.7\.1, but it was handed to TensorRT;.*--backend tensorrt-rtx"
    ):
        rtx.check_runtime("tensorrt", "11.4.0", "8.6")
    with pytest.raises(EngineMismatchError, match=r"built with TensorRT 11\.4\.0, but it was handed to TensorRT for RTX"):
        _sidecar().check_flavour("tensorrt-rtx")


def test_rtx_plan_runs_only_on_its_targets():
    rtx = _sidecar(
        flavour="tensorrt-rtx", flavour_version="1.7.1", gpu_name=None, compute_capabilities=("8.0", "8.6", "8.9", "12.0")
    )
    rtx.check_runtime("tensorrt-rtx", "1.7.1", "8.9")
    with pytest.raises(
        EngineMismatchError, match=r"this GPU is 9\.0; TensorRT for RTX does not support this GPU.*--backend tensorrt"
    ):
        rtx.check_runtime("tensorrt-rtx", "1.7.1", "9.0")  # H100 / H200
    with pytest.raises(EngineMismatchError, match=r"this GPU is 7\.5; rebuild it with --compute-capability 7\.5"):
        rtx.check_runtime("tensorrt-rtx", "1.7.1", "7.5")


def test_compute_capability_targets():
    assert TENSORRT_RTX.targets(None, None) == ("8.0", "8.6", "8.9", "12.0")
    assert TENSORRT_RTX.targets(("8.9", "7.5", "8.9"), None) == ("7.5", "8.9")
    with pytest.raises(ValueError, match=r"cannot build for compute capability 9\.0.*--backend tensorrt"):
        TENSORRT_RTX.targets(("9.0",), None)
    assert TENSORRT.targets(None, ("NVIDIA H200", "9.0")) == ("9.0",)
    with pytest.raises(TensorRTUnavailable, match="no CUDA device"):
        TENSORRT.targets(None, None)
    with pytest.raises(ValueError, match="TensorRT for RTX only"):
        TENSORRT.targets(("8.6",), ("NVIDIA H200", "9.0"))
    assert parse_compute_capabilities("8.6, 8.9") == ("8.6", "8.9") and parse_compute_capabilities(None) is None
    with pytest.raises(ValueError, match="comma-separated"):
        parse_compute_capabilities("sm86")


def test_missing_or_foreign_sidecar_is_an_error(tmp_path):
    with pytest.raises(EngineMismatchError, match="missing"):
        read_sidecar(tmp_path / "x.plan")
    (tmp_path / "y.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(EngineMismatchError, match="not a plan sidecar"):
        read_sidecar(tmp_path / "y.plan")


def test_valid_input_passes_checks():
    check_input(np.zeros((4, 3, 224, 224), np.float32), _sidecar())


def test_parse_batch_and_settings():
    assert parse_batch("1,8,32") == (1, 8, 32)
    for bad in ("8", "a,b,c", "1,2"):
        with pytest.raises(ValueError, match="MIN,OPT,MAX"):
            parse_batch(bad)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BuildSettings(batch=(8, 1, 32))


def test_planned_sidecar_reads_the_graph(graphs):
    std, plug = graphs.get("tiny"), graphs.get("tiny", "plugin")
    a = planned_sidecar(std, BuildSettings(timing_cache=None), "11.4.0", ("GPU", "9.0"))
    b = planned_sidecar(plug, BuildSettings(timing_cache=None), "11.4.0", ("GPU", "9.0"))
    assert a.input_shape == (3, 32, 32) and a.precision == "fp32" and a.plugin_sha256 is None
    assert b.plugin_sha256 == TENSORRT.plugin_sha256() and b.plugin_source == TENSORRT.plugin_source and a.key() != b.key()
    c = planned_sidecar(plug, BuildSettings(timing_cache=None, flavour="tensorrt-rtx"), "1.7.1", None)
    assert c.plugin_sha256 == TENSORRT_RTX.plugin_sha256() != b.plugin_sha256 and c.gpu_name is None
    assert c.compute_capabilities == ("8.0", "8.6", "8.9", "12.0")


def test_is_available_asks_for_a_gpu_the_flavour_runs_on(monkeypatch):
    import engines.trt

    monkeypatch.setattr(Flavour, "importable", lambda self: True)  # stands in for an installed flavour
    for gpu, rtx, trt11 in ((None, False, False), (("NVIDIA H200", "9.0"), False, True), (("NVIDIA L4", "8.9"), True, True)):
        monkeypatch.setattr(engines.trt, "cuda_device", lambda gpu=gpu: gpu)
        assert (is_available("tensorrt-rtx"), is_available("tensorrt")) == (rtx, trt11), gpu


@pytest.mark.parametrize("flavour", ["tensorrt", "tensorrt-rtx"])
def test_build_and_run_plan_matches_onnx_runtime(flavour, tmp_path):  # pragma: no cover - needs a GPU
    if not _gpu_for(flavour):
        pytest.skip(
            f"running a {flavour} plan needs that flavour installed and a CUDA GPU it supports "
            "(TensorRT 11: `pip install -e .[tensorrt]`; TensorRT for RTX: compute capability 8.0, 8.6, 8.9 or 12.x)"
        )
    from engines.build import build_plan
    from engines.ort import OnnxRuntimeRunner
    from engines.runtime import TensorRTRunner

    torch.manual_seed(0)
    model = models.create_model("s2mlpv2_tiny_test").eval()
    settings = BuildSettings((1, 4, 8), timing_cache=tmp_path / "t.cache", flavour=flavour)
    for impl in ("onnx", "plugin"):
        onnx_path = tmp_path / f"{impl}.onnx"
        export_onnx(model, onnx_path, ExportSettings(shift_impl=impl))
        result = build_plan(onnx_path, tmp_path / f"{impl}.plan", settings)
        assert not result.reused and build_plan(onnx_path, result.plan, settings).reused
        runner = TensorRTRunner(result.plan, runtime_cache=tmp_path / "runtime.cache")
        x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(runner(x), OnnxRuntimeRunner(onnx_path)(x), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(runner.cuda_graph(4)(x), runner(x), rtol=0, atol=0)


def _batches() -> list[tuple[str, np.ndarray | torch.Tensor, Fails]]:
    ok = np.zeros((2, 3, 32, 32), np.float32)
    nan, inf = ok.copy(), torch.zeros(2, 3, 32, 32)
    nan[1, 2, 3, 4] = np.nan
    inf[0, 0, 0, 0] = float("-inf")
    return [
        ("wrong-dtype", ok.astype(np.uint8), Fails("dtype uint8 is not a float type", "pass float32 images")),
        ("wrong-rank", ok[0], Fails("got rank 3", "add the batch dimension")),
        ("wrong-channels", ok[:, :1], Fails("input has 1 channels", "convert images to RGB")),
        ("wrong-size", np.zeros((2, 3, 64, 64), np.float32), Fails("input images are 64x64", "preprocess them with the card")),
        ("nan", nan, Fails("input contains NaN or Inf", "check the preprocessing")),
        ("inf-in-a-torch-tensor", inf, Fails("input contains NaN or Inf", "check the preprocessing")),
    ]


@pytest.mark.parametrize("runner", ["onnxruntime", "tensorrt-checks"])
@pytest.mark.parametrize("bad", _batches(), ids=[b[0] for b in _batches()])
def test_bad_batches_are_refused_before_running(runner, bad, shared: Shared, capsys):
    _, batch, expected = bad
    run = OnnxRuntimeRunner(shared.onnx) if runner == "onnxruntime" else (lambda x: check_input(x, trt11_sidecar()))
    with pytest.raises(InputError) as info:
        run(batch)
    assert_api_error_is_one_clean_line(info.value, expected, capsys)


@pytest.mark.parametrize("batch", [0, 33, 100])
def test_batch_outside_the_plan_profile_is_refused(batch, capsys):
    with pytest.raises(ProfileError) as info:
        check_input(np.zeros((batch, 3, 32, 32), np.float32), trt11_sidecar())
    assert_api_error_is_one_clean_line(
        info.value, Fails(rf"batch {batch} is outside the plan's profile \[1, 32\]", "rebuild with --batch"), capsys
    )
