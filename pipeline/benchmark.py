"""Latency and throughput of the model on every backend, with the hardware ceiling measured in the same run.

``python -m pipeline.benchmark --model s2mlpv2_small7 --onnx small7.onnx small7-int8.onnx --out bench.json``

For each backend and batch size (default 1, 8, 32) it reports latency p50/p90/p99 and
throughput after warm-up. Backends: torch eager, ``torch.compile`` (``--compile``), ONNX
Runtime for every ``--onnx`` artifact, and TensorRT for every ``--plan`` (CUDA graphs on) where
TensorRT and a GPU exist. The CPU's fp32 GEMM ceiling (ONNX Runtime MatMul, 2048³) and an
int8 ceiling (MatMulInteger, 2048³) are measured in the same run, and each row's achieved
GFLOP/s (2 x MACs x images/s) is given as a fraction of the ceiling of its precision. Ratios
between rows are what to compare; absolute numbers depend on the machine and its load.
Writes JSON, a Markdown table and a PNG plot of latency against batch. ``--rounds N`` repeats
the ceilings and every row N times in turn and reports medians with the spread: use it for
numbers you will quote, since a virtual machine's speed can drift by 10 % within minutes.

Each row is compared with the right baselines: torch eager in fp32 (and in fp16 on a CUDA GPU,
where PyTorch has a fast fp16 path; there is no eager int8), and, with ``--reference-onnx``,
the fp32 graph on the same runtime. Where a precision cannot bring speed on the runtime at
hand, the row says so in a note: ONNX Runtime's CPU provider computes fp16 by casting to fp32,
and int8 gains only as much as the CPU's integer GEMM ceiling (measured in the run) allows.

``--openvino model.xml`` times OpenVINO IRs (``engines.openvino``) the same way. ``--peers``
adds what a user gets without this project, timed in the same run: a plain ``torch.onnx.export``
of the same weights (the model as it is, without the export stage's lowering and cleanup) on
ONNX Runtime and on OpenVINO at each precision hint the CPU runs natively (f32, and bf16 or
f16), beside torch eager; and that graph once more with the runtime settings of our IRs
(threads not pinned), so the fastest peer is never weaker for lacking a setting. Every other row is then compared with the fastest peer at its batch,
and the report names our fastest row that passed its gates (``--verified`` takes verify's
reports; without them the gates are not known here) and its speed-up over that peer.

Rows are timed interleaved: within a round and a batch, the rows take turns of about 0.2 s
(at least one call) until each has its calls and seconds, so a burst of load from elsewhere on
the machine slows every row alike instead of one.

``--profile`` adds ONNX Runtime's per-op profile of every ONNX artifact, and OpenVINO's
per-node profile (``PERF_COUNT``) of every IR, at every batch: the time per op type (for
OpenVINO also the kernel, e.g. ``brgemm_avx512_i8``), and the GEMM-class kernels' own GFLOP/s
(the model's MACs over their time) against the ceiling. That fraction bounds the whole graph's;
the other ops' share is what stands between the two.

``python -m pipeline.benchmark --compare OLD.json NEW.json`` measures nothing: it says per row (runtime and
batch) whether NEW is faster, slower or the same as OLD: the ratio of the rows' p50 latencies (medians over each
run's rounds), faster or slower only when the 95 % bootstrap interval of that ratio over both runs' rounds excludes
1 (run both with ``--rounds 3`` or more, on the same machine). It exits 1 when a row is slower beyond the noise.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cli import HelpFormatter, command
from common.errors import S2MLPv2Error
from common.fileio import atomic_paths, atomic_save_figure, atomic_write_json, atomic_write_text, new_figure
from common.timing import time_fn
from common.versions import cpu_name, tool_versions
from engines.package import DEFAULT_BATCH_PROFILE
from engines.trt import FLAVOURS
from models.args import ModelArgs
from models.s2mlpv2 import count_macs

MODEL_ARGS = ModelArgs(model_help="variant for the torch rows (speed does not depend on the weights)")

__all__ = [
    "BenchmarkError",
    "time_fn",
    "time_interleaved",
    "gemm_ceilings",
    "profile_onnx",
    "plain_export",
    "compare_reports",
    "main",
]


class BenchmarkError(S2MLPv2Error, ValueError):
    """Reports that cannot be compared; the message says what to give."""


# ONNX Runtime kernels that do the model's multiply-adds (fp32 and integer, before and after fusion).
GEMM_OPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "Conv",
        "FusedMatMul",
        "FusedGemm",
        "FusedConv",
        "NhwcFusedConv",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearMatMul",
        "QLinearConv",
        "ConvInteger",
        "QGemm",
    }
)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, iters: int, min_seconds: float = 0.0, slice_seconds: float = 0.2
) -> dict[str, np.ndarray]:
    """Per-call latencies (ms) of every function, taken in turns until each has ``iters`` calls and ``min_seconds``.

    A turn calls one function for ``slice_seconds`` (at least once), so a burst of load from
    elsewhere on the machine slows every function alike and the ratios between them hold on a
    busy machine. The first call of a turn is not counted when the turn has more: the runtime
    before it may still hold the cores (thread pools spin for a while after a call).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    while True:
        pending = [name for name in fns if len(times[name]) < iters or spent[name] < min_seconds]
        if not pending:
            return {name: np.array(t) for name, t in times.items()}
        for name in pending:
            turn: list[float] = []
            while not turn or sum(turn) < slice_seconds:
                t0 = time.perf_counter()
                fns[name]()
                turn.append(time.perf_counter() - t0)
            counted = turn[1:] if len(turn) > 1 else turn
            times[name] += [t * 1e3 for t in counted]
            spent[name] += sum(counted)


