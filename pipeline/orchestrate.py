"""The whole pipeline, stage by stage, into one output directory (what ``build_engine.py`` runs).

The flow is the table ``STAGES``; every stage is a function of one shape, ``(Run) -> (outputs,
record)``: it reads its settings and input paths from the ``Run`` and returns the files it
wrote plus a record for the manifest. ``run_pipeline`` is a loop over that table, which alone
handles the manifest (a stage whose inputs and settings are unchanged is skipped), the lock
(two runs never share a directory) and the progress lines. Every file is written atomically,
and a failed or interrupted stage is never marked done.

========== ======================================= ==========================================
stage      reads                                   writes
========== ======================================= ==========================================
export     the model                               ``model.onnx``
precision  ``model.onnx``, calibration images      ``model-{fp16,int8}.onnx``, ``precision-*.json``
build      the graph                               ``model.plan`` + sidecar, report, log; or
                                                   ``model.ort.onnx`` (ONNX Runtime)
verify     the artifact, evaluation images         ``verify.{json,md,png}``
benchmark  the artifact, ``model.onnx``            ``benchmark.{json,md,png}``
========== ======================================= ==========================================

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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import S2MLPv2Error
from common.fileio import atomic_write_json
from common.versions import tool_versions
from models.args import load_model

from .manifest import Manifest, OutputLock

__all__ = [
    "Backend",
    "BuildOptions",
    "PipelineError",
    "Run",
    "Stage",
    "STAGES",
    "run_pipeline",
    "choose_backend",
    "TENSORRT_HINT",
]

TENSORRT_HINT = (
    "no TensorRT flavour is installed (TensorRT for RTX: `pip install tensorrt-rtx` on Linux or Windows x86_64; "
    "TensorRT 11: `pip install -e .[tensorrt]` on a GPU machine); building for ONNX Runtime instead"
)


class PipelineError(S2MLPv2Error, RuntimeError):
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
    calib_seed: int = 0
    labels: Path | None = None
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

    def check(self) -> None:
        if self.precision not in ("fp32", "fp16", "int8"):
            raise PipelineError(f"--precision must be fp32, fp16 or int8, got {self.precision!r}")
        if self.precision == "int8" and self.calib_data is None:
            raise PipelineError(
                "--precision int8 needs --calib-data: a folder of a few hundred representative images "
                "(an ImageNet-style class-folder tree, a flat folder with synsets in the file names, or a list file)"
            )
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise PipelineError(f"--batch must satisfy 1 <= MIN <= OPT <= MAX, got {self.batch}")


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


@dataclass
class Run:
    """What every stage reads: the options, the model, the output directory, the backend, the calibration set.

    Every path a stage reads or writes follows from the options, so no stage hands a path to the next.
    """

    opts: BuildOptions
    model: Any
    out: Path
    backend: Backend
    calib: Any  # calibration.dataset.CalibrationSet | None
    weights_id: str
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fp32_graph(self) -> Path:
        return self.out / "model.onnx"

    @property
    def graph(self) -> Path:
        """The graph of the deployed precision (what the build stage reads)."""
        return self.fp32_graph if self.opts.precision == "fp32" else self.out / f"model-{self.opts.precision}.onnx"

    @property
    def artifact(self) -> Path:
        """What verify and benchmark run: the plan where it runs here, its graph where it does not, or ORT's graph."""
        if self.backend.runs_plan:
            return self.out / "model.plan"
        return self.graph if self.backend.builds_plan else self.out / "model.ort.onnx"

    def digest(self, path: Path) -> str | None:
        return Manifest.hashes({"p": path})["p"]


