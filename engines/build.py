"""Build a TensorRT plan (TensorRT 11 or TensorRT for RTX) from an ONNX graph whose precision is already set.

``python -m engines.build --onnx model-fp16.onnx --plan model.plan --batch 1,8,32``

Parse (every parser error reported) -> configure (dynamic-batch profile, workspace limit, the
flavour's own settings from ``engines.trt``: compute-capability targets or the timing cache,
compatibility flags, detailed profiling) -> build -> save the plan, its sidecar, the build log
and a build report. There are no precision flags: both flavours take precision from the graph.
A build whose sidecar key matches an existing plan is skipped.

TensorRT for RTX builds on the CPU; TensorRT 11 needs the GPU the plan is for. The build
report (``<plan>-build.json``) lists the plan's kernels as the builder's log names them: how
many there are, how many are plugin kernels, and how many fused the shift's gathers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.cli import HelpFormatter, command
from common.errors import S2MLPv2Error, UsageError
from common.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

from .package import DEFAULT_BATCH_PROFILE
from .shift_node import ONNX_DOMAIN
from .sidecar import EngineMismatchError, Sidecar, read_sidecar, sidecar_path
from .trt import FLAVOURS, TENSORRT, TENSORRT_RTX, Flavour, TensorRTUnavailable, cuda_device, flavour

__all__ = [
    "BuildSettings",
    "BuildResult",
    "EngineBuildError",
    "build_plan",
    "choose_flavour",
    "kernel_report",
    "parse_batch",
    "parse_compute_capabilities",
    "planned_sidecar",
    "report_path",
    "reusable",
]


class EngineBuildError(S2MLPv2Error, RuntimeError):
    """Parsing or building failed; the message lists the parser's or builder's errors."""


@dataclass(frozen=True)
class BuildSettings:
    batch: tuple[int, int, int] = DEFAULT_BATCH_PROFILE  # min, opt, max
    workspace_mb: int = 4096
    timing_cache: Path | None = Path("build/timing.cache")  # TensorRT 11 only
    version_compatible: bool = False
    hardware_compatible: bool = False  # TensorRT 11 only: any Ampere or newer GPU
    flavour: str = TENSORRT.name
    compute_capabilities: tuple[str, ...] | None = None  # TensorRT for RTX targets; None: its default set

    def __post_init__(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise UsageError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.batch}")
        flavour(self.flavour)  # an unknown name is an error here, not in the middle of a build


@dataclass
class BuildResult:
    plan: Path
    reused: bool
    sidecar: Sidecar
    report: dict[str, Any] = field(default_factory=dict)  # kernels and build seconds (report_path(plan))


def parse_batch(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--batch takes MIN,OPT,MAX (e.g. 1,8,32), got {text!r}") from None
    if len(values) != 3:
        raise UsageError(f"--batch takes MIN,OPT,MAX (e.g. 1,8,32), got {text!r}")
    return values  # type: ignore[return-value]


def parse_compute_capabilities(text: str | None) -> tuple[str, ...] | None:
    """``"8.6,8.9"`` -> ``("8.6", "8.9")``; ``None``/empty -> None (the builder's default set)."""
    if not text:
        return None
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or not all(re.fullmatch(r"\d+\.\d", v) for v in values):
        raise UsageError(f"--compute-capability takes a comma-separated list like 8.6,8.9; got {text!r}")
    return values


def choose_flavour(requested: str = "auto") -> tuple[Flavour, bool]:
    """(flavour, runs here) for ``auto``, ``tensorrt`` or ``tensorrt-rtx``.

    ``auto``: TensorRT 11 where it imports and a GPU exists; else TensorRT for RTX (which builds
    without a GPU; it runs the plan only on a GPU it supports).
    """
    if requested == "auto":
        if TENSORRT.importable() and TENSORRT.gpu_here() is not None:
            return TENSORRT, True
        requested = TENSORRT_RTX.name
    fl = flavour(requested)
    fl.module()  # raises TensorRTUnavailable with the install hint
    runs = fl.gpu_here() is not None
    if not runs and not fl.builds_without_gpu:
        raise TensorRTUnavailable(f"no CUDA device: building a {fl.title} plan needs an NVIDIA GPU")
    return fl, runs


def _graph_facts(onnx_path: Path) -> tuple[tuple[int, int, int], str, bool, dict[str, Any] | None]:
    """(input C, H, W; precision; has plugin nodes; the model card or None) of a graph."""
    from common.onnx_meta import CARD_KEY, graph_precision, load_onnx, read_metadata

    model = load_onnx(onnx_path, EngineBuildError)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] if model.graph.input else []
    if len(dims) != 4 or 0 in dims[1:]:
        raise EngineBuildError(f"{onnx_path}: input must be (batch, C, H, W) with static C, H, W; got {dims}")
    has_plugin = any(n.domain == ONNX_DOMAIN for n in model.graph.node)
    card = read_metadata(model).get(CARD_KEY)
    return tuple(dims[1:]), graph_precision(model), has_plugin, json.loads(card) if card else None  # type: ignore[return-value]