def _matmul_graph(n: int, integer: bool):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        b = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
        [b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def gemm_ceilings(n: int = 2048, threads: int | None = None, iters: int = 10, min_seconds: float = 0.0) -> dict[str, float]:
    """GFLOP/s (2 n³ per product) of ONNX Runtime's fp32 MatMul and int8 MatMulInteger on this CPU.

    Each is timed like a row (at least ``iters`` calls and ``min_seconds``), so a ceiling and a
    row average the machine's state over similar spans.
    """
    from engines.ort import make_session

    out = {}
    for key, integer in (("fp32", False), ("int8", True)):
        session = make_session(_matmul_graph(n, integer), threads=threads)
        a = (
            np.random.default_rng(1).integers(0, 255, (n, n), dtype=np.uint8)
            if integer
            else np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
        )
        ms = np.median(time_fn(lambda: session.run(None, {"A": a}), warmup=2, iters=iters, min_seconds=min_seconds))
        out[key] = 2 * n**3 / (ms / 1e3) / 1e9
    return out


def profile_onnx(path: Path, x: np.ndarray, threads: int | None, runs: int = 3) -> dict[str, Any]:
    """Per-op-type kernel time of one ONNX Runtime session on ``x``, from ONNX Runtime's profiler.

    Returns the ops sorted by time (ms per run, share of the kernel total, nodes per run, whether
    the op is a GEMM-class kernel) and the totals. The profiler's own overhead is why these
    runs are not the timed ones.
    """
    import json
    import tempfile

    from engines.ort import make_session

    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        session = make_session(path, threads=threads, profile_prefix=str(Path(tmp) / "profile"))
        feed = {session.get_inputs()[0].name: x.astype(np.float16 if "float16" in session.get_inputs()[0].type else np.float32)}
        session.run(None, feed)  # warm-up, dropped below
        t0 = time.perf_counter()
        for _ in range(runs):
            session.run(None, feed)
        wall_ms = (time.perf_counter() - t0) * 1e3 / runs
        events = json.loads(Path(session.end_profiling()).read_text())
    # each "model_run" event spans one session.run; drop the first (the warm-up)
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    timed = [[e for e in kernels if start <= e["ts"] <= end] for start, end in windows[1:]]
    ms: dict[str, float] = {}
    nodes: dict[str, int] = {}
    for run in timed:
        for e in run:
            op = e["args"]["op_name"]
            ms[op] = ms.get(op, 0.0) + e["dur"] / 1e3 / len(timed)
            nodes[op] = nodes.get(op, 0) + 1
    total = sum(ms.values())
    ops = [
        {"op": op, "ms": t, "share": t / total, "nodes": nodes[op] // len(timed), "gemm": op in GEMM_OPS}
        for op, t in sorted(ms.items(), key=lambda kv: -kv[1])
    ]
    return {"wall_ms": wall_ms, "kernel_ms": total, "gemm_ms": sum(o["ms"] for o in ops if o["gemm"]), "ops": ops}


def plain_export(model, path: Path) -> Path:
    """What a user without this project exports: ``torch.onnx.export`` of the model as it is (dynamic batch, the exporter's defaults)."""
    import contextlib
    import io
    import warnings

    from .export import ExportError

    c, h, w = model.config.preprocessing.input_size
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.randn(2, c, h, w),),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                dynamo=True,
            )
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"the plain torch.onnx.export of the peer rows failed: {str(e).splitlines()[0][:300]}") from e
    return path


