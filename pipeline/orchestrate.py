"""The whole pipeline, stage by stage, into one output directory (what ``build_engine.py`` runs).

export -> precision (fp16/int8) -> build (TensorRT plan, or an ONNX Runtime-optimized graph)
-> verify -> benchmark, each recorded in ``manifest.json`` and skipped when its inputs and
settings are unchanged. Every file is written atomically, a lock keeps concurrent runs out, and
a failed or interrupted stage is never marked done.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import create_model, load_checkpoint
from models.fileio import atomic_path, atomic_write_json

from .manifest import Manifest, OutputLock

__all__ = ["BuildOptions", "PipelineError", "run_pipeline", "choose_backend", "TENSORRT_HINT"]

TENSORRT_HINT = (
    "a TensorRT plan needs an NVIDIA GPU and TensorRT 11 (`pip install -e .[tensorrt]` on a GPU machine); "
    "building for ONNX Runtime instead"
)


class PipelineError(RuntimeError):
    """A stage cannot run with these options; the message says what to change."""


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    model: str = "s2mlpv2_small7"
    checkpoint: Path | None = None
    shift_impl: str = "onnx"
    opset: int = 20
    calib_data: Path | None = None
    calib_size: int = 512
    calib_method: str = "entropy"
    qdq_placement: str = "gemm-inputs"
    calib_holdout: int = 64
    eval_data: Path | None = None
    eval_limit: int | None = 500
    batch: tuple[int, int, int] = (1, 8, 32)
    backend: str = "auto"
    out: Path | None = None
    force: bool = False
    triton_repo: Path | None = None
    bench_seconds: float = 1.0

    @property
    def out_dir(self) -> Path:
        return self.out or Path("build") / f"{self.model}-{self.precision}"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxslim", "modelopt", "tensorrt"):
        try:
            out[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    return out


def choose_backend(requested: str) -> tuple[str, str | None]:
    """(backend, note): ``auto`` means TensorRT where TensorRT 11 and a CUDA GPU exist, else ONNX Runtime."""
    from engines.trt import TensorRTUnavailable, cuda_device, import_tensorrt

    if requested == "onnxruntime":
        return "onnxruntime", None
    try:
        import_tensorrt()
        if cuda_device() is None:
            raise TensorRTUnavailable("no CUDA device")
    except TensorRTUnavailable as e:
        if requested == "tensorrt":
            raise PipelineError(f"--backend tensorrt: {e}") from None
        return "onnxruntime", TENSORRT_HINT
    return "tensorrt", None


class _Printer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def stage(self, name: str, skipped: bool, seconds: float, detail: str = "") -> None:
        state = "unchanged, skipped" if skipped else f"{seconds:6.1f} s"
        print(f"[{name:9s}] {state}{'  ' + detail if detail else ''}", flush=True)


def _load_model(opts: BuildOptions):
    if opts.checkpoint is not None:
        return load_checkpoint(opts.checkpoint)
    torch.manual_seed(0)
    return create_model(opts.model).eval()


def run_pipeline(opts: BuildOptions) -> dict[str, Any]:
    """Run every stage for ``opts``; returns the summary (also written to ``summary.json``)."""
    from calibration.dataset import build_calibration_set, check_disjoint

    if opts.precision not in ("fp32", "fp16", "int8"):
        raise PipelineError(f"--precision must be fp32, fp16 or int8, got {opts.precision!r}")
    if opts.precision == "int8" and opts.calib_data is None:
        raise PipelineError(
            "--precision int8 needs --calib-data: a folder of a few hundred representative images "
            "(an ImageNet-style class-folder tree, a flat folder with synsets in the file names, or a list file)"
        )
    lo, opt, hi = opts.batch
    if not 1 <= lo <= opt <= hi:
        raise PipelineError(f"--batch must satisfy 1 <= MIN <= OPT <= MAX, got {opts.batch}")
    backend, note = choose_backend(opts.backend)
    if note:
        print(note, flush=True)
    out = opts.out_dir
    versions = _versions()
    printer = _Printer()
    summary: dict[str, Any] = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "backend": backend,
    }

    model = _load_model(opts)
    if opts.checkpoint is None:
        print(
            f"WARNING: no --checkpoint: {opts.model} has RANDOM weights; accuracy numbers mean nothing "
            "and the verify gates are reported, not enforced",
            file=sys.stderr,
            flush=True,
        )
    weights_id = (
        Manifest.hashes({"checkpoint": opts.checkpoint})["checkpoint"] if opts.checkpoint else f"random-init:{opts.model}:seed0"
    )

    with OutputLock(out):
        manifest = Manifest(out)

        # calibration set (cached under OUT/calibration), used by int8, fp16's range check and verify's held-out slice
        calib = None
        if opts.calib_data is not None:
            from calibration.sources import discover

            found = len(discover(opts.calib_data))
            holdout = min(opts.calib_holdout, max(0, found - opts.calib_size))
            if holdout < opts.calib_holdout:
                print(
                    f"[calib    ] {opts.calib_data} has {found} images: {opts.calib_size} calibrate, {holdout} are held out "
                    f"(asked for {opts.calib_holdout})",
                    flush=True,
                )
            calib = build_calibration_set(
                opts.calib_data, model.config.preprocessing, opts.calib_size, holdout=holdout, cache_dir=out / "calibration"
            )
            if opts.eval_data is not None:
                from .verify import eval_samples

                # before any stage runs, not after an int8 build
                check_disjoint(calib, [s.path for s in eval_samples(opts.eval_data, opts.eval_limit)])

        # 1. export
        def do_export():
            from .export import ExportSettings, export_onnx

            result = export_onnx(model, out / "model.onnx", ExportSettings(shift_impl=opts.shift_impl, opset=opts.opset))
            return ["model.onnx"], {"nodes": result.nodes}

        rec, skipped = manifest.run(
            "export",
            {"weights": weights_id},
            {"shift_impl": opts.shift_impl, "opset": opts.opset, "model": model.config.name},
            versions,
            do_export,
            opts.force,
        )
        printer.stage("export", skipped, rec["seconds"], f"model.onnx, {rec.get('nodes')} nodes")
        graph = out / "model.onnx"

        # 2. precision
        if opts.precision != "fp32":
            name = f"model-{opts.precision}.onnx"

            def do_precision():
                from .precision import convert_precision

                report = convert_precision(
                    graph,
                    out / name,
                    opts.precision,
                    None if calib is None else calib.calibration,
                    holdout=None if calib is None else calib.holdout,
                    holdout_labeled=calib is not None and calib.holdout_labeled,
                    calib_method=opts.calib_method,
                    qdq_placement=opts.qdq_placement,
                )
                atomic_write_json(out / f"precision-{opts.precision}.json", report.to_dict())
                return [name, f"precision-{opts.precision}.json"], {"summary": str(report).splitlines()[0]}

            inputs = {"graph": Manifest.hashes({"g": graph})["g"], "calibration": calib.content_hash if calib else None}
            rec, skipped = manifest.run(
                "precision",
                inputs,
                {"precision": opts.precision, "calib_method": opts.calib_method, "qdq_placement": opts.qdq_placement},
                versions,
                do_precision,
                opts.force,
            )
            printer.stage("precision", skipped, rec["seconds"], f"{name}: {rec.get('summary', '')}")
            graph = out / name

        # 3. build
        def do_build():
            if backend == "tensorrt":
                from engines.build import BuildSettings, build_plan

                build_plan(graph, out / "model.plan", BuildSettings(opts.batch, timing_cache=out / "timing.cache"))
                return ["model.plan", "model.json"], None
            from .onnx_runtime import make_session

            target = out / "model.ort.onnx"
            with atomic_path(target) as tmp:
                make_session(graph, optimized_model_path=str(tmp))
            return ["model.ort.onnx"], None

        rec, skipped = manifest.run(
            "build",
            {"graph": Manifest.hashes({"g": graph})["g"]},
            {"backend": backend, "batch": list(opts.batch)},
            versions,
            do_build,
            opts.force,
        )
        artifact = out / ("model.plan" if backend == "tensorrt" else "model.ort.onnx")
        printer.stage("build", skipped, rec["seconds"], f"{artifact.name} for {backend}")

        # 4. verify
        def do_verify():
            from .verify import artifact_precision, load_eval_images, load_runner, verify_arrays, write_report

            if opts.eval_data is not None:
                images, labels, paths = load_eval_images(opts.eval_data, model, opts.eval_limit)
                source = str(opts.eval_data)
            elif calib is not None and len(calib.holdout):
                images = calib.holdout
                index = {n: i for i, n in enumerate(model.config.class_names or ())}
                labels_list = [index.get(x) for x in calib.holdout_labels]
                labels = np.array(labels_list) if labels_list and all(x is not None for x in labels_list) else None
                paths = calib.files[calib.size :]
                source = f"held-out slice of {opts.calib_data}"
            else:
                c, h, w = model.config.preprocessing.input_size
                images = np.random.default_rng(0).standard_normal((16, c, h, w)).astype(np.float32)
                labels, paths, source = None, [f"random-{i}" for i in range(16)], "16 random inputs"
            print(f"[verify   ] on {source}", flush=True)
            result = verify_arrays(
                model,
                load_runner(artifact),
                images,
                labels,
                paths,
                opts.precision if opts.precision != "fp32" else artifact_precision(graph),
            )
            result.provenance.update(data=source, artifact=str(artifact))
            write_report(result, out / "verify.json")
            return ["verify.json", "verify.md", "verify.png"], {"passed": result.passed, "line": str(result).splitlines()[0]}

        inputs = {
            "artifact": Manifest.hashes({"a": artifact})["a"],
            "eval": str(opts.eval_data),
            "calibration": calib.content_hash if calib else None,
        }
        rec, skipped = manifest.run(
            "verify", inputs, {"eval_limit": opts.eval_limit, "precision": opts.precision}, versions, do_verify, opts.force
        )
        printer.stage("verify", skipped, rec["seconds"], rec.get("line", ""))
        verify_report = json.loads((out / "verify.json").read_text())

        # 5. benchmark
        bench_batches = sorted({lo, opt})

        def do_bench():
            from .benchmark import build_parser as bench_parser
            from .benchmark import run as bench_run

            args = [
                "--model",
                model.config.name,
                "--batches",
                *map(str, bench_batches),
                "--iters",
                "5",
                "--min-seconds",
                str(opts.bench_seconds),
                "--gemm-size",
                "1024",
                "--out",
                str(out / "benchmark.json"),
            ]
            args += ["--plan", str(artifact)] if backend == "tensorrt" else ["--onnx", str(artifact)]
            bench_run(bench_parser().parse_args(args))  # errors and Ctrl-C reach build_engine.py's one-line reporter
            return ["benchmark.json", "benchmark.md", "benchmark.png"], None

        with contextlib.redirect_stdout(io.StringIO()):
            rec, skipped = manifest.run(
                "benchmark",
                {"artifact": Manifest.hashes({"a": artifact})["a"]},
                {"batches": bench_batches},
                versions,
                do_bench,
                opts.force,
            )
        printer.stage("benchmark", skipped, rec["seconds"], "benchmark.md")
        bench = json.loads((out / "benchmark.json").read_text())

        # serving export
        if opts.triton_repo is not None:
            from .triton_repo import write_model_repository

            repo = write_model_repository(
                opts.triton_repo,
                f"{model.config.name}_{opts.precision}",
                artifact,
                opts.batch,
                tuple(model.config.preprocessing.input_size),
                model.config.num_classes,
            )
            print(f"[triton   ] model repository {repo}", flush=True)

    summary.update(
        artifacts={p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")},
        gates=verify_report["gates"],
        verify_passed=verify_report["passed"],
        gates_enforced=opts.checkpoint is not None,
        latency=[{k: r[k] for k in ("backend", "batch", "p50_ms", "images_per_s")} for r in bench["rows"]],
        seconds=round(time.perf_counter() - printer.t0, 1),
    )
    atomic_write_json(out / "summary.json", summary)
    _print_summary(out, summary)
    return summary


def _print_summary(out: Path, summary: dict[str, Any]) -> None:
    print(f"\n{out}/  ({summary['backend']}, {summary['seconds']} s)")
    for name, size in summary["artifacts"].items():
        print(f"  {name:28s} {size / 1e6:9.2f} MB")
    enforced = "" if summary["gates_enforced"] else "  (random weights: reported, not enforced)"
    print(f"gates: {'PASS' if summary['verify_passed'] else 'FAIL'}{enforced}")
    for name, g in summary["gates"].items():
        value = "n/a" if g["value"] is None else f"{g['value']:.6g}"
        print(f"  {name:16s} {value:>10s} {g['op']} {g['threshold']}  {'pass' if g['passed'] else 'FAIL'}")
    print("latency:")
    for r in summary["latency"]:
        print(f"  {r['backend']:44s} batch {r['batch']:3d}  p50 {r['p50_ms']:8.2f} ms  {r['images_per_s']:8.1f} img/s")
