"""The whole pipeline, stage by stage, into one output directory (what ``build_engine.py`` runs).

export -> precision (fp16/int8) -> build (TensorRT plan, or an ONNX Runtime-optimized graph)
-> verify -> benchmark, each recorded in ``manifest.json`` and skipped when its inputs and
settings are unchanged. Every file is written atomically, a lock keeps concurrent runs out, and
a failed or interrupted stage is never marked done.

The backend (``choose_backend``), for ``auto`` in this order:

1. TensorRT 11, when it imports and a CUDA GPU is present: the plan is built, verified and
   benchmarked here;
2. TensorRT for RTX, when a GPU it supports is present: the same;
3. otherwise a TensorRT for RTX plan built on the CPU: the plan and its sidecar are written,
   and verify and benchmark run the exact ONNX graph the plan was built from, on ONNX Runtime;
4. ONNX Runtime alone where TensorRT for RTX is not installed either.
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

__all__ = ["Backend", "BuildOptions", "PipelineError", "run_pipeline", "choose_backend", "TENSORRT_HINT"]

TENSORRT_HINT = (
    "no TensorRT flavour is installed (TensorRT for RTX: `pip install tensorrt-rtx` on Linux or Windows x86_64; "
    "TensorRT 11: `pip install -e .[tensorrt]` on a GPU machine); building for ONNX Runtime instead"
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
    compute_capabilities: tuple[str, ...] | None = None  # TensorRT for RTX targets; None: the builder's default set
    out: Path | None = None
    force: bool = False
    triton_repo: Path | None = None
    bench_seconds: float = 1.0

    def out_dir(self, model_name: str) -> Path:
        return self.out or Path("build") / f"{model_name}-{self.precision}"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxslim", "modelopt", "tensorrt"):
        try:
            out[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    return out


@dataclass(frozen=True)
class Backend:
    """Where the deployed artifact is built and run."""

    name: str  # "tensorrt" | "tensorrt-rtx" | "onnxruntime"
    runs_plan: bool = False  # a plan is built and this machine runs it

    @property
    def builds_plan(self) -> bool:
        return self.name != "onnxruntime"


def choose_backend(requested: str) -> tuple[Backend, str | None]:
    """(backend, note) for ``auto``, ``tensorrt``, ``tensorrt-rtx`` or ``onnxruntime`` (the module docstring's order)."""
    from engines.build import choose_flavour
    from engines.trt import TensorRTUnavailable

    if requested == "onnxruntime":
        return Backend("onnxruntime"), None
    try:
        fl, runs = choose_flavour(requested)
    except TensorRTUnavailable as e:
        if requested != "auto":
            raise PipelineError(f"--backend {requested}: {e}") from None
        return Backend("onnxruntime"), TENSORRT_HINT
    return Backend(fl.name, runs), None


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
    versions = _versions()
    printer = _Printer()
    summary: dict[str, Any] = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "backend": backend.name,
    }

    model = _load_model(opts)
    out = opts.out_dir(model.config.name)
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
            if backend.builds_plan:
                from engines.build import BuildSettings, build_plan, log_path, report_path

                settings = BuildSettings(
                    opts.batch,
                    timing_cache=out / "timing.cache",
                    flavour=backend.name,
                    compute_capabilities=opts.compute_capabilities,
                )
                result = build_plan(graph, out / "model.plan", settings)
                names = ["model.plan", "model.json", report_path(result.plan).name, log_path(result.plan).name]
                return names, {"plan": _plan_facts(result)}
            from .onnx_runtime import make_session

            target = out / "model.ort.onnx"
            with atomic_path(target) as tmp:
                make_session(graph, optimized_model_path=str(tmp))
            return ["model.ort.onnx"], None

        build_settings: dict[str, Any] = {"backend": backend.name, "batch": list(opts.batch)}
        if backend.builds_plan:
            from engines.trt import flavour

            fl = flavour(backend.name)
            build_settings.update(
                version=fl.version(),
                compute_capabilities=list(fl.targets(opts.compute_capabilities, fl.gpu_here())),
                plugin=fl.plugin_sha256() if opts.shift_impl == "plugin" else None,
            )
        rec, skipped = manifest.run(
            "build", {"graph": Manifest.hashes({"g": graph})["g"]}, build_settings, versions, do_build, opts.force
        )
        if backend.builds_plan:
            plan_facts = rec["plan"]
            summary["plan"] = plan_facts
            printer.stage("build", skipped, rec["seconds"], _plan_line(plan_facts))
            # a plan this machine cannot run is checked through the exact graph it was built from
            artifact = out / "model.plan" if backend.runs_plan else graph
            if not backend.runs_plan:
                print(f"[build    ] {_not_executed_line(plan_facts, graph.name)}", flush=True)
        else:
            artifact = out / "model.ort.onnx"
            printer.stage("build", skipped, rec["seconds"], f"{artifact.name} for onnxruntime")

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
            args += ["--plan", str(artifact)] if artifact.suffix == ".plan" else ["--onnx", str(artifact)]
            if artifact != out / "model.onnx":  # every row is also compared with the fp32 graph on the same runtime
                args += ["--reference-onnx", str(out / "model.onnx")]
            bench_run(bench_parser().parse_args(args))  # errors and Ctrl-C reach build_engine.py's one-line reporter
            return ["benchmark.json", "benchmark.md", "benchmark.png"], None

        with contextlib.redirect_stdout(io.StringIO()):
            rec, skipped = manifest.run(
                "benchmark",
                {"artifact": Manifest.hashes({"a": artifact})["a"]},
                {"batches": bench_batches, "reference": "model.onnx"},
                versions,
                do_bench,
                opts.force,
            )
        printer.stage("benchmark", skipped, rec["seconds"], "benchmark.md")
        bench = json.loads((out / "benchmark.json").read_text())

        # serving export
        if opts.triton_repo is not None:
            from .triton_repo import write_model_repository

            # Triton's TensorRT backend runs TensorRT 11 plans only: a TensorRT for RTX build serves its ONNX graph
            served = graph if backend.name == "tensorrt-rtx" else artifact
            repo = write_model_repository(
                opts.triton_repo,
                f"{model.config.name}_{opts.precision}",
                served,
                opts.batch,
                tuple(model.config.preprocessing.input_size),
                model.config.num_classes,
            )
            print(f"[triton   ] model repository {repo} ({served.name})", flush=True)

    if backend.builds_plan:
        summary.update(plan_executed=backend.runs_plan, verified_artifact=artifact.name)
    keys = ("backend", "precision", "batch", "p50_ms", "images_per_s", "speedup_vs_eager", "speedup_vs_eager_same_precision",
            "speedup_vs_fp32_graph", "note")  # fmt: skip
    summary.update(
        model={"name": model.config.name, "checkpoint": str(opts.checkpoint) if opts.checkpoint else None},
        precision=opts.precision,
        artifact=artifact.name,
        artifacts={p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")},
        verified_on={
            "data": verify_report["provenance"].get("data"),
            "images": verify_report["n_images"],
            "reference_top1": verify_report["reference"]["top1"],
            "deployed_top1": verify_report["deployed"]["top1"],
        },
        gates=verify_report["gates"],
        verify_passed=verify_report["passed"],
        gates_enforced=opts.checkpoint is not None,
        latency=[{k: r.get(k) for k in keys} for r in bench["rows"]],
        cpu=bench["provenance"]["cpu"],
        seconds=round(time.perf_counter() - printer.t0, 1),
    )
    atomic_write_json(out / "summary.json", summary)
    _print_summary(out, summary)
    return summary


def _plan_facts(result) -> dict[str, Any]:
    sc, report = result.sidecar, result.report
    return {
        "flavour": sc.flavour,
        "title": sc.title,
        "compute_capabilities": list(sc.compute_capabilities),
        "plugin_source": sc.plugin_source,
        "build_seconds": report.get("seconds"),
        "kernels": report.get("kernels"),
        "plugin_kernels": report.get("plugin_kernels"),
        "fused_shift_kernels": report.get("fused_shift_kernels"),
    }


def _plan_line(plan: dict[str, Any]) -> str:
    from engines.trt import describe_targets

    kernels = f"; {plan['kernels']} kernels ({plan['plugin_kernels']} plugin, {plan['fused_shift_kernels']} fused shift)"
    return f"model.plan: {plan['title']}, runs on compute capability {describe_targets(tuple(plan['compute_capabilities']))}{kernels}"


def _not_executed_line(plan: dict[str, Any], graph_name: str) -> str:
    return (
        f"model.plan was built, not executed on this machine (no GPU that {plan['title'].rsplit(' ', 1)[0]} runs on); "
        f"verify and benchmark run the graph it was built from, {graph_name}, on ONNX Runtime"
    )


def _short(path: str | None) -> str | None:
    """``path`` relative to the working directory where it lies below it."""
    if path is None or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _print_summary(out: Path, summary: dict[str, Any]) -> None:
    """What was built, whether it is right, how fast it is: in that order, for a person reading top-down."""
    from models import SHIPPED_CHECKPOINT

    model = summary["model"]
    if model["checkpoint"] is None:
        weights = "RANDOM weights"
    elif Path(model["checkpoint"]).resolve() == SHIPPED_CHECKPOINT.resolve():
        weights = "the shipped CIFAR-10 checkpoint"
    else:
        weights = f"checkpoint {_short(model['checkpoint'])}"
    print(f"\n== built: {model['name']} ({weights}), {summary['precision']}, in {out}/ ({summary['seconds']} s)")
    if "plan" in summary:
        print(f"  {_plan_line(summary['plan'])}")
        if summary.get("plan_executed") is False:
            print(f"  {_not_executed_line(summary['plan'], summary['verified_artifact'])}")
    else:
        print(f"  {summary['artifact']}: an ONNX Runtime graph optimized for this machine")

    seen = summary["verified_on"]
    if summary["gates_enforced"]:
        verdict = "PASS" if summary["verify_passed"] else "FAIL"
    else:
        verdict = "not judged (random weights)"
    print(f"\n== right: gates: {verdict}, on {seen['images']} images ({_short(seen['data'])})")
    if seen["reference_top1"] is not None:
        print(f"  top-1: PyTorch fp32 {seen['reference_top1'] * 100:.2f} %, deployed {seen['deployed_top1'] * 100:.2f} %")
    for name, g in summary["gates"].items():
        value = "n/a" if g["value"] is None else f"{g['value']:.6g}"
        state = ("pass" if g["passed"] else "FAIL") if summary["gates_enforced"] else ("ok" if g["passed"] else "off")
        print(f"  {name:16s} {value:>10s} {g['op']} {g['threshold']}  {state}")

    print(f"\n== fast: p50 latency on {summary['cpu']}")
    for r in summary["latency"]:
        ratios = [
            f"{r[k]:.2f}x {label}"
            for k, label in (
                ("speedup_vs_fp32_graph", "the fp32 graph"),
                ("speedup_vs_eager_same_precision", f"eager {r['precision']}"),
                ("speedup_vs_eager", "eager fp32"),
            )  # fmt: skip
            if r.get(k) is not None
            and r[k] == r[k]
            and not (k == "speedup_vs_eager" and r.get("speedup_vs_eager_same_precision"))
            and r["backend"] != "torch eager fp32"
        ]
        print(
            f"  {r['backend']:44s} batch {r['batch']:3d}  {r['p50_ms']:8.2f} ms  {r['images_per_s']:8.1f} img/s  {', '.join(ratios)}"
        )
    for note in dict.fromkeys(f"  note: {r['note']}" for r in summary["latency"] if r.get("note")):
        print(note)
    print(f"\nfiles: {', '.join(summary['artifacts'])}  (details: summary.json, verify.md, benchmark.md)")