def _peer_runners(model, settings: BenchmarkSettings, folder: Path) -> list[tuple[str, str, Callable]]:
    """The peer rows: the plain export on ONNX Runtime, and on OpenVINO at f32 and at the CPU's native 16-bit float."""
    from engines.openvino import available, choose_hint, compile_onnx, cpu_facts
    from engines.ort import OnnxRuntimeRunner

    print("exporting the peers' graph (plain torch.onnx.export) ...", flush=True)
    graph = plain_export(model, folder / "plain.onnx")
    runners = [("peer: torch.onnx.export, onnxruntime fp32", "fp32", OnnxRuntimeRunner(graph, threads=settings.threads))]
    if available():
        _, capabilities = cpu_facts()
        sixteen = choose_hint("fp16", capabilities)[0]
        for hint in dict.fromkeys(("f32", sixteen)):
            runner = compile_onnx(graph, hint, settings.threads)
            runners.append((f"peer: torch.onnx.export, openvino {runner.precision}", runner.precision, runner))
        # the same graph with our IRs' runtime settings (threads not pinned): what is left is the graph and its precision
        runner = compile_onnx(graph, sixteen, settings.threads, pinning=False)
        runners.append((f"peer: torch.onnx.export, openvino {runner.precision}, unpinned", runner.precision, runner))
    return runners


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = new_figure(figsize=(7, 4))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        pts = sorted((r["batch"], r["p50_ms"]) for r in rows if r["backend"] == backend)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=backend)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("p50 latency (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def _half_copy(model):
    import copy

    return copy.deepcopy(model).half().cuda()


def _row_note(row: dict[str, Any], ceilings: dict[str, float], python_shift: bool = False) -> str | None:
    """What a reader must know to judge the row: a stand-in op in it, or a precision that cannot pay off on its runtime."""
    if not row["backend"].startswith("onnxruntime"):
        return None
    if python_shift:
        return (
            "the SpatialShift plugin nodes run through a Python stand-in on ONNX Runtime: this row says nothing "
            "about the plugin's speed, which only a TensorRT plan on a GPU shows"
        )
    if row["precision"] == "fp16":
        return (
            "ONNX Runtime's CPU provider computes fp16 by casting to fp32: no speed-up is possible here; "
            "fp16 pays off on GPUs (TensorRT)"
        )
    if row["precision"] == "int8":
        ratio = ceilings["int8"] / ceilings["fp32"]
        return f"this CPU's int8 GEMM ceiling is {ratio:.1f}x its fp32 one (measured in this run): the most int8 can gain here"
    return None


def _fraction(row: dict[str, Any]) -> str:
    by_round = row["fraction_of_ceiling_by_round"]
    if len(by_round) == 1:
        return f"{row['fraction_of_ceiling'] * 100:.0f} %"
    spread = f"{min(by_round) * 100:.0f}–{max(by_round) * 100:.0f}"
    return f"{row['fraction_of_ceiling'] * 100:.0f} % ({spread}); best {row['fraction_of_ceiling_best'] * 100:.0f} %"


def _speedup(value: float | None) -> str:
    return "–" if value is None or np.isnan(value) else f"{value:.2f}x"  # no such baseline row


def _markdown(result: dict[str, Any]) -> str:
    c = result["ceilings_gflops"]
    rounds = len(result["ceilings_gflops_by_round"])
    lines = [
        f"# Benchmark: {result['model']} on {result['provenance']['cpu']} ({result['provenance']['threads']} threads)",
        "",
        f"Ceilings measured in this run: fp32 GEMM {c['fp32']:.0f} GFLOP/s, int8 GEMM {c['int8']:.0f} GOP/s. "
        f"Model: {result['gmacs_per_image']:.3f} GMAC per image.",
        "",
    ]
    if rounds > 1:
        lines += [
            f"{rounds} rounds, each measuring the ceilings and then every row. p50 and the fraction of the ceiling are "
            "medians over the rounds (each round's fraction uses that round's ceiling); in brackets, the lowest and "
            "highest round. 'best' is the row's fastest round against the highest ceiling: interference only slows a "
            "machine down, so that pair is the least disturbed. p90 and p99 pool every call.",
            "",
        ]
    peers = any(r.get("peer") and r["runtime"] != "torch" for r in result["rows"])
    gates = any(r.get("gates") for r in result["rows"])
    extra = (["gates"] if gates else []) + (["vs fastest peer"] if peers else [])
    lines += [
        "| backend | batch | p50 ms | p90 ms | p99 ms | images/s | GFLOP/s | of ceiling | vs eager fp32 | vs eager, same precision "
        f"| vs fp32 graph, same runtime |{''.join(f' {e} |' for e in extra)}",
        "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for r in result["rows"]:
        cells = ([r.get("gates") or "–"] if gates else []) + ([_speedup(r.get("speedup_vs_fastest_peer"))] if peers else [])
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['images_per_s']:.1f} | {r['gflops']:.0f} | {_fraction(r)} | {_speedup(r['speedup_vs_eager'])} | "
            f"{_speedup(r.get('speedup_vs_eager_same_precision'))} | {_speedup(r.get('speedup_vs_fp32_graph'))} |"
            + "".join(f" {c} |" for c in cells)
        )
    notes = dict.fromkeys(f"- {r['backend']}: {r['note']}" for r in result["rows"] if r.get("note"))
    if notes:
        lines += ["", "Notes:", *notes]
    if result.get("headline"):
        lines += ["", "## Against the fastest peer", ""]
        lines += [_headline_line(h) for h in result["headline"]]
    if result["provenance"].get("openvino_settings"):
        settings = ", ".join(f"{k} {v}" for k, v in result["provenance"]["openvino_settings"].items())
        lines += ["", f"OpenVINO rows of our IRs compile with: {settings}."]
    for prof in result.get("profiles", []):
        kernel = prof.get("runtime") == "openvino"
        tool = "OpenVINO PERF_COUNT" if kernel else "ONNX Runtime profiler"
        lines += [
            "",
            f"## Profile: {prof['artifact']} ({prof['precision']}) on {prof.get('runtime', 'onnxruntime')}, batch {prof['batch']} ({tool})",
            "",
            f"Kernels {prof['kernel_ms']:.1f} ms per run, of which GEMM-class {prof['gemm_ms']:.1f} ms "
            f"({prof['gemm_ms'] / prof['kernel_ms'] * 100:.0f} %). The GEMM kernels alone run at {prof['gemm_gflops']:.0f} "
            f"GFLOP/s = {prof['gemm_fraction_of_ceiling'] * 100:.0f} % of the ceiling: the whole graph cannot do better "
            "than that, and every other op adds to the time on top.",
            "",
            "| op | kernel | ms per run | share | nodes |" if kernel else "| op | ms per run | share | nodes |",
            "|---|---|---|---|---|" if kernel else "|---|---|---|---|",
        ]
        lines += [
            f"| {o['op']}{' (GEMM)' if o['gemm'] else ''} |{' ' + o['kernel'] + ' |' if kernel else ''} {o['ms']:.2f} | "
            f"{o['share'] * 100:.1f} % | {o['nodes']} |"
            for o in prof["ops"]
        ]
    return "\n".join(lines) + "\n"


