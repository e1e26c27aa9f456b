"""Build a TensorRT 11 plan from an ONNX graph whose precision is already set.

``python -m engines.build --onnx model-fp16.onnx --plan model.plan --batch 1,8,32``

Parse (every parser error reported) -> configure (dynamic-batch profile, workspace limit,
timing cache reused across builds, progress bar, optional version/hardware compatibility) ->
build -> save plan + sidecar. There are no precision flags: TensorRT 11 takes precision from
the graph. A build whose sidecar key matches an existing plan is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.cli import report_error
from models.fileio import atomic_write_bytes, sha256_file

from .sidecar import Sidecar, read_sidecar, sidecar_path
from .trt import TensorRTUnavailable, cuda_device, import_tensorrt

__all__ = ["BuildSettings", "EngineBuildError", "build_plan", "plugin_hash", "parse_batch", "planned_sidecar", "reusable"]


class EngineBuildError(RuntimeError):
    """Parsing or building failed; the message lists the parser's or builder's errors."""


@dataclass(frozen=True)
class BuildSettings:
    batch: tuple[int, int, int] = (1, 8, 32)  # min, opt, max
    workspace_mb: int = 4096
    timing_cache: Path | None = Path("build/timing.cache")
    version_compatible: bool = False
    hardware_compatible: bool = False

    def __post_init__(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.batch}")


def parse_batch(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--batch takes MIN,OPT,MAX (e.g. 1,8,32), got {text!r}") from None
    if len(values) != 3:
        raise ValueError(f"--batch takes MIN,OPT,MAX (e.g. 1,8,32), got {text!r}")
    return values  # type: ignore[return-value]


def plugin_hash() -> str:
    """Hash of the plugin's sources: a changed kernel means a plan must be rebuilt."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("plugin.py", "shift_kernel.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()


def _graph_facts(onnx_path: Path) -> tuple[tuple[int, int, int], str, bool]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or 0 in dims[1:]:
        raise EngineBuildError(f"{onnx_path}: input must be (batch, C, H, W) with static C, H, W; got {dims}")
    props = {p.key: p.value for p in model.metadata_props}
    has_plugin = any(n.domain == "s2mlpv2" for n in model.graph.node)
    return tuple(dims[1:]), props.get("s2mlpv2.precision", "fp32"), has_plugin  # type: ignore[return-value]


def planned_sidecar(onnx_path: Path, settings: BuildSettings, tensorrt_version: str, gpu: tuple[str, str]) -> Sidecar:
    shape, precision, has_plugin = _graph_facts(onnx_path)
    return Sidecar(
        tensorrt_version=tensorrt_version,
        gpu_name=gpu[0],
        compute_capability=gpu[1],
        onnx_sha256=sha256_file(onnx_path),
        plugin_sha256=plugin_hash() if has_plugin else None,
        batch_profile=settings.batch,
        input_shape=shape,
        precision=precision,
        version_compatible=settings.version_compatible,
        hardware_compatible=settings.hardware_compatible,
        workspace_bytes=settings.workspace_mb << 20,
    )


def reusable(plan_path: Path, wanted: Sidecar) -> bool:
    """True when ``plan_path`` exists and its sidecar's key equals the planned build's."""
    if not (Path(plan_path).is_file() and sidecar_path(plan_path).is_file()):
        return False
    try:
        return read_sidecar(plan_path).key() == wanted.key()
    except Exception:  # an unreadable sidecar just means: rebuild
        return False


def _progress_monitor(trt):
    from tqdm import tqdm

    class TqdmMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, tqdm] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=False, file=sys.stderr, position=len(self.bars))

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


def build_plan(onnx_path: str | Path, plan_path: str | Path, settings: BuildSettings = BuildSettings()) -> tuple[Path, bool]:
    """Build (or reuse) ``plan_path``; returns ``(plan_path, reused)``."""
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    trt = import_tensorrt()
    gpu = cuda_device()
    if gpu is None:
        raise TensorRTUnavailable("no CUDA device: building a TensorRT plan needs an NVIDIA GPU")
    wanted = planned_sidecar(onnx_path, settings, trt.__version__, gpu)
    if reusable(plan_path, wanted):
        return plan_path, True

    logger = trt.Logger(trt.Logger.WARNING)
    if wanted.plugin_sha256:
        from . import plugin  # noqa: F401  (registers s2mlpv2::SpatialShift)
    builder = trt.Builder(logger)
    flags = 0
    if wanted.plugin_sha256:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors or ["no error reported"]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    c, h, w = wanted.input_shape
    lo, opt, hi = settings.batch
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(profile)
    cache_bytes = settings.timing_cache.read_bytes() if settings.timing_cache and settings.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = _progress_monitor(trt)
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build a plan from {onnx_path}; the builder's log above says why")
    atomic_write_bytes(plan_path, bytes(serialized))
    if settings.timing_cache:
        atomic_write_bytes(settings.timing_cache, bytes(config.get_timing_cache().serialize()))
    wanted.write(plan_path)
    return plan_path, False


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engines.build",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--onnx", type=Path, required=True, help="graph from pipeline.export / pipeline.precision")
    p.add_argument("--plan", type=Path, required=True, help="output plan; its sidecar is written beside it (.json)")
    p.add_argument("--batch", default="1,8,32", help="dynamic batch profile MIN,OPT,MAX")
    p.add_argument("--workspace-mb", type=int, default=4096)
    p.add_argument("--timing-cache", type=Path, default=Path("build/timing.cache"))
    p.add_argument("--version-compatible", action="store_true", help="plan runs on later TensorRT 11.x runtimes")
    p.add_argument("--hardware-compatible", action="store_true", help="plan runs on any Ampere or newer GPU")
    args = p.parse_args(argv)
    try:
        settings = BuildSettings(
            parse_batch(args.batch), args.workspace_mb, args.timing_cache, args.version_compatible, args.hardware_compatible
        )
        t0 = time.perf_counter()
        plan, reused = build_plan(args.onnx, args.plan, settings)
    except (TensorRTUnavailable, EngineBuildError, ValueError, OSError) as e:
        return report_error(e)
    print(f"{'reused' if reused else 'built'} {plan} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
