"""C++ against Python on the same OpenVINO artifact, images and compile settings: ``python engines/cpp/bench.py MODEL``.

Times, per batch size (1 and 8 by default), in both languages:

* **pipeline**: image files to top-1 (decode, the card's preprocessing, inference, softmax),
  what ``s2mlpv2_classify`` does; Python decodes and preprocesses with the project's own
  ``common.images`` (Pillow and timm's transform), as the Python side of the project does;
* **decode + preprocess** alone, the part of the pipeline outside OpenVINO;
* **inference**: one preprocessed batch through OpenVINO's synchronous ``infer``.

Both compile the model with the same ``PERFORMANCE_HINT``, ``INFERENCE_NUM_THREADS`` and
``INFERENCE_PRECISION_HINT``. Each round runs, per batch size, ``s2mlpv2_bench`` (C++) and the
Python loop one after the other, alternating which goes first; every call is timed on its own, a
round reports medians, and the table shows the median over rounds with the range of the round
medians. Build
the C++ programs first (``engines/cpp/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from common.cli import HelpFormatter, command  # noqa: E402
from common.errors import S2MLPv2Error  # noqa: E402
from common.images import load_rgb, preprocess  # noqa: E402

# What s2mlpv2_classify runs from a build directory, in this order (engines/cpp/model_files.h).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pnm")  # what the C++ side decodes
CARD_KEY = ["framework", "s2mlpv2.card"]
# What is timed, as s2mlpv2_bench names it, and the table's words for it.
KINDS = (
    ("pipeline_ms", "pipeline (decode + preprocess + infer)"),
    ("prepare_ms", "decode + preprocess"),
    ("infer_ms", "inference only"),
)


class BenchError(S2MLPv2Error, RuntimeError):
    """A missing program, model or image folder, or a C++ run that failed."""


@dataclass
class Settings:
    model: Path
    images: list[Path]
    program: Path
    batches: list[int]
    rounds: int
    iterations: int
    warmup: int
    threads: int
    precision: str
    hint: str

    @property
    def openvino_config(self) -> dict[str, str]:
        config = {"PERFORMANCE_HINT": self.hint, "INFERENCE_NUM_THREADS": str(self.threads)}
        if self.precision != "default":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        return config


def resolve_model(model: Path) -> Path:
    """What OpenVINO runs: a model file as given, or what a package names (as the C++ program reads it, docs/PACKAGE.md)."""
    if model.is_dir():
        from engines.package import Package, PackageError

        try:
            package = Package.read(model)
        except PackageError as e:
            raise BenchError(str(e)) from None
        recorded = package.recorded_cpu_route
        if recorded is not None and (recorded.runtime == "openvino" or recorded.artifact == package.graph):
            return package.path(recorded.artifact)
        route = package.route(runtime="openvino")
        if route is not None:
            return package.path(route.artifact)
        if package.graph:
            return package.path(package.graph)
        raise BenchError(f"{model} holds no model OpenVINO reads; build one with build_engine.py --backend openvino")
    if model.suffix not in (".xml", ".onnx") or not model.is_file():
        raise BenchError(f"{model}: not an .xml or .onnx file; give the artifact OpenVINO runs")
    return model


def list_images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BenchError(f"no images in {folder}; give --images a folder of JPEG or PNG files")
    return images


def _timed(warmup: int, iterations: int, work) -> list[float]:
    times = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        work()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


def run_python(s: Settings, batch: int) -> dict[str, list[float]]:
    """Milliseconds per call of each kind at ``batch``, in Python."""
    import openvino as ov

    from models.card import ModelCard

    core = ov.Core()
    model = core.read_model(str(s.model))
    pre = ModelCard.from_dict(json.loads(model.get_rt_info(CARD_KEY).astype(str)), str(s.model)).preprocessing
    request = core.compile_model(model, "CPU", s.openvino_config).create_infer_request()
    cursor = 0

    def next_paths() -> list[Path]:
        nonlocal cursor
        cursor += batch
        return [s.images[(cursor - batch + i) % len(s.images)] for i in range(batch)]

    def prepare(paths: list[Path]) -> np.ndarray:
        return np.stack([preprocess(load_rgb(p), pre) for p in paths])

    def classify(paths: list[Path]) -> np.ndarray:
        logits = request.infer(prepare(paths))[0]
        exp = np.exp(logits - logits.max(1, keepdims=True))
        return (exp / exp.sum(1, keepdims=True)).argmax(1)

    fixed = prepare(next_paths())
    return {
        "prepare_ms": _timed(s.warmup, s.iterations, lambda: prepare(next_paths())),
        "infer_ms": _timed(s.warmup, s.iterations, lambda: request.infer(fixed)),
        "pipeline_ms": _timed(s.warmup, s.iterations, lambda: classify(next_paths())),
    }


def run_cpp(s: Settings, batch: int) -> tuple[str, dict[str, list[float]]]:
    """(the runtime C++ reports, milliseconds per call of each kind at ``batch``) from s2mlpv2_bench."""
    cmd = [str(s.program), str(s.model), *map(str, s.images)]
    cmd += ["--batches", str(batch), "--iterations", str(s.iterations), "--warmup", str(s.warmup)]
    cmd += ["--threads", str(s.threads), "--inference-precision", s.precision, "--hint", s.hint, "--backend", "openvino"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
        raise BenchError(f"{s.program.name} failed: {last}")
    result = json.loads(proc.stdout)
    return result["runtime"], result["rows"][0]


def bench(s: Settings) -> str:
    """Rounds of both sides, interleaved per batch size (which side goes first alternates); the table as Markdown."""
    from tqdm import tqdm

    medians: dict[tuple[str, int, str], list[float]] = {}
    runtime = ""
    for r in tqdm(range(s.rounds), desc="rounds", file=sys.stderr, disable=None):
        for i, batch in enumerate(s.batches):
            for side in ["C++", "Python"] if (r + i) % 2 == 0 else ["Python", "C++"]:
                if side == "C++":
                    runtime, row = run_cpp(s, batch)
                else:
                    row = run_python(s, batch)
                for kind, _ in KINDS:
                    medians.setdefault((side, batch, kind), []).append(statistics.median(row[kind]))
    return table(s, runtime, medians)


def table(s: Settings, runtime: str, medians: dict[tuple[str, int, str], list[float]]) -> str:
    def cell(side: str, batch: int, kind: str) -> tuple[float, str]:
        rounds = medians[(side, batch, kind)]
        ms = statistics.median(rounds)
        return (
            ms,
            f"{ms / batch:8.3f} ms/img  {1000 * batch / ms:7.1f} img/s  ({min(rounds) / batch:.3f}-{max(rounds) / batch:.3f})",
        )

    lines = [
        f"{s.model.name}, {len(s.images)} images cycled, {s.rounds} rounds x {s.iterations} calls; "
        f"OpenVINO {s.openvino_config}; C++: {runtime}",
        "",
        "| batch | what | C++ | Python | Python / C++ |",
        "|---|---|---|---|---|",
    ]
    for batch in s.batches:
        for kind, title in KINDS:
            cpp_ms, cpp_text = cell("C++", batch, kind)
            py_ms, py_text = cell("Python", batch, kind)
            lines.append(f"| {batch} | {title} | {cpp_text} | {py_text} | {py_ms / cpp_ms:.2f}x |")
    lines.append("")
    lines.append("ms/img: median time of one call / batch (range of the round medians); img/s: batch / median call time")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python engines/cpp/bench.py",
        description="Time s2mlpv2_classify's work in C++ against the same work in Python, on one OpenVINO artifact.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", type=Path, help="a build directory of build_engine.py, or an .xml or .onnx file")
    p.add_argument(
        "--images", type=Path, default=ROOT / "calibration" / "data" / "cifar10-verify", help="folder of images to cycle through"
    )
    p.add_argument("--build", type=Path, default=ROOT / "build" / "cpp", help="the CMake build folder holding s2mlpv2_bench")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of both sides")
    p.add_argument("--iterations", type=int, default=30, help="timed calls per batch size, side and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before them")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="INFERENCE_NUM_THREADS, both sides")
    p.add_argument("--precision", default="f32", help="INFERENCE_PRECISION_HINT, both sides (default: leave it to OpenVINO)")
    p.add_argument("--hint", default="LATENCY", choices=["LATENCY", "THROUGHPUT"], help="PERFORMANCE_HINT, both sides")
    return p


@command()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    program = args.build / "s2mlpv2_bench"
    if not program.is_file():
        raise BenchError(
            f"{program} not found; build it first: cmake -S engines/cpp -B {args.build} && cmake --build {args.build}"
        )
    if min(args.batches + [args.rounds, args.iterations, args.threads]) < 1:
        raise BenchError("--batches, --rounds, --iterations and --threads must be positive")
    settings = Settings(
        resolve_model(args.model),
        list_images(args.images),
        program,
        args.batches,
        args.rounds,
        args.iterations,
        max(args.warmup, 0),
        args.threads,
        args.precision,
        args.hint,
    )
    print(bench(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