def _headline_line(h: dict[str, Any]) -> str:
    which = (
        "our fastest artifact that passed its gates" if h["gates"] == "pass" else "our fastest artifact (gates not checked here)"
    )
    return (
        f"- batch {h['batch']}: {which}, {h['ours']}, {h['ours_ms']:.2f} ms; the fastest peer, {h['peer']}, "
        f"{h['peer_ms']:.2f} ms: **{h['speedup']:.2f}x**"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.benchmark",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    MODEL_ARGS.add_to_parser(p)
    p.add_argument("--onnx", type=Path, nargs="*", default=[], help="ONNX artifacts to time with ONNX Runtime")
    p.add_argument(
        "--reference-onnx",
        type=Path,
        help="the fp32 graph the artifacts were made from: timed on ONNX Runtime too, and every row is compared with it",
    )
    p.add_argument("--plan", type=Path, nargs="*", default=[], help="TensorRT plans to time (needs tensorrt and a GPU)")
    p.add_argument(
        "--openvino", type=Path, nargs="*", default=[], help="OpenVINO IRs (model.xml, built by build_engine.py) to time"
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="also time what a user gets without this project: a plain torch.onnx.export of the same weights on ONNX Runtime "
        "and on OpenVINO (f32 and the CPU's native 16-bit float hint); every row is compared with the fastest peer",
    )
    p.add_argument(
        "--verified",
        type=Path,
        nargs="*",
        default=[],
        help="verify reports (JSON) of the artifacts: the headline names our fastest artifact that passed its gates",
    )
    p.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCH_PROFILE))
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compiling Small/7 takes minutes on a CPU)")
    p.add_argument("--no-eager", action="store_true", help="skip the torch eager rows")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile every --onnx artifact (ONNX Runtime's profiler) and every --openvino IR (OpenVINO's PERF_COUNT) at "
        "every batch: time per op type, and the GEMM kernels' own GFLOP/s against the ceiling (what the rest of the graph costs on top)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the ceilings and every row this many times, in turn, and report the medians with the spread of "
        "the fraction of the ceiling, and each row's fastest round against the highest ceiling ('best'): on a shared "
        "or virtual machine one round's ratios can drift by 10 %%",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="timed calls per row (at least)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="keep timing a row at least this long")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch, ONNX Runtime and OpenVINO alike")
    p.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n x n products that measure the ceilings")
    p.add_argument("--out", type=Path, default=Path("benchmark.json"), help="JSON; .md and .png are written beside it")
    p.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("OLD.json", "NEW.json"),
        help="measure nothing: say per row (runtime and batch) whether NEW is faster, slower or the same as OLD, judged "
        "by a bootstrap interval over each run's rounds (both need --rounds 2 or more); exit 1 on a slowdown beyond "
        "the noise",
    )
    return p


@dataclass(frozen=True)
class BenchmarkSettings:
    """How rows are timed: batches, warm-up, calls and seconds per row, threads, the ceilings' size, rounds."""

    batches: tuple[int, ...] = DEFAULT_BATCH_PROFILE
    warmup: int = 3
    iters: int = 10
    min_seconds: float = 1.0
    threads: int = os.cpu_count() or 1
    gemm_size: int = 2048
    rounds: int = 1
    eager: bool = True
    compile: bool = False
    profile: bool = False
    peers: bool = False


