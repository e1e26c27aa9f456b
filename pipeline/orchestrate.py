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
openvino   the graph                               ``model.xml`` + ``model.bin`` +
                                                   ``model.openvino.json`` (OpenVINO IR)
verify     every route's artifact, evaluation      ``verify.{json,md,png}``, and
           images                                  ``verify-openvino.*`` for a second route
benchmark  every route's artifact, ``model.onnx``  ``benchmark.{json,md,png}``
========== ======================================= ==========================================

A *route* is a runtime and the artifact it runs here (``Run.routes``); verify judges each
against the gates of the precision, the benchmark times each, and the summary records the
fastest CPU route that passed (``cpu_route``).

The backend (``choose_backend``), for ``auto`` in this order:

1. TensorRT 11, when it imports and a CUDA GPU is present: the plan is built, verified and
   benchmarked here;
2. TensorRT for RTX, when a GPU it supports is present: the same;
3. otherwise a TensorRT for RTX plan built on the CPU: the plan and its sidecar are written,
   and verify and benchmark run the exact ONNX graph the plan was built from, on ONNX Runtime;
4. ONNX Runtime alone where TensorRT for RTX is not installed either.

In cases 3 and 4 (no GPU runs the plan here) an OpenVINO IR is also built from the same graph,
where OpenVINO is installed: the CPU then has two routes, the ONNX graph on ONNX Runtime and
the IR on OpenVINO, each verified against its gates and timed, and ``summary.json`` names the
fastest that passed (``cpu_route``). The plan stays the product (a GPU deployment); the IR is
what a machine without one runs best. An IR that cannot be built here (an int8 graph whose
GEMMs OpenVINO would run in float) is reported in one line and the route is dropped.
``--backend openvino`` builds the IR alone, and then every refusal is an error.
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

from common.fileio import atomic_write_json
from common.fingerprint import HashCache
from common.versions import tool_versions
from deployment.gates import GateResult
from engines.package import (
    BENCHMARK_FILE,
    CALIBRATION_DIR,
    CPU_RUNTIMES,
    FP32_GRAPH,
    IR_FILE,
    MANIFEST_FILE,
    ORT_GRAPH,
    PLAN_FILE,
    SAMPLE_FILE,
    graph_file,
    plan_sidecar_file,
    precision_report_file,
    verify_report_file,
)
from models.args import load_model

from .manifest import Manifest, OutputLock, StageKey
from .options import BuildOptions, PipelineError

__all__ = [
    "Backend",
    "BuildOptions",
    "PipelineError",
    "Run",
    "Stage",
    "STAGES",
    "run_pipeline",
    "choose_backend",
    "Route",
    "TENSORRT_HINT",
    "CPU_BACKENDS",
]

TENSORRT_HINT = (
    "no TensorRT flavour is installed (TensorRT for RTX: `pip install tensorrt-rtx` on Linux or Windows x86_64; "
    "TensorRT 11: `pip install -e .[tensorrt]` on a GPU machine); building for ONNX Runtime instead"
)
OPENVINO_HINT = "OpenVINO is not installed (`pip install openvino`): the CPU route is ONNX Runtime alone"
CPU_BACKENDS = CPU_RUNTIMES


@dataclass(frozen=True)
class Backend:
    """Where the deployed artifact is built and run."""

    name: str  # a TensorRT flavour's name, "onnxruntime" or "openvino"
    runs_plan: bool = False  # a plan is built and this machine runs it
    openvino: bool = False  # an OpenVINO IR is built from the same graph (alone, or as a second CPU route)
    flavour: Any = None  # engines.trt.Flavour where a plan is built

    @property
    def builds_plan(self) -> bool:
        return self.flavour is not None


@dataclass(frozen=True)
class Route:
    """A runtime and the artifact it runs on this machine; ``report`` is its verify report's file name."""

    backend: str
    artifact: Path
    report: str = verify_report_file(0)


def choose_backend(requested: str) -> tuple[Backend, str | None]:
    """(backend, note) for ``auto``, ``tensorrt``, ``tensorrt-rtx``, ``onnxruntime`` or ``openvino`` (the module docstring's order)."""
    from engines.build import choose_flavour
    from engines.openvino import OpenVINOUnavailable, available
    from engines.openvino import openvino_version as _check_openvino
    from engines.trt import TensorRTUnavailable

    if requested == "onnxruntime":
        return Backend("onnxruntime"), None
    if requested == "openvino":
        try:
            _check_openvino()
        except OpenVINOUnavailable as e:
            raise PipelineError(f"--backend openvino: {e}") from None
        return Backend("openvino", openvino=True), None
    try:
        fl, runs = choose_flavour(requested)
    except TensorRTUnavailable as e:
        if requested != "auto":
            raise PipelineError(f"--backend {requested}: {e}") from None
        return Backend("onnxruntime", openvino=available()), TENSORRT_HINT if available() else f"{TENSORRT_HINT}; {OPENVINO_HINT}"
    if requested != "auto" or runs:  # a GPU runs the plan: no CPU route is needed
        return Backend(fl.name, runs, flavour=fl), None
    return Backend(fl.name, runs, openvino=available(), flavour=fl), None if available() else OPENVINO_HINT


