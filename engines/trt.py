"""Every TensorRT question, for both flavours, answered in one place.

The project builds and loads plans with two flavours of TensorRT that share one Python API
(``Builder``, ``create_network(0)``, ``OnnxParser``, ``IBuilderConfig``, profiles, ``Runtime``):

======================  ===================================  ========================================
                        TensorRT 11 (``tensorrt``)            TensorRT for RTX 1.x (``tensorrt_rtx``)
======================  ===================================  ========================================
install                 ``pip install -e .[tensorrt]`` (its   a default dependency on Linux and
                        wheels fetch NVIDIA's libraries from  Windows x86_64 (``tensorrt-rtx``, real
                        NVIDIA's own index)                   wheels on PyPI)
building                needs a CUDA GPU; the plan is for     runs on the CPU (ahead-of-time); the plan
                        that GPU's compute capability (or     is for a list of compute capabilities
                        Ampere+ with hardware compatibility)  (default 8.0, 8.6, 8.9, 12.0)
GPUs                    any (H100, H200, B200 included)       8.0, 8.6, 8.9, 12.x, and 7.5 on request:
                                                              A100, A10, L4, L40S, RTX 20-50, RTX PRO;
                                                              not Hopper or Blackwell datacenter GPUs
timing cache            build option, reused across builds    none (the calls are no-ops); a runtime
                                                              cache serves the same purpose when a
                                                              plan is loaded
shift plugin            AOT ``tensorrt.plugin``: the Triton   Python ``IPluginV3`` with an
                        kernel's PTX lives in the plan, so    ``IPluginCreatorV3One`` creator, which
                        C++ runs it with no Python            runs the Triton kernel from Python and
                                                              must be registered before loading
======================  ===================================  ========================================

Networks are strongly typed in both: precision comes from the ONNX graph (there is no FP16 or
INT8 builder flag and no calibrator).

One trap is handled here: when TensorRT for RTX's ONNX parser meets a plugin node, it
``dlopen``s the unversioned ``libtensorrt_rtx.so``, which the wheel does not ship (only
``libtensorrt_rtx.so.1``), and the process aborts with no Python exception. A preload through
``ctypes`` does not help; a ``libtensorrt_rtx.so`` link beside the library does.
:meth:`Flavour.prepare_plugin` makes that link before any plugin graph is parsed, or refuses in
one line when it cannot.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from common.errors import S2MLPv2Error, UsageError

__all__ = [
    "TensorRTUnavailable",
    "Flavour",
    "FLAVOURS",
    "TENSORRT",
    "TENSORRT_RTX",
    "flavour",
    "cuda_device",
    "is_available",
    "RTX_COMPUTE_CAPABILITIES",
    "RTX_DEFAULT_TARGETS",
    "describe_targets",
]


PLUGIN_DIR = Path(__file__).parent  # where the plugins' sources are hashed from


class TensorRTUnavailable(S2MLPv2Error, RuntimeError):
    """A TensorRT flavour or a GPU it can use is missing; the message says how to get them."""


# TensorRT for RTX 1.7's targets, and the set its builder uses when none is given (the docs'
# "portable" default; 7.5 only on request, since a Turing-compatible plan is slower elsewhere).
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")
_GPUS_BY_CC = {
    "7.5": "RTX 20, T4",
    "8.0": "A100, A30",
    "8.6": "A10, A40, RTX 30",
    "8.9": "L4, L40S, RTX 40",
    "12.0": "RTX 50, RTX PRO Blackwell",
    "12.1": "GB10",
}


def describe_targets(targets: tuple[str, ...]) -> str:
    """``"8.0 (A100, A30), 8.6 (...)"``: which GPUs a list of compute capabilities means."""
    return ", ".join(f"{cc} ({_GPUS_BY_CC[cc]})" if cc in _GPUS_BY_CC else cc for cc in targets)


@functools.cache
def cuda_device() -> tuple[str, str] | None:
    """(GPU name, compute capability 'major.minor') of device 0, or None without a CUDA driver and GPU.

    Asked of the CUDA driver itself (``libcuda.so.1`` / ``nvcuda.dll``: ``cuInit``, ``cuDeviceGet``,
    ``cuDeviceGetName``, ``cuDeviceGetAttribute``), so that choosing a runner imports no torch.
    """
    import ctypes
    import ctypes.util

    names = ["libcuda.so.1", "libcuda.so", "nvcuda.dll", ctypes.util.find_library("cuda")]
    driver = None
    for name in filter(None, names):
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if driver is None:
        return None
    device, count = ctypes.c_int(), ctypes.c_int()
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    if driver.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    attribute_major, attribute_minor = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
    if (
        driver.cuDeviceGetName(name, len(name), device) != 0
        or driver.cuDeviceGetAttribute(ctypes.byref(major), attribute_major, device) != 0
        or driver.cuDeviceGetAttribute(ctypes.byref(minor), attribute_minor, device) != 0
    ):
        return None
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


class _CollectingLogger:
    """A TensorRT logger (made per module) that keeps every message instead of printing it."""

    @staticmethod
    def make(trt: ModuleType, severity=None):
        class Collecting(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[tuple[Any, str]] = []
                self.min_severity = trt.ILogger.Severity.VERBOSE if severity is None else severity

            def log(self, sev, msg):
                if int(sev) <= int(self.min_severity):
                    self.messages.append((sev, msg))

            def errors(self) -> list[str]:
                bad = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)
                return [" ".join(m.split()) for s, m in self.messages if s in bad]

        return Collecting()


@dataclass(frozen=True)
class Flavour:
    """One TensorRT flavour: how to import it, what it builds for, how it is configured."""

    name: str  # "tensorrt" | "tensorrt-rtx": the --backend value and the sidecar's flavour
    module_name: str  # also its key in common.versions.tool_versions()
    title: str  # "TensorRT 11": the flavour
    product: str  # "TensorRT": what a version number follows ("TensorRT 11.4.0")
    min_version: tuple[int, int]
    install_hint: str
    builds_without_gpu: bool
    plugin_source: str  # how the shift plugin reaches the plan; recorded in the sidecar
    plugin_files: tuple[str, ...]
    hardware_compatibility: bool  # can build one plan for every Ampere or newer GPU (--hardware-compatible)
    triton_platform: str | None  # the Triton backend platform that serves its plans; None: no Triton backend does

    # --- the module
    def module(self) -> ModuleType:
        return _import(self)

    def importable(self) -> bool:
        try:
            self.module()
        except TensorRTUnavailable:
            return False
        return True

    def version(self) -> str:
        return self.module().__version__

    def logger(self, severity=None):
        """A logger that collects messages (read ``.messages`` / ``.errors()``); VERBOSE by default."""
        return _CollectingLogger.make(self.module(), severity)

    # --- targets
    def supports(self, compute_capability: str) -> bool:
        if self.name == "tensorrt-rtx":
            return compute_capability in RTX_COMPUTE_CAPABILITIES
        return float(compute_capability) >= 7.5

    def gpu_here(self) -> tuple[str, str] | None:
        """This machine's GPU if the flavour can run plans on it, else None."""
        gpu = cuda_device()
        return gpu if gpu is not None and self.supports(gpu[1]) else None

    def targets(self, requested: tuple[str, ...] | None, gpu: tuple[str, str] | None) -> tuple[str, ...]:
        """The compute capabilities a plan is built for."""
        if self.name == "tensorrt":
            if gpu is None:
                raise TensorRTUnavailable("no CUDA device: TensorRT 11 builds a plan on the GPU it is for")
            if requested and tuple(requested) != (gpu[1],):
                raise UsageError(
                    f"TensorRT 11 builds for the GPU it runs on ({gpu[0]}, compute capability {gpu[1]}); "
                    "--compute-capability applies to TensorRT for RTX only"
                )
            return (gpu[1],)
        wanted = tuple(dict.fromkeys(requested)) if requested else RTX_DEFAULT_TARGETS
        unknown = [cc for cc in wanted if cc not in RTX_COMPUTE_CAPABILITIES]
        if unknown:
            raise UsageError(
                f"TensorRT for RTX cannot build for compute capability {', '.join(unknown)}; it targets "
                f"{', '.join(RTX_COMPUTE_CAPABILITIES)} (Hopper and Blackwell datacenter GPUs need TensorRT 11: --backend tensorrt)"
            )
        return tuple(sorted(wanted, key=float))

    def runs_plan_built_for(self, compute_capabilities: tuple[str, ...], hardware_compatible: bool, gpu_cc: str) -> bool:
        """Whether a plan built for ``compute_capabilities`` (hardware-compatible or not) runs on a GPU of ``gpu_cc``."""
        if gpu_cc in compute_capabilities:
            return True
        return self.hardware_compatibility and hardware_compatible and float(gpu_cc) >= 8.0

    def mismatch_fix(self, gpu_cc: str) -> str:
        """What to do with a plan that was not built for this GPU (``gpu_cc``)."""
        if self.name == "tensorrt-rtx":
            if gpu_cc in RTX_COMPUTE_CAPABILITIES:
                return f"rebuild it with --compute-capability {gpu_cc}"
            return "TensorRT for RTX does not support this GPU: build with TensorRT 11 (--backend tensorrt)"
        return "rebuild the plan on this GPU (or build it with --hardware-compatible)"

    # --- building
    def network_flags(self, has_plugin: bool) -> int:
        trt = self.module()
        if has_plugin and self.name == "tensorrt":
            return 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
        return 0

    def configure(
        self, config, targets: tuple[str, ...], timing_cache: bytes, version_compatible: bool, hardware_compatible: bool
    ):
        """Set what differs between the flavours on a builder config."""
        trt = self.module()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the build log then lists every kernel
        if self.name == "tensorrt-rtx":
            config.num_compute_capabilities = len(targets)
            for i, cc in enumerate(targets):
                config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)
            if version_compatible:  # TensorRT for RTX needs both flags together
                config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
                config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
            # hardware_compatibility_level is ignored by TensorRT for RTX: the targets say it all
            return
        config.set_timing_cache(config.create_timing_cache(timing_cache), ignore_mismatch=False)
        if version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if hardware_compatible:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS

    def timing_cache_bytes(self, config) -> bytes | None:
        """The timing cache to keep after a build (None: this flavour has none)."""
        if self.name == "tensorrt-rtx":
            return None
        return bytes(config.get_timing_cache().serialize())

    # --- running
    def execution_context(self, engine, runtime_cache: bytes | None):
        """(context, runtime cache or None): TensorRT for RTX compiles kernels at first run and keeps them in the cache."""
        if self.name != "tensorrt-rtx":
            return engine.create_execution_context(), None
        runtime_config = engine.create_runtime_config()
        cache = runtime_config.create_runtime_cache()
        if runtime_cache:
            cache.deserialize(runtime_cache)
        runtime_config.set_runtime_cache(cache)
        return engine.create_execution_context(runtime_config), cache

    # --- the shift plugin
    def plugin_sha256(self) -> str:
        """Hash of the plugin's sources for this flavour: a changed kernel means a rebuild."""
        h = hashlib.sha256(self.plugin_source.encode())
        for name in self.plugin_files:
            h.update((PLUGIN_DIR / name).read_bytes())
        return h.hexdigest()

    def prepare_plugin(self, has_plugin_nodes: bool = True) -> None:
        """The one rule, before parsing a graph and before loading a plan: where it has shift plugin nodes, register
        the plugin with this flavour (TensorRT for RTX: and make the library link its parser needs); else nothing."""
        if not has_plugin_nodes:
            return
        if self.name == "tensorrt":
            from . import plugin  # noqa: F401  (registers the AOT plugin on import)

            return
        _ensure_unversioned_rtx_library()
        from . import plugin_rtx

        plugin_rtx.register(self.module())