def _torch_rows(model, settings: BenchmarkSettings, artifacts: Sequence[Path]) -> list[Row]:
    """PyTorch's rows: eager fp32 (and fp16 on a GPU where an artifact is fp16), and ``torch.compile`` when asked."""
    from deployment.deployed import artifact_precision

    runners: list[Row] = []
    if settings.eager:

        def eager(x, _m=model):
            with torch.inference_mode():
                return _m(torch.from_numpy(x))

        runners.append(Row("torch eager fp32", "fp32", eager, "torch", kind="eager"))
        wants_fp16 = any(artifact_precision(p) == "fp16" for p in artifacts)
        if wants_fp16 and torch.cuda.is_available():  # on a CPU PyTorch has no fast fp16 path: no honest fp16 eager row
            half = _half_copy(model)

            def eager_fp16(x, _m=half):
                with torch.inference_mode():
                    return _m(torch.from_numpy(x).cuda().half()).float().cpu()

            runners.append(Row("torch eager fp16 (cuda)", "fp16", eager_fp16, "torch", kind="eager"))
    if settings.compile:
        compiled = torch.compile(model)

        def comp(x, _m=compiled):
            with torch.inference_mode():
                return _m(torch.from_numpy(x))

        runners.append(Row("torch.compile fp32", "fp32", comp, "torch", kind="compiled"))
    return runners


def benchmark(
    model,
    out: Path,
    settings: BenchmarkSettings = BenchmarkSettings(),
    onnx: Sequence[Path] = (),
    plans: Sequence[Path] = (),
    reference_onnx: Path | None = None,
    openvino: Sequence[Path] = (),
    verified: Sequence[Path] = (),
) -> dict[str, Any]:
    """Time ``model`` in torch and every artifact, write ``out`` (JSON) with its .md and .png (all or none); returns the result.

    ``reference_onnx``, the fp32 graph the artifacts came from, is timed on ONNX Runtime too and
    every row is compared with it. ``openvino``: IRs, timed on OpenVINO. ``verified``: verify's
    reports (JSON), which say which artifacts passed their gates. With ``settings.peers`` the
    peer rows are timed too. Errors and Ctrl-C propagate to the caller's one-line reporter.
    """
    import tempfile

    from deployment.deployed import DeployedError, artifact_precision, load_runner

    torch.set_num_threads(settings.threads)
    for path in [*onnx, *plans, *openvino, *verified, *([reference_onnx] if reference_onnx else [])]:
        if not Path(path).is_file():
            raise DeployedError(f"artifact not found: {path}")
    rows = _torch_rows(model, settings, [*onnx, *plans])
    reference = [reference_onnx] if reference_onnx and reference_onnx not in onnx else []
    for path in [*reference, *onnx, *plans, *openvino]:
        precision = artifact_precision(path)
        runner = load_runner(path, threads=settings.threads)
        shown = getattr(runner, "precision", precision) if runner.backend == "openvino" else precision  # an IR says bf16
        kind = "reference" if reference_onnx is not None and path == Path(reference_onnx) else "artifact"
        label = "tensorrt" if runner.backend in FLAVOURS else runner.backend
        rows.append(Row(f"{label} {shown} ({path.name})", precision, runner, runner.backend, path, kind=kind))
    gates = _gates_by_artifact(verified)
    with tempfile.TemporaryDirectory(prefix="benchmark-peers-") as tmp:
        if settings.peers:
            rows += [
                Row(name, precision, run, run.backend, kind="peer")
                for name, precision, run in _peer_runners(model, settings, Path(tmp))
            ]
        result = _measure(settings, model, rows, gates)
    with atomic_paths(out, out.with_suffix(".md"), out.with_suffix(".png")) as (json_path, md_path, png_path):
        atomic_write_json(json_path, result)
        atomic_write_text(md_path, _markdown(result))
        _plot(result["rows"], png_path)
    return result


@dataclass(frozen=True)
class Row:
    """One timed thing: its name in the table, the precision it is gated at, the callable, the runtime, its file, its kind.

    ``kind``: ``eager`` (PyTorch eager), ``compiled`` (``torch.compile``), ``reference`` (the fp32
    graph the artifacts came from, on ONNX Runtime), ``artifact`` (ours), ``peer`` (a plain
    export: what a user gets without this project). Comparisons find rows by these fields, never
    by their display names.
    """

    name: str
    precision: str
    run: Callable[[np.ndarray], Any]
    runtime: str  # torch, onnxruntime, openvino, tensorrt, tensorrt-rtx
    artifact: Path | None = None
    kind: str = "artifact"

    @property
    def peer(self) -> bool:
        """What a user has without this project: a plain export, or PyTorch eager."""
        return self.kind in ("peer", "eager")