def planned_sidecar(onnx_path: Path, settings: BuildSettings, version: str, gpu: tuple[str, str] | None) -> Sidecar:
    """The sidecar a build with these settings would write (its key decides reuse)."""
    fl = flavour(settings.flavour)
    shape, precision, has_plugin, card = _graph_facts(onnx_path)
    return Sidecar(
        flavour=fl.name,
        flavour_version=version,
        gpu_name=gpu[0] if gpu and not fl.builds_without_gpu else None,
        compute_capabilities=fl.targets(settings.compute_capabilities, gpu),
        onnx_sha256=sha256_file(onnx_path),
        plugin_sha256=fl.plugin_sha256() if has_plugin else None,
        plugin_source=fl.plugin_source if has_plugin else None,
        batch_profile=settings.batch,
        input_shape=shape,
        precision=precision,
        version_compatible=settings.version_compatible,
        hardware_compatible=settings.hardware_compatible and fl.hardware_compatibility,
        workspace_bytes=settings.workspace_mb << 20,
        card=card,
    )


def report_path(plan_path: str | Path) -> Path:
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.stem + "-build.json")


def log_path(plan_path: str | Path) -> Path:
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.stem + "-build.log")


def reusable(plan_path: Path, wanted: Sidecar) -> bool:
    """True when ``plan_path`` exists, is the plan its sidecar describes, and that sidecar's key equals the planned build's."""
    if not (Path(plan_path).is_file() and sidecar_path(plan_path).is_file()):
        return False
    try:
        existing = read_sidecar(plan_path)
        existing.check_plan(plan_path)
    except EngineMismatchError:  # unreadable, foreign or stale: rebuild
        return False
    return existing.key() == wanted.key()


# TensorRT for RTX's detailed build log: "Name: <layer>, LayerType: <type>, Inputs: ...".
_RTX_LAYER = re.compile(r"^Name: (?P<name>[^,]+), LayerType: (?P<type>[^,]+)")
# TensorRT 10's verbose log: "Layer(<type>): <layer>, Tactic: ...". TensorRT 11 is expected to
# print the same; that has not been checked here, where TensorRT 11 cannot be installed.
_TRT_LAYER = re.compile(r"^Layer\((?P<type>[^)]+)\): (?P<name>[^,]+), Tactic:")
_NOT_KERNELS = {"shape_call", "NoOp", "Reformat-free"}
_PLUGIN_TYPES = {"custom_layer", "PluginV3", "PluginV2"}


def kernel_report(log_lines: Sequence[str]) -> dict[str, Any]:
    """What the builder made, from its detailed log: kernels in all, by type, plugin kernels, fused shift kernels.

    A *fused shift kernel* is a generated kernel whose name shows a ``Gath`` (the standard-form
    shift's Gather) merged with other ops; in the plugin form each shift is a plugin kernel.
    """
    kernels: dict[str, str] = {}
    for line in log_lines:
        for part in line.splitlines():
            m = _RTX_LAYER.match(part.strip()) or _TRT_LAYER.match(part.strip())
            if m and m["type"] not in _NOT_KERNELS:
                kernels[m["name"]] = m["type"]  # the layer table can be printed more than once
    by_type = Counter(kernels.values())
    fused = [n for n, t in kernels.items() if "Gath" in n and t not in _PLUGIN_TYPES]
    return {
        "kernels": len(kernels),
        "plugin_kernels": sum(by_type[t] for t in _PLUGIN_TYPES),
        "fused_shift_kernels": len(fused),
        "by_type": dict(sorted(by_type.items())),
        "names": sorted(kernels),
    }


def _progress_monitor(trt):
    from tqdm import tqdm

    class TqdmMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, tqdm] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.bars[phase_name] = tqdm(
                total=num_steps, desc=phase_name, leave=False, file=sys.stderr, position=len(self.bars), disable=None
            )

        def step_complete(self, phase_name, step):
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step - bar.n + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmMonitor()


def _parser_message(error) -> str:
    """``node NAME (OP): description``, on one line."""
    desc = " ".join(str(error.desc()).split())
    name = getattr(error, "node_name", lambda: "")()
    op = getattr(error, "node_operator", lambda: "")()
    return f"node {name} ({op}): {desc}" if name or op else desc


def _parse(fl: Flavour, builder, logger, onnx_path: Path, has_plugin: bool):
    trt = fl.module()
    fl.prepare_plugin(has_plugin)  # for TensorRT for RTX, also what keeps a plugin node from aborting the parser
    network = builder.create_network(fl.network_flags(has_plugin))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_message(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"{fl.title} could not parse {onnx_path}: " + "; ".join(dict.fromkeys(errors or ["no error reported"]))
        )
    return network, parser