TENSORRT = Flavour(
    name="tensorrt",
    module_name="tensorrt",
    title="TensorRT 11",
    product="TensorRT",
    min_version=(11, 0),
    install_hint="on a machine with an NVIDIA GPU run `pip install -e .[tensorrt]` (its wheels download NVIDIA's libraries from NVIDIA's package index)",
    builds_without_gpu=False,
    plugin_source="aot-ptx: engines/plugin.py compiles engines/shift_kernel.py to PTX stored in the plan",
    plugin_files=("plugin.py", "shift_kernel.py"),
    hardware_compatibility=True,
    triton_platform="tensorrt_plan",
)
TENSORRT_RTX = Flavour(
    name="tensorrt-rtx",
    module_name="tensorrt_rtx",
    title="TensorRT for RTX",
    product="TensorRT for RTX",
    min_version=(1, 7),
    install_hint="`pip install tensorrt-rtx` (Linux and Windows x86_64; a default dependency of this project there)",
    builds_without_gpu=True,
    plugin_source="python-ipluginv3: engines/plugin_rtx.py runs engines/shift_kernel.py; register it before loading the plan",
    plugin_files=("plugin_rtx.py", "shift_kernel.py"),
    hardware_compatibility=False,  # the compute-capability targets say it all
    triton_platform=None,  # Triton's TensorRT backend runs TensorRT plans, not TensorRT for RTX plans
)
FLAVOURS = {f.name: f for f in (TENSORRT, TENSORRT_RTX)}