def _gates_by_artifact(reports: Sequence[Path]) -> dict[Path, bool]:
    """{artifact: passed} from verify's JSON reports."""
    import json

    from deployment.deployed import DeployedError

    gates = {}
    for report in reports:
        try:
            data = json.loads(Path(report).read_text())
            gates[Path(data["provenance"]["artifact"]).resolve()] = bool(data["passed"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DeployedError(f"{report} is not a report of python -m pipeline.verify; pass the .json it wrote") from None
    return gates


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's ``args`` -> :func:`benchmark`."""
    settings = BenchmarkSettings(
        batches=tuple(args.batches),
        warmup=args.warmup,
        iters=args.iters,
        min_seconds=args.min_seconds,
        threads=args.threads,
        gemm_size=args.gemm_size,
        rounds=args.rounds,
        eager=not args.no_eager or args.peers,
        compile=args.compile,
        profile=args.profile,
        peers=args.peers,
    )
    model = MODEL_ARGS.load(args, "the benchmark's torch model")
    return benchmark(model, args.out, settings, args.onnx, args.plan, args.reference_onnx, args.openvino, args.verified)


@command()
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        lines, slower = compare_reports(*args.compare)
        print("\n".join(lines))
        return 1 if slower else 0
    for flag, value, least in (
        ("--rounds", args.rounds, 1),
        ("--iters", args.iters, 1),
        ("--warmup", args.warmup, 0),
        ("--batches", min(args.batches), 1),
        ("--threads", args.threads, 1),
    ):
        if value < least:
            parser.error(f"{flag} must be at least {least}, got {value}")
    result = run(args)
    out = args.out
    print(_markdown(result))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return 0


BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def _read_report(path: Path) -> dict[str, Any]:
    import json

    try:
        report = json.loads(Path(path).read_text())
        rows = report["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchmarkError(
            f"{path} is not a report of python -m pipeline.benchmark ({type(e).__name__}); give the .json it wrote"
        ) from None
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path} is not a report of python -m pipeline.benchmark; give the .json it wrote")
    return report


def compare_rows(old: dict[str, Any], new: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """One row of two runs: the ratio of their speeds and a bootstrap interval over their rounds.

    Speed is the inverse of the row's p50 latency in each round; the ratio is old p50 over new p50 (above 1: faster),
    the medians over rounds; resampling each run's rounds with replacement gives its distribution. (The rows'
    fractions of the GEMM ceiling would cancel a machine's drift between runs, but the ceiling is the noisier
    measurement: on a 2-core VM it moved by 35 %% between the rounds of one run while the rows' p50 moved by 3 %%.)"""
    a = np.asarray(old.get("p50_ms_by_round") or [], dtype=np.float64)
    b = np.asarray(new.get("p50_ms_by_round") or [], dtype=np.float64)
    ratio = float(np.median(a) / np.median(b)) if len(a) and len(b) else float("nan")
    row = {"backend": new["backend"], "batch": new["batch"], "old_p50_ms": old["p50_ms"], "new_p50_ms": new["p50_ms"]}
    row["speed_ratio"] = ratio
    if len(a) < 2 or len(b) < 2:
        return {**row, "verdict": "not judged", "why": "fewer than 2 rounds in a run: no spread to judge the noise by"}
    draws = np.median(rng.choice(a, (BOOTSTRAP_SAMPLES, len(a))), 1) / np.median(rng.choice(b, (BOOTSTRAP_SAMPLES, len(b))), 1)
    lo, hi = (float(v) for v in np.quantile(draws, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]))
    verdict = "faster" if lo > 1 else "slower" if hi < 1 else "same"
    return {
        **row,
        "interval": [lo, hi],
        "verdict": verdict,
        "why": f"{CONFIDENCE:.0%} interval of the speed ratio {lo:.3f}..{hi:.3f}",
    }


def compare_reports(old_path: Path, new_path: Path) -> tuple[list[str], bool]:
    """(the comparison as markdown lines, whether any row is slower beyond the noise)."""
    old, new = _read_report(old_path), _read_report(new_path)
    rng = np.random.default_rng(0)
    by_key = {(r["backend"], r["batch"]): r for r in old["rows"]}
    rows = [compare_rows(by_key[(r["backend"], r["batch"])], r, rng) for r in new["rows"] if (r["backend"], r["batch"]) in by_key]
    if not rows:
        raise BenchmarkError(
            f"{old_path} and {new_path} share no row (runtime and batch); compare two runs of the same artifacts"
        )
    lines = [
        f"# Benchmark: {new_path} against {old_path}",
        "",
        "Speed ratio: old p50 over new p50, the medians over each run's rounds; above 1 faster. The verdict needs the "
        f"{CONFIDENCE:.0%} bootstrap interval over the rounds to exclude 1.",
        "",
        "| row | batch | old p50 ms | new p50 ms | speed ratio | interval | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        interval = "–" if "interval" not in r else f"{r['interval'][0]:.3f}..{r['interval'][1]:.3f}"
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['old_p50_ms']:.2f} | {r['new_p50_ms']:.2f} | {r['speed_ratio']:.3f} | "
            f"{interval} | {r['verdict']} |"
        )
    missing = [f"{k[0]} batch {k[1]}" for k in by_key if k not in {(r["backend"], r["batch"]) for r in rows}]
    if missing:
        lines += ["", f"only in {old_path}: {', '.join(missing)}"]
    slower = [r for r in rows if r["verdict"] == "slower"]
    lines += ["", f"{len(slower)} row(s) slower beyond the noise" if slower else "no row slower beyond the noise"]
    return lines, bool(slower)


