"""GPU check: what a CUDA machine can verify and time without TensorRT.

``python -m pipeline.gpu_check --out gpu_check.json`` checks and reports:

1. the Triton shift kernel against the PyTorch reference on CUDA (fp32/fp16, both patterns,
   odd sizes and sizes of 1), bit for bit;
2. the kernel's achieved bandwidth against a device-to-device copy of the same tensor
   (goal: at least 80 % of the copy), for its default block shape and for a small sweep of
   block shapes, each checked against the reference before it is timed;
3. Small/7 fp16 images/s at batch 64 and 256 in torch eager, eager replayed as a CUDA graph,
   and ``torch.compile`` (default and max-autotune), against the fp16 tensor-core ceiling of
   a large matmul measured in the same run.

4. TensorRT for RTX on this GPU: a plan of the tiny model in both shift forms is built, and
   run against ONNX Runtime where TensorRT for RTX supports the GPU. Where it does not (H100
   and H200 are compute capability 9.0, outside its list), the report records the refusal
   the runtime gives, which must name the GPU's compute capability and the fix. The plugin
   form also runs the plugin's ``enqueue`` (the Triton kernel on TensorRT's own buffers).

Every number is measured in this one run, so ratios are comparable. Needs torch with CUDA
and triton; TensorRT for RTX for step 4 (``pip install tensorrt-rtx``; the step records its
absence otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from common.cli import HelpFormatter
from models import create_model
from models.layers import shift_reference
from models.shift import EXPORT_FORMS

SMALL7_GMAC = 6.92


def _time_cuda(fn: Callable[[], Any], warmup: int = 10, iters: int = 50) -> float:
    """Median milliseconds of ``fn`` over ``iters`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def check_kernel() -> dict[str, Any]:
    from engines.shift_kernel import spatial_shift

    cases = []
    for shape in [
        (2, 7, 9, 8),
        (1, 1, 5, 12),
        (3, 4, 1, 16),
        (1, 1, 1, 4),
        (4, 32, 32, 192),
        (2, 16, 16, 384),
        (1, 33, 17, 1028),
    ]:
        for pattern in (1, 2):
            for dtype in (torch.float32, torch.float16):
                x = torch.randn(shape, device="cuda", dtype=dtype)
                equal = torch.equal(spatial_shift(x, pattern), shift_reference(x, pattern))
                cases.append({"shape": list(shape), "pattern": pattern, "dtype": str(dtype), "equal": equal})
    return {"cases": len(cases), "all_equal": all(c["equal"] for c in cases), "failures": [c for c in cases if not c["equal"]]}


def _sweep_configs(quarter: int) -> list[tuple[int, int, int]]:
    from engines.shift_kernel import block_config

    configs = [block_config(quarter)]
    for block_c in (16, 32, 64):
        for block_p in (8, 16, 32, 64):
            for warps in (4, 8):
                if (block_p, block_c, warps) not in configs:
                    configs.append((block_p, block_c, warps))
    return configs


def kernel_bandwidth(sweep: bool = True) -> list[dict[str, Any]]:
    """The kernel's GB/s against a device-to-device copy; with ``sweep``, also every block shape in a small grid."""
    from engines.shift_kernel import block_config, spatial_shift

    rows = []
    for shape in [(256, 32, 32, 192), (256, 16, 16, 384), (64, 32, 32, 256)]:
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(shape, device="cuda", dtype=dtype)
            y = torch.empty_like(x)
            reference = shift_reference(x, 1)
            nbytes = 2 * x.numel() * x.element_size()  # read + write
            t_copy = _time_cuda(lambda: y.copy_(x))
            t_torch = _time_cuda(lambda: shift_reference(x, 1))
            default = block_config(shape[-1] // 4)
            configs = _sweep_configs(shape[-1] // 4) if sweep and shape[0] == 256 else [default]
            timed = []
            for config in configs:
                if not torch.equal(spatial_shift(x, 1, config), reference):
                    timed.append({"config": list(config), "error": "output differs from the reference"})
                    continue
                ms = _time_cuda(lambda c=config: spatial_shift(x, 1, c), warmup=3, iters=20)
                timed.append({"config": list(config), "GBps": nbytes / ms / 1e6, "fraction_of_copy": t_copy / ms})
            ok = [t for t in timed if "error" not in t]
            best = max(ok, key=lambda t: t["GBps"]) if ok else None
            mine = next((t for t in ok if t["config"] == list(default)), None)
            rows.append(
                {
                    "shape": list(shape),
                    "dtype": str(dtype),
                    "copy_GBps": nbytes / t_copy / 1e6,
                    "torch_reference_GBps": nbytes / t_torch / 1e6,
                    "default_config": list(default),
                    "kernel_GBps": mine["GBps"] if mine else None,
                    "kernel_fraction_of_copy": mine["fraction_of_copy"] if mine else None,
                    "best_config": best["config"] if best else None,
                    "best_fraction_of_copy": best["fraction_of_copy"] if best else None,
                    "sweep": timed,
                }
            )
    return rows


def matmul_ceiling() -> dict[str, Any]:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    ms = _time_cuda(lambda: a @ b, warmup=5, iters=20)
    return {"shape": [n, n, n], "dtype": "float16", "TFLOPs": 2 * n**3 / ms / 1e9}


def model_throughput(
    batches: Sequence[int],
    compile_modes: Sequence[str],
    ceiling_tflops: float,
    rows: list[dict[str, Any]],
    on_row: Callable[[], None],
) -> None:
    """Append one row per (backend, batch) to ``rows``, calling ``on_row`` after each (partial results survive a time-out).

    Eager and CUDA-graph rows come first for every batch, then each compile mode (slowest last).
    A compile that fails is recorded with its error and the run goes on.
    """
    model = create_model("s2mlpv2_small7").cuda().half().eval()
    inputs = {batch: torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16) for batch in batches}

    def record(backend: str, batch: int, ms: float, extra: dict[str, Any] | None = None) -> None:
        img_s = batch / ms * 1e3
        tflops = img_s * SMALL7_GMAC * 2 / 1e3
        rows.append(
            {
                "backend": backend,
                "batch": batch,
                "ms": ms,
                "img_s": img_s,
                "TFLOPs": tflops,
                "fraction_of_ceiling": tflops / ceiling_tflops,
                **(extra or {}),
            }
        )
        on_row()
        print(
            f"  {backend:44s} batch {batch:4d}: {img_s:9.0f} img/s  {tflops:6.1f} TFLOP/s  {tflops / ceiling_tflops:6.1%}",
            flush=True,
        )

    with torch.inference_mode():
        for batch, x in inputs.items():
            record("eager", batch, _time_cuda(lambda: model(x), warmup=5, iters=20))
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(static_in)
            record("eager + CUDA graph", batch, _time_cuda(graph.replay, warmup=5, iters=20))
            del graph
    for mode in compile_modes:
        for batch, x in inputs.items():
            backend = f"torch.compile ({mode})"
            torch._dynamo.reset()
            compiled = torch.compile(model, mode=mode, dynamic=False)
            t0 = time.time()
            try:
                with torch.inference_mode():
                    compiled(x)
                    torch.cuda.synchronize()
                    compile_s = time.time() - t0
                    ms = _time_cuda(lambda: compiled(x), warmup=5, iters=20)
                record(backend, batch, ms, {"compile_seconds": compile_s})
            except Exception as e:  # an Inductor failure is a finding to report, not a reason to lose the other rows
                message = " ".join(str(e).split())[:300]
                rows.append({"backend": backend, "batch": batch, "error": message})
                print(f"  {backend} batch {batch}: FAILED: {message}", flush=True)
                on_row()


def check_tensorrt_rtx(folder: Path) -> dict[str, Any]:
    """Build tiny-model plans with TensorRT for RTX and run them here, or record why they cannot run."""
    import numpy as np

    from engines.build import BuildSettings, build_plan
    from engines.ort import OnnxRuntimeRunner
    from engines.runtime import TensorRTRunner
    from engines.sidecar import EngineMismatchError
    from engines.trt import TENSORRT_RTX, TensorRTUnavailable, cuda_device

    from .export import ExportSettings, export_onnx

    out: dict[str, Any] = {"gpu": cuda_device(), "supported": TENSORRT_RTX.gpu_here() is not None, "forms": {}}
    try:
        out["version"] = TENSORRT_RTX.version()
    except TensorRTUnavailable as e:
        out["error"] = str(e)
        return out
    torch.manual_seed(0)
    model = create_model("s2mlpv2_tiny_test").eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    for form in EXPORT_FORMS:
        graph = folder / f"tiny-{form}.onnx"
        export_onnx(model, graph, ExportSettings(shift_impl=form))
        targets = (out["gpu"][1],) if out["supported"] else None  # this GPU, or the default set (to show the refusal)
        result = build_plan(
            graph,
            folder / f"tiny-{form}.plan",
            BuildSettings((1, 4, 8), timing_cache=None, flavour="tensorrt-rtx", compute_capabilities=targets),
        )
        row: dict[str, Any] = {
            "built": True,
            "kernels": result.report.get("kernels"),
            "plugin_kernels": result.report.get("plugin_kernels"),
        }
        try:
            runner = TensorRTRunner(result.plan, runtime_cache=folder / f"tiny-{form}.runtime-cache")
            got, want = runner(x), OnnxRuntimeRunner(graph)(x)
            row.update(
                ran=True, max_abs_diff=float(np.abs(got - want).max()), matches=bool(np.allclose(got, want, rtol=1e-3, atol=1e-4))
            )
        except (EngineMismatchError, TensorRTUnavailable) as e:
            row.update(ran=False, refusal=str(e))
        out["forms"][form] = row
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--compile-modes", nargs="*", default=["default", "max-autotune"], help="torch.compile modes to time")
    p.add_argument("--no-sweep", action="store_true", help="time only the kernel's default block shape")
    p.add_argument("--kernel-only", action="store_true", help="check and time the shift kernel only (no Small/7 rows)")
    p.add_argument("--no-rtx", action="store_true", help="skip the TensorRT for RTX build-and-run step")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device; this check needs an NVIDIA GPU with torch built for CUDA", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{report['gpu']} (sm_{''.join(map(str, report['capability']))}), torch {report['torch']}", flush=True)
    report["kernel_correctness"] = check_kernel()
    print(
        f"kernel == reference: {report['kernel_correctness']['all_equal']} over {report['kernel_correctness']['cases']} cases",
        flush=True,
    )
    save()
    report["kernel_bandwidth"] = kernel_bandwidth(sweep=not args.no_sweep)
    for r in report["kernel_bandwidth"]:
        print(
            f"  shift {r['shape']} {r['dtype']}: block {r['default_config']} {r['kernel_GBps'] or 0:.0f} GB/s = "
            f"{r['kernel_fraction_of_copy'] or 0:.0%} of copy ({r['copy_GBps']:.0f} GB/s); best of sweep {r['best_config']} "
            f"{r['best_fraction_of_copy'] or 0:.0%}; torch pad+cat {r['torch_reference_GBps']:.0f} GB/s",
            flush=True,
        )
    save()
    if not args.no_rtx:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            report["tensorrt_rtx"] = check_tensorrt_rtx(Path(tmp))
        save()
        print(f"TensorRT for RTX: {json.dumps(report['tensorrt_rtx'])}", flush=True)
    if args.kernel_only:
        return 0 if report["kernel_correctness"]["all_equal"] else 1
    report["fp16_matmul_ceiling"] = matmul_ceiling()
    print(f"fp16 matmul ceiling: {report['fp16_matmul_ceiling']['TFLOPs']:.0f} TFLOP/s", flush=True)
    save()
    report["small7_fp16"] = []
    model_throughput(args.batches, args.compile_modes, report["fp16_matmul_ceiling"]["TFLOPs"], report["small7_fp16"], save)
    return 0 if report["kernel_correctness"]["all_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