StageOutput = tuple[list[str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Stage:
    """One row of the flow: its function, what decides whether it reruns, and its progress line."""

    name: str
    run: Callable[[Run], StageOutput]
    inputs: Callable[[Run], dict[str, Any]]
    settings: Callable[[Run], dict[str, Any]]
    describe: Callable[[Run, dict[str, Any]], str]
    applies: Callable[[Run], bool] = lambda run: True


# ----------------------------------------------------------------------------- the stages


def export_stage(run: Run) -> StageOutput:
    from .export import ExportSettings, export_onnx

    result = export_onnx(run.model, run.fp32_graph, ExportSettings(shift_impl=run.opts.shift_impl, opset=run.opts.opset))
    return [run.fp32_graph.name], {"nodes": result.nodes}


def precision_stage(run: Run) -> StageOutput:
    from .precision import calibration_inputs, convert_precision

    opts = run.opts
    report = convert_precision(
        run.fp32_graph,
        run.graph,
        opts.precision,
        **calibration_inputs(run.calib),
        calib_method=opts.calib_method,
        qdq_placement=opts.qdq_placement,
    )
    report_name = f"precision-{opts.precision}.json"
    atomic_write_json(run.out / report_name, report.to_dict())
    return [run.graph.name, report_name], {"summary": str(report).splitlines()[0]}


def build_stage(run: Run) -> StageOutput:
    if not run.backend.builds_plan:
        from .onnx_runtime import build_optimized_graph

        target = build_optimized_graph(run.graph, run.out / "model.ort.onnx")
        return [target.name], None
    from engines.build import BuildSettings, build_plan, log_path, report_path

    settings = BuildSettings(
        run.opts.batch,
        timing_cache=run.out / "timing.cache",
        flavour=run.backend.name,
        compute_capabilities=run.opts.compute_capabilities,
    )
    result = build_plan(run.graph, run.out / "model.plan", settings)
    names = [result.plan.name, "model.json", report_path(result.plan).name, log_path(result.plan).name]
    return names, {"plan": _plan_facts(result)}


def _build_settings(run: Run) -> dict[str, Any]:
    settings: dict[str, Any] = {"backend": run.backend.name, "batch": list(run.opts.batch)}
    if run.backend.builds_plan:
        from engines.trt import flavour

        fl = flavour(run.backend.name)
        settings.update(
            version=fl.version(),
            compute_capabilities=list(fl.targets(run.opts.compute_capabilities, fl.gpu_here())),
            plugin=fl.plugin_sha256() if run.opts.shift_impl == "plugin" else None,
        )
    return settings


def _describe_build(run: Run, rec: dict[str, Any]) -> str:
    if not run.backend.builds_plan:
        return f"{run.artifact.name} for onnxruntime"
    line = _plan_line(rec["plan"])
    if not run.backend.runs_plan:  # a plan this machine cannot run is checked through the exact graph it was built from
        line += f"\n[build    ] {_not_executed_line(rec['plan'], run.graph.name)}"
    return line


def _verify_data(run: Run) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """(images, labels, paths, source): the evaluation set, else the calibration set's held-out slice, else random inputs."""
    from calibration.dataset import load_images

    opts, model, calib = run.opts, run.model, run.calib
    if opts.eval_data is not None:
        images, labels, paths = load_images(opts.eval_data, model.config.preprocessing, opts.eval_limit, model.config.class_names)
        return images, labels, paths, str(opts.eval_data)
    if calib is not None and len(calib.holdout):
        index = {n: i for i, n in enumerate(model.config.class_names or ())}
        found = [index.get(x) for x in calib.holdout_labels]
        labels = np.array(found) if found and all(x is not None for x in found) else None
        return calib.holdout, labels, calib.files[calib.size :], f"held-out slice of {opts.calib_data}"
    c, h, w = model.config.preprocessing.input_size
    images = np.random.default_rng(0).standard_normal((16, c, h, w)).astype(np.float32)
    return images, None, [f"random-{i}" for i in range(16)], "16 random inputs"


def verify_stage(run: Run) -> StageOutput:
    from .verify import artifact_precision, load_runner, verify_arrays, write_report

    images, labels, paths, source = _verify_data(run)
    print(f"[verify   ] on {source}", flush=True)
    precision = run.opts.precision if run.opts.precision != "fp32" else artifact_precision(run.graph)
    result = verify_arrays(run.model, load_runner(run.artifact), images, labels, paths, precision)
    result.provenance.update(data=source, artifact=str(run.artifact))
    write_report(result, run.out / "verify.json")
    return ["verify.json", "verify.md", "verify.png"], {"passed": result.passed, "line": str(result).splitlines()[0]}


def benchmark_stage(run: Run) -> StageOutput:
    from .benchmark import BenchmarkSettings, benchmark

    artifact = run.artifact
    settings = BenchmarkSettings(batches=_bench_batches(run), iters=5, min_seconds=run.opts.bench_seconds, gemm_size=1024)
    plans = [artifact] if artifact.suffix == ".plan" else []
    graphs = [] if plans else [artifact]
    # every row is also compared with the fp32 graph on the same runtime
    reference = run.fp32_graph if artifact != run.fp32_graph else None
    with contextlib.redirect_stdout(io.StringIO()):  # the stage line says it; benchmark.md holds the table
        benchmark(run.model, run.out / "benchmark.json", settings, graphs, plans, reference)
    return ["benchmark.json", "benchmark.md", "benchmark.png"], None


def _int8_defaults() -> dict[str, bool]:
    from .precision import int8_defaults

    return int8_defaults()


def _bench_batches(run: Run) -> tuple[int, ...]:
    lo, opt, _ = run.opts.batch
    return tuple(sorted({lo, opt}))


STAGES: tuple[Stage, ...] = (
    Stage(
        "export",
        export_stage,
        inputs=lambda run: {"weights": run.weights_id},
        settings=lambda run: {"shift_impl": run.opts.shift_impl, "opset": run.opts.opset, "model": run.model.config.name},
        describe=lambda run, rec: f"model.onnx, {rec.get('nodes')} nodes",
    ),
    Stage(
        "precision",
        precision_stage,
        inputs=lambda run: {"graph": run.digest(run.fp32_graph), "calibration": run.calib.content_hash if run.calib else None},
        settings=lambda run: {
            "precision": run.opts.precision,
            "calib_method": run.opts.calib_method,
            "qdq_placement": run.opts.qdq_placement,
            **(_int8_defaults() if run.opts.precision == "int8" else {}),  # a new int8 default converts again
        },
        describe=lambda run, rec: f"{run.graph.name}: {rec.get('summary', '')}",
        applies=lambda run: run.opts.precision != "fp32",
    ),
    Stage(
        "build",
        build_stage,
        inputs=lambda run: {"graph": run.digest(run.graph)},
        settings=_build_settings,
        describe=_describe_build,
    ),
    Stage(
        "verify",
        verify_stage,
        inputs=lambda run: {
            "artifact": run.digest(run.artifact),
            "eval": str(run.opts.eval_data),
            "calibration": run.calib.content_hash if run.calib else None,
        },
        settings=lambda run: {"eval_limit": run.opts.eval_limit, "precision": run.opts.precision},
        describe=lambda run, rec: rec.get("line", ""),
    ),
    Stage(
        "benchmark",
        benchmark_stage,
        inputs=lambda run: {"artifact": run.digest(run.artifact)},
        settings=lambda run: {"batches": list(_bench_batches(run)), "reference": "model.onnx", "seconds": run.opts.bench_seconds},
        describe=lambda run, rec: "benchmark.md",
    ),
)


# ----------------------------------------------------------------------------- the loop


def run_pipeline(opts: BuildOptions) -> dict[str, Any]:
    """Run every stage of ``STAGES`` for ``opts``; returns the summary (also written to ``summary.json``)."""
    opts.check()
    backend, note = choose_backend(opts.backend)
    if note:
        print(note, flush=True)
    t0 = time.perf_counter()
    model = load_model(opts.checkpoint, opts.model, "the model")
    out = opts.out_dir(model.config.name)
    weights_id = Manifest.hashes({"c": opts.checkpoint})["c"] if opts.checkpoint else f"random-init:{opts.model}:seed0"
    versions = tool_versions()
    with OutputLock(out):
        manifest = Manifest(out)
        run = Run(opts, model, out, backend, _calibration(opts, model, out), weights_id)
        for stage in STAGES:
            if not stage.applies(run):
                continue
            rec, skipped = manifest.run(
                stage.name, stage.inputs(run), stage.settings(run), versions, lambda stage=stage: stage.run(run), opts.force
            )
            run.records[stage.name] = rec
            state = "unchanged, skipped" if skipped else f"{rec['seconds']:6.1f} s"
            print(f"[{stage.name:9s}] {state}  {stage.describe(run, rec)}", flush=True)
        if opts.triton_repo is not None:
            _write_triton_repository(run)
    summary = _summary(run, time.perf_counter() - t0)
    atomic_write_json(out / "summary.json", summary)
    _print_summary(out, summary)
    return summary


def _calibration(opts: BuildOptions, model, out: Path):
    """The calibration set (cached under OUT/calibration) for int8, fp16's range check and verify's held-out slice."""
    if opts.calib_data is None:
        return None
    from calibration.dataset import build_calibration_set, check_disjoint, eval_samples
    from calibration.sources import discover

    found = len(discover(opts.calib_data, opts.labels))
    if found < opts.calib_size:
        raise PipelineError(
            f"{opts.calib_data} has {found} images, fewer than the {opts.calib_size} to calibrate on; "
            f"pass --calib-size {found} or less, or add images"
        )
    holdout = min(opts.calib_holdout, found - opts.calib_size)
    if holdout < opts.calib_holdout:
        print(
            f"[calib    ] {opts.calib_data} has {found} images: {opts.calib_size} calibrate, {holdout} are held out "
            f"(asked for {opts.calib_holdout})",
            flush=True,
        )
    calib = build_calibration_set(
        opts.calib_data,
        model.config.preprocessing,
        opts.calib_size,
        holdout=holdout,
        seed=opts.calib_seed,
        cache_dir=out / "calibration",
        labels_file=opts.labels,
    )
    if opts.eval_data is not None:  # before any stage runs, not after an int8 build
        check_disjoint(calib, [s.path for s in eval_samples(opts.eval_data, opts.eval_limit)])
    return calib


def _write_triton_repository(run: Run) -> None:
    from .triton_repo import write_model_repository

    # Triton's TensorRT backend runs TensorRT 11 plans only: a TensorRT for RTX build serves its ONNX graph
    served = run.graph if run.backend.name == "tensorrt-rtx" else run.artifact
    config = run.model.config
    repo = write_model_repository(
        run.opts.triton_repo,
        f"{config.name}_{run.opts.precision}",
        served,
        run.opts.batch,
        tuple(config.preprocessing.input_size),
        config.num_classes,
    )
    print(f"[triton   ] model repository {repo} ({served.name})", flush=True)


def _summary(run: Run, seconds: float) -> dict[str, Any]:
    opts, out, backend = run.opts, run.out, run.backend
    verify_report = json.loads((out / "verify.json").read_text())
    bench = json.loads((out / "benchmark.json").read_text())
    keys = ("backend", "precision", "batch", "p50_ms", "images_per_s", "speedup_vs_eager", "speedup_vs_eager_same_precision",
            "speedup_vs_fp32_graph", "note")  # fmt: skip
    summary: dict[str, Any] = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "backend": backend.name,
    }
    if backend.builds_plan:
        summary.update(plan=run.records["build"]["plan"], plan_executed=backend.runs_plan, verified_artifact=run.artifact.name)
    summary.update(
        model={"name": run.model.config.name, "checkpoint": str(opts.checkpoint) if opts.checkpoint else None},
        precision=opts.precision,
        artifact=run.artifact.name,
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
        seconds=round(seconds, 1),
    )
    return summary


# ----------------------------------------------------------------------------- what a person reads


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