def _time_rounds(settings: BenchmarkSettings, rows: Sequence[Row], inputs: dict[int, np.ndarray], gflops) -> list:
    """``[(ceilings, {(row, batch): latencies ms})]``, one entry per round.

    Each round measures the ceilings and then every row, interleaved per batch, so a ratio
    within a round shares the machine's state at that time; the medians over rounds are what
    the table reports.
    """
    by_round = []
    for round_ in range(settings.rounds):
        tag = f" (round {round_ + 1} of {settings.rounds})" if settings.rounds > 1 else ""
        print(f"measuring GEMM ceilings ({settings.gemm_size}^3) with {settings.threads} threads{tag} ...", flush=True)
        ceil = gemm_ceilings(settings.gemm_size, threads=settings.threads, min_seconds=settings.min_seconds)
        print(f"  fp32 MatMul {ceil['fp32']:.0f} GFLOP/s, int8 MatMulInteger {ceil['int8']:.0f} GOP/s", flush=True)
        times = {}
        for batch, x in inputs.items():
            measured = time_interleaved(
                {row.name: (lambda run=row.run: run(x)) for row in rows}, settings.warmup, settings.iters, settings.min_seconds
            )
            for name, ms in measured.items():
                times[name, batch] = ms
                p50 = float(np.percentile(ms, 50))
                print(
                    f"  {name:48s} batch {batch:3d}: p50 {p50:8.2f} ms  {batch / (p50 / 1e3):8.1f} img/s  "
                    f"{gflops(batch, p50):6.0f} GFLOP/s",
                    flush=True,
                )
        by_round.append((ceil, times))
    return by_round


def _row(row: Row, batch: int, by_round: list, gflops, gates: dict[Path, bool]) -> dict[str, Any]:
    name, precision = row.name, row.precision
    key = "int8" if precision == "int8" else "fp32"
    p50s = [float(np.percentile(times[name, batch], 50)) for _, times in by_round]
    fractions = [gflops(batch, p50) / ceil[key] for (ceil, _), p50 in zip(by_round, p50s)]
    samples = np.concatenate([times[name, batch] for _, times in by_round])
    p50 = float(np.median(p50s))
    # interference only slows a machine down: the fastest round of the row against the highest ceiling
    # compares the two at their least disturbed
    best = gflops(batch, min(p50s)) / max(ceil[key] for ceil, _ in by_round)
    passed = gates.get(row.artifact.resolve()) if row.artifact is not None else None
    return {
        "backend": name,
        "runtime": row.runtime,
        "artifact": row.artifact.name if row.artifact is not None else None,
        "kind": row.kind,
        "peer": row.peer,
        "gates": None if passed is None else ("pass" if passed else "FAIL"),
        "precision": precision,
        "batch": batch,
        "iters": len(samples),
        "p50_ms": p50,
        "p90_ms": max(p50, float(np.percentile(samples, 90))),
        "p99_ms": max(p50, float(np.percentile(samples, 99))),
        "images_per_s": batch / (p50 / 1e3),
        "gflops": gflops(batch, p50),
        "fraction_of_ceiling": float(np.median(fractions)),
        "fraction_of_ceiling_by_round": fractions,
        "fraction_of_ceiling_best": best,
        "p50_ms_by_round": p50s,
    }


def _compare(rows: list[dict[str, Any]], ceilings: dict[str, float], stand_ins=frozenset()) -> None:
    """Each row against eager fp32, eager in its own precision, the fp32 graph on the same runtime and the fastest peer; plus its note."""

    def find(batch: int, **fields):
        return next((b for b in rows if b["batch"] == batch and all(b[k] == v for k, v in fields.items())), None)

    for r in rows:
        base = find(r["batch"], kind="eager", precision="fp32")
        r["speedup_vs_eager"] = base["p50_ms"] / r["p50_ms"] if base else float("nan")
        same = find(r["batch"], kind="eager", precision=r["precision"])
        r["speedup_vs_eager_same_precision"] = same["p50_ms"] / r["p50_ms"] if same else None
        ref = find(r["batch"], kind="reference")
        same_runtime = ref is not None and ref is not r and ref["runtime"] == r["runtime"]
        r["speedup_vs_fp32_graph"] = ref["p50_ms"] / r["p50_ms"] if same_runtime else None
        peers = [p for p in rows if p["peer"] and p["batch"] == r["batch"]]
        fastest_peer = min(peers, key=lambda p: p["p50_ms"]) if len(peers) > 1 else None  # eager alone is no peer comparison
        r["speedup_vs_fastest_peer"] = fastest_peer["p50_ms"] / r["p50_ms"] if fastest_peer and not r["peer"] else None
        r["note"] = _row_note(r, ceilings, r["backend"] in stand_ins)