@dataclass
class Run:
    """What every stage reads: the options, the model, the output directory, the backend, the calibration set.

    Every path a stage reads or writes follows from the options, so no stage hands a path to the next.
    """

    opts: BuildOptions
    config: Any  # models.S2MLPv2Config: the variant, its preprocessing and class names (no torch needed)
    out: Path
    backend: Backend
    calib: Any  # calibration.dataset.CalibrationSet | None
    weights_id: dict[str, str | None]  # the checkpoint's and its card's hashes, or what the random init was
    hashes: Any = None  # common.fingerprint.HashCache for the evaluation images
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: Any = None  # the PyTorch model, once a stage has needed it
    checked: Any = None  # verify's images, labels, paths and source, once a stage has preprocessed them

    @property
    def model(self):
        """The PyTorch model, loaded on first use: a rerun whose stages are all current never imports torch."""
        if self.loaded is None:
            self.loaded = load_model(self.opts.checkpoint, self.opts.model, warn=False)
        return self.loaded

    @property
    def fp32_graph(self) -> Path:
        return self.out / FP32_GRAPH

    @property
    def graph(self) -> Path:
        """The graph of the deployed precision (what the build stage reads)."""
        return self.fp32_graph if self.opts.precision == "fp32" else self.out / graph_file(self.opts.precision)

    @property
    def ir(self) -> Path:
        """The OpenVINO IR (with ``model.bin`` and ``model.openvino.json`` beside it)."""
        return self.out / IR_FILE

    @property
    def ir_graph(self) -> Path:
        """The graph the IR is built from: the precision stage's, except for fp16 where OpenVINO computes bf16 (or
        f32): then the fp32 graph, which it rounds once (``engines.openvino.source_precision``)."""
        from engines.openvino import cpu_facts, source_precision

        return self.graph if source_precision(self.opts.precision, cpu_facts()[1]) == self.opts.precision else self.fp32_graph

    @property
    def needs_converted_graph(self) -> bool:
        """Whether any artifact is made from the precision stage's graph (not so for an IR alone built from the fp32 one)."""
        return self.opts.precision != "fp32" and (self.backend.name != "openvino" or self.ir_graph == self.graph)

    @property
    def routes(self) -> list[Route]:
        """What verify and benchmark run, the deployed artifact first: the plan where it runs here, its graph
        where it does not, or ORT's graph; then the IR where one was built (``--backend openvino``: the IR alone)."""
        backend, routes = self.backend, []
        if backend.runs_plan:
            routes.append(Route(backend.name, self.out / PLAN_FILE))
        elif backend.builds_plan:
            routes.append(Route("onnxruntime", self.graph))
        elif backend.name == "onnxruntime":
            routes.append(Route("onnxruntime", self.out / ORT_GRAPH))
        if backend.openvino and not self.records.get("openvino", {}).get("refused"):
            routes.append(Route("openvino", self.ir, verify_report_file(len(routes))))
        return routes

    @property
    def artifact(self) -> Path:
        """The deployed artifact as this machine checks it (the first route's)."""
        return self.routes[0].artifact

    def digest(self, path: Path) -> str | None:
        return Manifest.hashes({"p": path})["p"]

    def eval_image_hashes(self) -> dict[str, str] | None:
        """``{image: sha256}`` of the images verify runs on (None without --eval-data): a changed image reruns verify."""
        if self.opts.eval_data is None:
            return None
        from calibration.dataset import eval_samples

        return {str(s.path): self.hashes.sha256(s.path) for s in eval_samples(self.opts.eval_data, self.opts.eval_limit)}