def build_plan(onnx_path: str | Path, plan_path: str | Path, settings: BuildSettings = BuildSettings()) -> BuildResult:
    """Build (or reuse) ``plan_path`` with ``settings.flavour``; writes the plan, its sidecar, build log and report."""
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    fl = flavour(settings.flavour)
    trt = fl.module()
    gpu = cuda_device()
    if gpu is None and not fl.builds_without_gpu:
        raise TensorRTUnavailable(f"no CUDA device: building a {fl.title} plan needs an NVIDIA GPU")
    wanted = planned_sidecar(onnx_path, settings, trt.__version__, gpu)
    if reusable(plan_path, wanted):
        report = json.loads(report_path(plan_path).read_text()) if report_path(plan_path).is_file() else {}
        return BuildResult(plan_path, True, read_sidecar(plan_path), report)

    t0 = time.perf_counter()
    logger = fl.logger()
    builder = trt.Builder(logger)
    network, _parser = _parse(fl, builder, logger, onnx_path, wanted.plugin_sha256 is not None)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    c, h, w = wanted.input_shape
    lo, opt, hi = settings.batch
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(profile)
    cache = settings.timing_cache
    fl.configure(
        config,
        wanted.compute_capabilities,
        cache.read_bytes() if cache and cache.is_file() else b"",
        settings.version_compatible,
        settings.hardware_compatible,
    )
    config.progress_monitor = _progress_monitor(trt)

    serialized = builder.build_serialized_network(network, config)
    log_text = "\n".join(f"[{str(sev).split('.')[-1]}] {msg}" for sev, msg in logger.messages)
    if serialized is None:
        atomic_write_text(log_path(plan_path), log_text)
        errors = "; ".join(dict.fromkeys(logger.errors())) or f"see {log_path(plan_path)}"
        raise EngineBuildError(f"{fl.title} failed to build a plan from {onnx_path}: {errors}")
    plan_bytes = bytes(serialized)
    seconds = round(time.perf_counter() - t0, 2)
    report = {
        "flavour": fl.name,
        "version": trt.__version__,
        "compute_capabilities": list(wanted.compute_capabilities),
        "seconds": seconds,
        "plan_bytes": len(plan_bytes),
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        **kernel_report([msg for _, msg in logger.messages]),
    }
    done = replace(wanted, plan_sha256=hashlib.sha256(plan_bytes).hexdigest())
    atomic_write_text(log_path(plan_path), log_text)
    atomic_write_json(report_path(plan_path), report)
    atomic_write_bytes(plan_path, plan_bytes)
    cache_bytes = fl.timing_cache_bytes(config)
    if cache and cache_bytes is not None:
        atomic_write_bytes(cache, cache_bytes)
    done.write(plan_path)  # last: a plan without its sidecar is never reused or loaded
    return BuildResult(plan_path, False, done, report)


@command()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engines.build",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--onnx", type=Path, required=True, help="graph from pipeline.export / pipeline.precision")
    p.add_argument(
        "--plan", type=Path, required=True, help="output plan; its sidecar (.json), build log and report are written beside it"
    )
    p.add_argument(
        "--flavour",
        choices=("auto", *FLAVOURS),
        default="auto",
        help="auto: TensorRT 11 where it imports and a GPU exists, else TensorRT for RTX (which builds without a GPU)",
    )
    p.add_argument(
        "--compute-capability",
        help="TensorRT for RTX targets, e.g. 8.6,8.9 (default: 8.0,8.6,8.9,12.0; 7.5 and 12.1 on request)",
    )
    p.add_argument("--batch", default=",".join(map(str, DEFAULT_BATCH_PROFILE)), help="dynamic batch profile MIN,OPT,MAX")
    p.add_argument("--workspace-mb", type=int, default=4096)
    p.add_argument("--timing-cache", type=Path, default=Path("build/timing.cache"), help="TensorRT 11 only")
    p.add_argument("--version-compatible", action="store_true", help="plan runs on later runtimes of the same major version")
    p.add_argument("--hardware-compatible", action="store_true", help="TensorRT 11: plan runs on any Ampere or newer GPU")
    args = p.parse_args(argv)
    fl, runs_here = choose_flavour(args.flavour)
    settings = BuildSettings(
        parse_batch(args.batch),
        args.workspace_mb,
        args.timing_cache,
        args.version_compatible,
        args.hardware_compatible,
        fl.name,
        parse_compute_capabilities(args.compute_capability),
    )
    t0 = time.perf_counter()
    result = build_plan(args.onnx, args.plan, settings)
    from .trt import describe_targets

    print(
        f"{'reused' if result.reused else 'built'} {result.plan} with {result.sidecar.title} in {time.perf_counter() - t0:.1f} s"
    )
    print(f"runs on compute capability {describe_targets(result.sidecar.compute_capabilities)}")
    if result.report:
        r = result.report
        print(
            f"kernels: {r['kernels']} ({r['plugin_kernels']} plugin, {r['fused_shift_kernels']} fused shift); details in {report_path(result.plan)}"
        )
    if not runs_here:
        print("not executed on this machine: it has no GPU this flavour runs on")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