def _headline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch: the fastest peer and our fastest row that passed its gates (any of ours where no gates are known)."""
    out = []
    for batch in dict.fromkeys(r["batch"] for r in rows):
        at = [r for r in rows if r["batch"] == batch]
        peers = [r for r in at if r["peer"]]
        ours = [r for r in at if not r["peer"] and r["runtime"] != "torch"]
        judged = any(r["gates"] is not None for r in ours)
        eligible = [r for r in ours if r["gates"] == "pass"] if judged else ours
        if len(peers) < 2 or not eligible:
            continue
        peer, best = min(peers, key=lambda r: r["p50_ms"]), min(eligible, key=lambda r: r["p50_ms"])
        out.append(
            {
                "batch": batch,
                "ours": best["backend"],
                "ours_ms": best["p50_ms"],
                "gates": best["gates"],
                "peer": peer["backend"],
                "peer_ms": peer["p50_ms"],
                "speedup": peer["p50_ms"] / best["p50_ms"],
            }
        )
    return out


def _profiles(settings: BenchmarkSettings, rows: Sequence[Row], inputs, ceilings, gflops) -> list[dict[str, Any]]:
    print("profiling per op (ONNX Runtime's profiler, OpenVINO's PERF_COUNT) ...", flush=True)
    profiles = []
    for row in rows:
        if row.artifact is None or row.runtime not in ("onnxruntime", "openvino"):
            continue
        for batch, x in inputs.items():
            prof = profile_onnx(row.artifact, x, settings.threads) if row.runtime == "onnxruntime" else row.run.profile(x)
            gemm_gflops = gflops(batch, prof["gemm_ms"])
            ceiling = ceilings["int8" if row.precision == "int8" else "fp32"]
            prof.update(
                artifact=row.artifact.name,
                runtime=row.runtime,
                row=row.name,
                precision=row.precision,
                batch=batch,
                gemm_gflops=gemm_gflops,
                gemm_fraction_of_ceiling=gemm_gflops / ceiling,
            )
            profiles.append(prof)
            print(
                f"  {row.name} batch {batch}: GEMM kernels {prof['gemm_ms']:.1f} of {prof['kernel_ms']:.1f} ms "
                f"({prof['gemm_ms'] / prof['kernel_ms']:.0%}), at {gemm_gflops:.0f} GFLOP/s = {gemm_gflops / ceiling:.0%} of the ceiling",
                flush=True,
            )
    return profiles


def _measure(settings: BenchmarkSettings, model, rows: Sequence[Row], gates: dict[Path, bool]) -> dict[str, Any]:
    """Ceilings, timed rows and (with ``profile``) per-op profiles, as the JSON result."""
    macs = count_macs(model)

    def gflops(batch: int, ms: float) -> float:
        """The model's GFLOP/s (2 per multiply-add) at ``batch`` images per ``ms`` milliseconds."""
        return 2 * macs * batch / ms / 1e6

    c, h, w = model.config.preprocessing.input_size
    inputs = {batch: np.random.default_rng(0).standard_normal((batch, c, h, w)).astype(np.float32) for batch in settings.batches}
    by_round = _time_rounds(settings, rows, inputs, gflops)
    ceilings = {key: float(np.median([ceil[key] for ceil, _ in by_round])) for key in ("fp32", "int8")}
    table = [_row(row, batch, by_round, gflops, gates) for batch in settings.batches for row in rows]
    stand_ins = frozenset(row.name for row in rows if getattr(row.run, "python_shift", False))
    _compare(table, ceilings, stand_ins)
    openvino = next((r.run for r in rows if r.runtime == "openvino"), None)
    return {
        "model": model.config.name,
        "gmacs_per_image": macs / 1e9,
        "ceilings_gflops": ceilings,
        "ceilings_gflops_by_round": [ceil for ceil, _ in by_round],
        "rows": table,
        "headline": _headline(table),
        "profiles": _profiles(settings, rows, inputs, ceilings, gflops) if settings.profile else [],
        "provenance": {
            "cpu": cpu_name(),
            "threads": settings.threads,
            "versions": tool_versions(),
            "openvino_settings": openvino.settings if openvino is not None else None,
            "cuda_graphs": any(r.runtime in FLAVOURS for r in rows),
            "host_device_copies_included": True,
            "interleaved": True,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