StageOutput = tuple[list[str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Stage:
    """One row of the flow: its function, what decides whether it reruns, and its progress line.

    ``inputs``, ``settings``, ``code`` (the project modules the stage runs: they, every project module
    they import, and this module are fingerprinted, together with the code of the stages before it,
    which made its inputs) and ``tools`` (the tools whose versions shape its output) make its key.
    """

    name: str
    run: Callable[[Run], StageOutput]
    inputs: Callable[[Run], dict[str, Any]]
    settings: Callable[[Run], dict[str, Any]]
    describe: Callable[[Run, dict[str, Any]], str]
    code: Callable[[Run], tuple[str, ...]]
    tools: Callable[[Run], tuple[str, ...]]
    applies: Callable[[Run], bool] = lambda run: True

    def key(self, run: Run, versions: dict[str, str], earlier_code: tuple[str, ...] = ()) -> StageKey:
        """The stage's key; ``earlier_code``: the ``code`` of the stages that ran before it."""
        from common.fingerprint import code_fingerprint, file_fingerprint

        return StageKey(
            inputs=self.inputs(run),
            settings=self.settings(run),
            code={**file_fingerprint(__file__), **code_fingerprint((*earlier_code, *self.code(run)))},
            tools={tool: versions[tool] for tool in self.tools(run) if tool in versions},
        )


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
        keep_fp32=opts.keep_fp32,
        repair=opts.repair,
        verbose=opts.verbose,
    )
    report_name = precision_report_file(opts.precision)
    atomic_write_json(run.out / report_name, report.to_dict())
    repairs = [f"{r['module']}: {r['repair']}" for r in report.repairs]
    return [run.graph.name, report_name], {"summary": str(report).splitlines()[0], "repairs": repairs}


def build_stage(run: Run) -> StageOutput:
    if not run.backend.builds_plan:
        from engines.ort import build_optimized_graph

        target = build_optimized_graph(run.graph, run.out / ORT_GRAPH)
        return [target.name], None
    from engines.build import BuildSettings, build_plan, log_path, report_path

    settings = BuildSettings(
        run.opts.batch,
        timing_cache=run.out / "timing.cache",
        flavour=run.backend.name,
        compute_capabilities=run.opts.compute_capabilities,
    )
    result = build_plan(run.graph, run.out / PLAN_FILE, settings)
    names = [result.plan.name, plan_sidecar_file(result.plan.name), report_path(result.plan).name, log_path(result.plan).name]
    return names, {"plan": _plan_facts(result)}


def openvino_stage(run: Run) -> StageOutput:
    """The IR from the precision stage's graph. As a second CPU route, a refusal drops the route (one line), not the run."""
    from engines.openvino import IRError, OpenVINOUnavailable, build_ir, cpu_facts, hint_candidates, ir_sidecar_path

    from .ir_hint import choose, measure_hints, record

    try:
        hint, choice = None, None
        candidates = hint_candidates(run.opts.precision, cpu_facts()[1])
        if len(candidates) > 1:  # int8 on a CPU with a 16-bit float: its float parts are chosen by measurement
            images, labeled, source = _hint_images(run)
            print(f"[openvino ] float parts: measuring {' and '.join(candidates)} on {source}", flush=True)
            measured = measure_hints(
                run.ir_graph,
                run.fp32_graph,
                run.opts.precision,
                candidates,
                images,
                labeled,
                _bench_batches(run),
                seconds=run.opts.bench_seconds,
            )
            hint, reason = choose(measured)
            choice = record(measured, hint, reason, source)
            print(f"[openvino ] float parts: {hint}: {reason}", flush=True)
        result = build_ir(run.ir_graph, run.ir, run.opts.precision, hint=hint, hint_choice=choice)
    except (IRError, OpenVINOUnavailable) as e:
        if run.backend.name == "openvino":
            raise
        return [], {"refused": str(e)}
    for note in result.notes:
        print(f"[openvino ] note: {note}", flush=True)
    names = [run.ir.name, run.ir.with_suffix(".bin").name, ir_sidecar_path(run.ir).name]
    return names, {
        "line": result.line,
        "notes": result.notes,
        "computes": result.sidecar.computes,
        "hint": result.sidecar.inference_precision_hint,
        **({"hint_choice": choice} if choice else {}),
    }


def _hint_images(run: Run) -> tuple[np.ndarray, bool, str]:
    """(images, labelled, what they are) for choosing the float-part hint: the calibration set's held-out slice, which
    neither calibration nor verify sees; without one, verify's images."""
    calib = run.calib
    if calib is not None and len(calib.holdout):
        return calib.holdout, calib.holdout_labeled, f"{len(calib.holdout)} held-out calibration images"
    images, labels, _, source = _verify_data(run)
    return images, labels is not None, f"verify's inputs, {source} (no held-out calibration slice)"


def _openvino_settings(run: Run) -> dict[str, Any]:
    from engines.openvino import cpu_facts, openvino_version

    cpu, capabilities = cpu_facts()  # the hint is chosen from them: another CPU may need another IR
    return {
        "precision": run.opts.precision,
        "openvino": openvino_version(),
        "cpu": cpu,
        "capabilities": list(capabilities),
        **({"bench_seconds": run.opts.bench_seconds} if run.opts.precision == "int8" else {}),  # the float-part timing
    }


def _openvino_inputs(run: Run) -> dict[str, Any]:
    found = {run.ir_graph.name: run.digest(run.ir_graph)}
    if run.opts.precision == "int8":  # the float-part hint is measured against the fp32 graph, on these images
        found[FP32_GRAPH] = run.digest(run.fp32_graph)
        found |= {"calibration images": run.calib.content_hash} if run.calib and len(run.calib.holdout) else _checked_images(run)
    return found


def _describe_openvino(run: Run, rec: dict[str, Any]) -> str:
    if rec.get("refused"):
        return f"model.xml not built, the CPU route is ONNX Runtime alone: {rec['refused']}"
    return rec["line"]


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


def _build_code(run: Run) -> tuple[str, ...]:
    return ("engines.build",) if run.backend.builds_plan else ("engines.ort",)


def _runtime_tools(run: Run) -> tuple[str, ...]:
    """The tools that build or run the deployed artifacts."""
    backend = run.backend
    flavour = (backend.flavour.module_name,) if backend.flavour else ()
    return (*flavour, "onnxruntime", *(("openvino",) if backend.openvino else ()))


def _describe_build(run: Run, rec: dict[str, Any]) -> str:
    if not run.backend.builds_plan:
        return f"{run.artifact.name} for onnxruntime"
    line = _plan_line(rec["plan"])
    if not run.backend.runs_plan:  # a plan this machine cannot run is checked through the exact graph it was built from
        line += f"\n[build    ] {_not_executed_line(rec['plan'], run.graph.name)}"
    return line


def _verify_data(run: Run) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """(images, labels, paths, source): the evaluation set, else the calibration set's held-out slice, else random
    inputs; preprocessed once per build (verify and the check sample share them)."""
    if run.checked is None:
        run.checked = _load_verify_data(run)
    return run.checked


def _load_verify_data(run: Run) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    from calibration.dataset import load_images

    opts, config, calib = run.opts, run.config, run.calib
    if opts.eval_data is not None:
        images, labels, paths = load_images(opts.eval_data, config.preprocessing, opts.eval_limit, config.class_names)
        return images, labels, paths, str(opts.eval_data)
    if calib is not None and len(calib.holdout):
        index = {n: i for i, n in enumerate(config.class_names or ())}
        found = [index.get(x) for x in calib.holdout_labels]
        labels = np.array(found) if found and all(x is not None for x in found) else None
        return calib.holdout, labels, calib.files[calib.size :], f"held-out slice of {opts.calib_data}"
    c, h, w = config.preprocessing.input_size
    images = np.random.default_rng(0).standard_normal((16, c, h, w)).astype(np.float32)
    return images, None, [f"random-{i}" for i in range(16)], "16 random inputs"


def verify_stage(run: Run) -> StageOutput:
    """Every route against the gates of the precision, on the same images; the first route's verdict is the run's."""
    from deployment.deployed import artifact_precision, load_runner

    from .verify import verify_arrays, write_report

    images, labels, paths, source = _verify_data(run)
    print(f"[verify   ] on {source}", flush=True)
    precision = run.opts.precision if run.opts.precision != "fp32" else artifact_precision(run.graph)
    outputs, routes = [], []
    for route in run.routes:
        result = verify_arrays(run.model, load_runner(route.artifact), images, labels, paths, precision)
        result.provenance.update(data=source, artifact=str(route.artifact))
        report = run.out / route.report
        write_report(result, report)
        outputs += [report.name, report.with_suffix(".md").name, report.with_suffix(".png").name]
        routes.append(
            {
                "backend": route.backend,
                "artifact": route.artifact.name,
                "report": report.name,
                "passed": result.passed,
                "line": str(result).splitlines()[0],
            }
        )
    return outputs, {"passed": routes[0]["passed"], "line": routes[0]["line"], "routes": routes}


def _describe_verify(run: Run, rec: dict[str, Any]) -> str:
    lines = [rec.get("line", "")]
    for route in rec.get("routes", [])[1:]:
        verdict = "gates pass" if route["passed"] else "gates FAIL"
        lines.append(f"[verify   ] {route['line']}: {verdict} ({route['report'].removesuffix('.json')}.md)")
    return "\n".join(lines)


def benchmark_stage(run: Run) -> StageOutput:
    from .benchmark import BenchmarkSettings, benchmark

    settings = BenchmarkSettings(batches=_bench_batches(run), iters=5, min_seconds=run.opts.bench_seconds, gemm_size=1024)
    artifacts = [route.artifact for route in run.routes]
    plans = [a for a in artifacts if a.suffix == ".plan"]
    graphs = [a for a in artifacts if a.suffix == ".onnx"]
    irs = [a for a in artifacts if a.suffix == ".xml"]
    # every row is also compared with the fp32 graph on the same runtime
    reference = run.fp32_graph if run.fp32_graph not in artifacts else None
    verified = [run.out / route.report for route in run.routes]
    with contextlib.redirect_stdout(io.StringIO()):  # the stage line says it; benchmark.md holds the table
        benchmark(run.model, run.out / BENCHMARK_FILE, settings, graphs, plans, reference, openvino=irs, verified=verified)
    bench = run.out / BENCHMARK_FILE
    return [bench.name, bench.with_suffix(".md").name, bench.with_suffix(".png").name], None


def sample_stage(run: Run) -> StageOutput:
    """The package's check sample: a few dozen evaluation images, spread over the set, with PyTorch fp32's logits."""
    import torch

    from engines.package import SAMPLE_SIZE, CheckSample, write_sample

    images, _, paths, source = _verify_data(run)
    picked = sorted({int(i) for i in np.linspace(0, len(images) - 1, min(SAMPLE_SIZE, len(images)))})
    files = [Path(paths[i]) for i in picked]
    with torch.no_grad():
        logits = run.model(torch.from_numpy(images[picked])).numpy()
    if all(f.is_file() for f in files):  # the images themselves: the check runs the target's preprocessing on them
        sample = CheckSample(tuple(f"{f.parent.name}/{f.name}" for f in files), logits, tuple(f.read_bytes() for f in files))
    else:  # random inputs: the tensors
        sample = CheckSample(tuple(paths[i] for i in picked), logits, tensors=images[picked])
    write_sample(run.out / SAMPLE_FILE, sample)
    return [SAMPLE_FILE], {"images": len(picked), "source": source}


def _checked_images(run: Run) -> dict[str, Any]:
    """What verify and the check sample are taken from (``_verify_data``), by content."""
    return {"evaluation images": run.eval_image_hashes(), "calibration images": run.calib.content_hash if run.calib else None}


def _route_digests(run: Run) -> dict[str, Any]:
    return {route.artifact.name: run.digest(route.artifact) for route in run.routes}


def _bench_batches(run: Run) -> tuple[int, ...]:
    lo, opt, _ = run.opts.batch
    return tuple(sorted({lo, opt}))


def _gates(run: Run) -> dict[str, Any]:
    from dataclasses import asdict

    from deployment.gates import GATES

    found = {kind: [asdict(g) for g in gates] for kind, gates in GATES[run.opts.precision].items()}
    if run.opts.precision == "fp16":  # a route that computes in bf16 is judged by bf16's gates
        found |= {f"bf16 {kind}": [asdict(g) for g in gates] for kind, gates in GATES["bf16"].items()}
    return found


STAGES: tuple[Stage, ...] = (
    Stage(
        "export",
        export_stage,
        inputs=lambda run: dict(run.weights_id),
        settings=lambda run: {"shift_impl": run.opts.shift_impl, "opset": run.opts.opset, "model": run.config.name},
        describe=lambda run, rec: f"model.onnx, {rec.get('nodes')} nodes",
        code=lambda run: ("pipeline.export",),
        tools=lambda run: ("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime"),
    ),
    Stage(
        "precision",
        precision_stage,
        inputs=lambda run: {
            FP32_GRAPH: run.digest(run.fp32_graph),
            "calibration images": run.calib.content_hash if run.calib else None,
        },
        settings=lambda run: {
            "precision": run.opts.precision,
            "calib_method": run.opts.calib_method,
            "qdq_placement": run.opts.qdq_placement,
            "repair": run.opts.repair,
            "keep_fp32": list(run.opts.keep_fp32),
        },
        describe=lambda run, rec: "\n".join(
            [f"{run.graph.name}: {rec.get('summary', '')}", *(f"[precision] repaired {r}" for r in rec.get("repairs", []))]
        ),
        code=lambda run: ("pipeline.precision", "calibration.dataset"),
        tools=lambda run: ("modelopt", "onnx", "onnxruntime", "onnxslim", "numpy", "timm", "pillow"),
        applies=lambda run: run.needs_converted_graph,
    ),
    Stage(
        "build",
        build_stage,
        inputs=lambda run: {run.graph.name: run.digest(run.graph)},
        settings=_build_settings,
        describe=_describe_build,
        code=_build_code,
        tools=_runtime_tools,
        applies=lambda run: run.backend.name != "openvino",
    ),
    Stage(
        "openvino",
        openvino_stage,
        inputs=_openvino_inputs,
        settings=_openvino_settings,
        describe=_describe_openvino,
        code=lambda run: ("engines.openvino", "pipeline.ir_hint"),
        tools=lambda run: ("openvino",),
        applies=lambda run: run.backend.openvino,
    ),
    Stage(
        "verify",
        verify_stage,
        inputs=lambda run: {**_route_digests(run), **_checked_images(run)},
        settings=lambda run: {"eval_limit": run.opts.eval_limit, "precision": run.opts.precision, "gates": _gates(run)},
        describe=_describe_verify,
        code=lambda run: ("pipeline.verify", "deployment.deployed", "calibration.dataset"),
        tools=lambda run: ("torch", "numpy", "timm", "pillow", *_runtime_tools(run)),
    ),
    Stage(
        "sample",
        sample_stage,
        inputs=lambda run: {**dict(run.weights_id), **_checked_images(run)},
        settings=lambda run: {"eval_limit": run.opts.eval_limit},
        describe=lambda run, rec: (
            f"{SAMPLE_FILE}: {rec.get('images')} images from {rec.get('source')}, with PyTorch fp32's logits"
        ),
        code=lambda run: ("engines.package", "calibration.dataset"),
        tools=lambda run: ("torch", "numpy", "timm", "pillow"),
    ),
    Stage(
        "benchmark",
        benchmark_stage,
        inputs=_route_digests,
        settings=lambda run: {"batches": list(_bench_batches(run)), "reference": FP32_GRAPH, "seconds": run.opts.bench_seconds},
        describe=lambda run, rec: "benchmark.md",
        code=lambda run: ("pipeline.benchmark",),
        tools=lambda run: ("torch", "numpy", *_runtime_tools(run)),
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
    config, model = _model_config(opts)
    out = opts.out_dir(config.name)
    if model is None and (opts.force or not (out / MANIFEST_FILE).is_file()):
        model = load_model(opts.checkpoint, opts.model, warn=False)  # a new build: the weights are checked before any file
    versions = tool_versions()
    with OutputLock(out):
        manifest = Manifest(out)
        hashes = HashCache(out / ".hashes.json")
        run = Run(opts, config, out, backend, _calibration(opts, config, out), _weights_id(opts), hashes, loaded=model)
        earlier_code: tuple[str, ...] = ()
        for stage in STAGES:
            if not stage.applies(run):
                continue
            key = stage.key(run, versions, earlier_code)
            earlier_code += stage.code(run)

            def starting(reason: str, stage=stage) -> None:
                if reason != "not run before":
                    print(f"[{stage.name:9s}] reran: {reason}", flush=True)

            rec, reason = manifest.run(stage.name, key, lambda stage=stage: stage.run(run), opts.force, starting)
            hashes.save()
            run.records[stage.name] = rec
            state = "unchanged, skipped" if reason is None else f"{rec['seconds']:6.1f} s"
            print(f"[{stage.name:9s}] {state}  {stage.describe(run, rec)}", flush=True)
        from engines.package import PACKAGE_FILE, SUMMARY_FILE

        summary = _summary(run, time.perf_counter() - t0)
        package = _write_package(run, summary)
        summary["artifacts"] = dict(sorted({**summary["artifacts"], PACKAGE_FILE: package.stat().st_size}.items()))
        atomic_write_json(out / SUMMARY_FILE, summary)
        if opts.triton_repo is not None:  # from the package, as a user's repository from a shipped build
            from deployment.triton_repo import write_package_repository

            for folder, served in write_package_repository(opts.triton_repo, out):
                print(f"[triton   ] model repository {folder} ({served})", flush=True)
    _print_summary(out, summary)
    return summary


def _model_config(opts: BuildOptions) -> tuple[Any, Any]:
    """(the model's config, the model where it had to be loaded to know it): from the checkpoint's card or the
    registry, without torch; a checkpoint without a card is loaded, since its variant is read from its weights."""
    if opts.checkpoint is None:
        from models.args import warn_random_weights
        from models.config import get_variant

        warn_random_weights(opts.model, "the model")
        return get_variant(opts.model), None
    from models.card import read_card

    card = read_card(opts.checkpoint)
    if card is None:
        model = load_model(opts.checkpoint, opts.model)
        return model.config, model
    return card.config, None


def _weights_id(opts: BuildOptions) -> dict[str, str | None]:
    """The checkpoint and the card beside it, by content (the card decides preprocessing); or the random init."""
    if opts.checkpoint is None:
        return {"weights": f"random-init:{opts.model}:seed0"}
    from models.card import card_path_for

    return Manifest.hashes({"checkpoint": opts.checkpoint, "checkpoint card": card_path_for(opts.checkpoint)})


def _calibration(opts: BuildOptions, config, out: Path):
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
        config.preprocessing,
        opts.calib_size,
        holdout=holdout,
        seed=opts.calib_seed,
        cache_dir=out / CALIBRATION_DIR,
        labels_file=opts.labels,
    )
    if opts.eval_data is not None:  # before any stage runs, not after an int8 build
        check_disjoint(calib, [s.path for s in eval_samples(opts.eval_data, opts.eval_limit)])
    return calib


def _summary(run: Run, seconds: float) -> dict[str, Any]:
    opts, out, backend = run.opts, run.out, run.backend
    verify_report = json.loads((out / verify_report_file(0)).read_text())
    bench = json.loads((out / BENCHMARK_FILE).read_text())
    keys = (
        "backend",
        "kind",
        "precision",
        "batch",
        "p50_ms",
        "images_per_s",
        "speedup_vs_eager",
        "speedup_vs_eager_same_precision",
        "speedup_vs_fp32_graph",
        "note",
    )
    summary: dict[str, Any] = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "backend": backend.name,
    }
    if backend.builds_plan:
        summary.update(plan=run.records["build"]["plan"], plan_executed=backend.runs_plan, verified_artifact=run.artifact.name)
    summary.update(
        model={"name": run.config.name, "checkpoint": str(opts.checkpoint) if opts.checkpoint else None},
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
    if "openvino" in run.records:
        summary["openvino"] = {k: run.records["openvino"].get(k) for k in ("line", "refused", "computes")}
    summary.update(_cpu_routes(run, bench))
    return summary


def _route_batch(run: Run) -> int:
    """The batch at which routes are compared: the profile's OPT where the benchmark timed it, else the largest timed."""
    return run.opts.batch[1] if run.opts.batch[1] in _bench_batches(run) else max(_bench_batches(run))


def _route_p50(bench: dict[str, Any], artifact: str, runtime: str, batch: int) -> float | None:
    """The benchmark's p50 of ``artifact`` on ``runtime`` at ``batch``, or None where it was not timed."""
    row = next(
        (r for r in bench["rows"] if r.get("artifact") == artifact and r.get("runtime") == runtime and r["batch"] == batch),
        None,
    )
    return row["p50_ms"] if row else None


def _cpu_routes(run: Run, bench: dict[str, Any]) -> dict[str, Any]:
    """``cpu_routes``: each CPU route's verdict and p50 at the profile's OPT batch; ``cpu_route``: the fastest that passed.

    ``cpu_route`` (``{"backend", "artifact", ...}``, or None when no CPU route passed or none
    was checked here) is what a deployment on a machine without a GPU should load.
    """
    batch = _route_batch(run)
    routes = []
    for route in run.records["verify"].get("routes", []):
        if route["backend"] not in CPU_BACKENDS:
            continue
        routes.append(
            {
                "backend": route["backend"],
                "artifact": route["artifact"],
                "passed": route["passed"],
                "report": route["report"],
                "line": route["line"],
                "batch": batch,
                "p50_ms": _route_p50(bench, route["artifact"], route["backend"], batch),
            }
        )
    timed = [r for r in routes if r["passed"] and r["p50_ms"] is not None]
    best = min(timed, key=lambda r: r["p50_ms"]) if timed else None
    if best is not None:
        best = {
            **best,
            "speedup_vs": {
                f"{r['backend']} ({r['artifact']})": r["p50_ms"] / best["p50_ms"] for r in routes if r is not best and r["p50_ms"]
            },
        }
        best = {k: v for k, v in best.items() if k not in ("passed", "report", "line")}
    return {"cpu_routes": routes, "cpu_route": best} if routes else {}


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


def _print_cpu_route(summary: dict[str, Any]) -> None:
    routes = summary.get("cpu_routes")
    if not routes or (len(routes) == 1 and routes[0]["passed"]):
        return  # one CPU route that passed is the artifact above
    best = summary.get("cpu_route")
    if best is None:
        print("\n== cpu route: none; no CPU route passed its gates")
    else:
        faster = ", ".join(f"{v:.2f}x {k}" for k, v in best["speedup_vs"].items())
        print(
            f"\n== cpu route: {best['backend']} ({best['artifact']}), the fastest CPU route that passed its gates: "
            f"{best['p50_ms']:.2f} ms at batch {best['batch']}{'; ' + faster if faster else ''}"
        )
    for r in routes:
        if not r["passed"]:
            print(f"  {r['backend']} ({r['artifact']}) failed its gates ({r['report'].removesuffix('.json')}.md): not used")


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
    elif summary["backend"] == "onnxruntime":
        print(f"  {summary['artifact']}: an ONNX Runtime graph optimized for this machine")
    if "openvino" in summary:
        ir = summary["openvino"]
        print(f"  {ir['line']}" if ir.get("line") else f"  model.xml not built: {ir['refused']}")

    seen = summary["verified_on"]
    if summary["gates_enforced"]:
        verdict = "PASS" if summary["verify_passed"] else "FAIL"
    else:
        verdict = "not judged (random weights)"
    print(f"\n== right: gates: {verdict}, on {seen['images']} images ({_short(seen['data'])})")
    if seen["reference_top1"] is not None:
        print(f"  top-1: PyTorch fp32 {seen['reference_top1'] * 100:.2f} %, deployed {seen['deployed_top1'] * 100:.2f} %")
    for metric, g in summary["gates"].items():
        print(f"  {GateResult.from_dict({'metric': metric, **g}).text(judged=summary['gates_enforced'])}")
    for r in summary.get("cpu_routes", []):
        if r["artifact"] != summary["artifact"]:  # a second CPU route, judged by the same gates
            print(
                f"  {r['artifact']}: {r['line']}: gates {'pass' if r['passed'] else 'FAIL'} ({r['report'].removesuffix('.json')}.md)"
            )

    print(f"\n== fast: p50 latency on {summary['cpu']}")
    for r in summary["latency"]:
        ratios = [
            f"{r[k]:.2f}x {label}"
            for k, label in (
                ("speedup_vs_fp32_graph", "the fp32 graph"),
                ("speedup_vs_eager_same_precision", f"eager {r['precision']}"),
                ("speedup_vs_eager", "eager fp32"),
            )
            if r.get(k) is not None
            and r[k] == r[k]
            and not (k == "speedup_vs_eager" and r.get("speedup_vs_eager_same_precision"))
            and not (r.get("kind") == "eager" and r["precision"] == "fp32")
        ]
        print(
            f"  {r['backend']:44s} batch {r['batch']:3d}  {r['p50_ms']:8.2f} ms  {r['images_per_s']:8.1f} img/s  {', '.join(ratios)}"
        )
    for note in dict.fromkeys(f"  note: {r['note']}" for r in summary["latency"] if r.get("note")):
        print(note)
    _print_cpu_route(summary)
    print(f"\nfiles: {', '.join(summary['artifacts'])}  (details: summary.json, verify.md, benchmark.md)")


# ----------------------------------------------------------------------------- the package


def _write_package(run: Run, summary: dict[str, Any]) -> Path:
    """``package.json``: the build directory's contract (``engines.package``), from what the stages recorded."""
    from common.onnx_meta import CARD_KEY, load_onnx, read_metadata
    from engines.package import IR_WEIGHTS, Package, PackageRoute, ir_sidecar_file, write_package
    from models.shift import EXPORT_FORMS

    opts, out, backend = run.opts, run.out, run.backend
    props = read_metadata(load_onnx(run.fp32_graph, PipelineError))
    tools = tool_versions()
    bench = json.loads((out / BENCHMARK_FILE).read_text())
    batch = _route_batch(run)
    checked = {r["artifact"]: r for r in run.records["verify"].get("routes", [])}

    def verdict(artifact: str, gate: str) -> dict[str, Any] | None:
        r = checked.get(artifact)
        return None if r is None else {"passed": r["passed"], "report": r["report"], "line": r["line"], "gate": gate}

    def latency(artifact: str, runtime: str) -> dict[str, Any] | None:
        p50 = _route_p50(bench, artifact, runtime, batch)
        return None if p50 is None else {"batch": batch, "p50_ms": p50}

    routes: list[PackageRoute] = []
    if backend.builds_plan:
        from engines.sidecar import read_sidecar

        sc = read_sidecar(out / PLAN_FILE)
        routes.append(
            PackageRoute(
                sc.flavour,
                PLAN_FILE,
                (PLAN_FILE, plan_sidecar_file()),
                sc.precision,
                sc.precision,
                needs={
                    "runtime_version": sc.flavour_version,
                    "compute_capabilities": list(sc.compute_capabilities),
                    "version_compatible": sc.version_compatible,
                },
                verdict=verdict(PLAN_FILE, sc.precision) if backend.runs_plan else None,
                latency=latency(PLAN_FILE, sc.flavour) if backend.runs_plan else None,
            )
        )
    for route in run.routes:
        name = route.artifact.name
        if route.backend not in CPU_BACKENDS:
            continue
        if route.backend == "openvino":
            from engines.openvino import read_ir_sidecar

            ir = read_ir_sidecar(route.artifact)
            needs = {
                "runtime_version": ir.openvino_version,
                "hint": ir.inference_precision_hint,
                "cpu": ir.cpu,
                "cpu_capabilities": list(ir.optimization_capabilities),
            }
            files = (name, IR_WEIGHTS, ir_sidecar_file(name))
            computes = ir.computes
        else:
            needs = {"runtime_version": tools.get("onnxruntime")}
            if name == ORT_GRAPH:  # ONNX Runtime's own optimized form is specific to the machine it was saved on
                needs["cpu"] = summary.get("cpu")
            files, computes = (name,), opts.precision
        routes.append(
            PackageRoute(
                route.backend,
                name,
                files,
                opts.precision,
                computes,
                needs,
                verdict(name, opts.precision),
                latency(name, route.backend),
            )
        )
    cpu_route = (summary.get("cpu_route") or {}).get("artifact")
    if cpu_route:  # the recorded CPU route first among the CPU routes, after the plan
        routes.sort(key=lambda r: (not r.on_gpu, r.artifact != cpu_route))
    # every graph of a build has the export's shift form (precision conversion keeps it): only standard ops are portable
    standard = opts.shift_impl == EXPORT_FORMS[0]
    graph = next((g for g in (graph_file(opts.precision), FP32_GRAPH) if standard and (out / g).is_file()), None)
    from engines.openvino import available, cpu_facts

    c, h, w = run.config.preprocessing.input_size
    package = Package(
        directory=out,
        card=json.loads(props[CARD_KEY]),
        precision=opts.precision,
        batch_profile=tuple(opts.batch),
        input_shape=(c, h, w),
        routes=tuple(routes),
        files={},
        cpu_route=cpu_route,
        graph=graph,
        sample={"file": SAMPLE_FILE, "images": run.records["sample"].get("images"), "reference": "pytorch fp32"},
        built={
            "cpu": summary.get("cpu"),
            "cpu_capabilities": list(cpu_facts()[1]) if available() else None,
            "tools": tools,
            "gates_enforced": summary.get("gates_enforced"),
        },
    )
    return write_package(package)