def flavour(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise UsageError(f"unknown TensorRT flavour {name!r}; choose one of {', '.join(FLAVOURS)}") from None


@functools.cache
def _import(fl: Flavour) -> ModuleType:
    try:
        trt = importlib.import_module(fl.module_name)
    except ImportError as e:
        raise TensorRTUnavailable(f"{fl.title} is not installed ({e}); {fl.install_hint}") from None
    try:
        version = tuple(int(v) for v in trt.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        raise TensorRTUnavailable(
            f"the {fl.module_name} module has no readable version; reinstall it: {fl.install_hint}"
        ) from None
    if version < fl.min_version:
        raise TensorRTUnavailable(
            f"{fl.title} {trt.__version__} is installed, but this project needs {'.'.join(map(str, fl.min_version))} or newer; "
            f"{fl.install_hint}"
        )
    return trt


def _ensure_unversioned_rtx_library() -> None:
    """Make ``libtensorrt_rtx.so`` resolvable, or refuse: without it a plugin graph aborts the process."""
    try:
        import tensorrt_rtx_libs
    except ImportError:  # a TensorRT for RTX SDK rather than the wheels: the SDK ships the link
        return
    folder = Path(tensorrt_rtx_libs.__file__).parent
    link, target = folder / "libtensorrt_rtx.so", folder / "libtensorrt_rtx.so.1"
    if link.exists() or not target.exists():
        return
    for other in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)):
        if (Path(other) / "libtensorrt_rtx.so").exists():
            return
    tmp = folder / f".libtensorrt_rtx.so.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.name)
        os.replace(tmp, link)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TensorRTUnavailable(
            f"TensorRT for RTX's parser needs {link} to load plugin graphs, and it could not be created ({e.strerror}); "
            f"run `ln -s libtensorrt_rtx.so.1 {link}` once, or put such a link in a folder on LD_LIBRARY_PATH before starting Python"
        ) from None


def is_available(name: str = "tensorrt") -> bool:
    """True when the flavour imports and this machine has a GPU it runs plans on."""
    fl = flavour(name)
    return fl.importable() and fl.gpu_here() is not None
