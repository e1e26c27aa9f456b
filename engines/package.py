"""The deployment package: every file of a build directory, written by the build and read by whatever runs it.

``build_engine.py --out DIR`` makes a directory that a user copies to a GPU server, a CPU server, a
container or a C++ application. This module is its contract. The build writes ``package.json``
through :func:`write_package`; the Python API (``deployment.deployed``), classify, serve, loadtest,
the Triton repository writer, ``deployment.check`` and the C++ program (``engines/cpp``, through the
same JSON; docs/PACKAGE.md has the schema) read it through :class:`Package`. No other module names
a build directory's files: they take them from here.

What ``package.json`` records (schema ``s2mlpv2-package``, version :data:`SCHEMA_VERSION`):

* ``model``: the model card (variant, preprocessing, class names), the deployed precision, the
  batch profile ``{min, opt, max}``, the input (name, ``C, H, W``) and output names;
* ``routes``: each runnable artifact, in the build's order of preference: its runtime
  (``tensorrt``, ``tensorrt-rtx``, ``onnxruntime``, ``openvino``), its files, the precision whose
  gates judge it and what it computes in (an IR with the bf16 hint computes bf16), what it needs to
  run (GPU compute capabilities and TensorRT version; OpenVINO version and the CPU capabilities its
  hint relies on; the ONNX Runtime version it was optimized by), its gate verdict and the latency
  measured at build time (``null`` where it could not run on the build machine: a plan built
  without a GPU);
* ``cpu_route``: the artifact of the fastest CPU route that passed its gates (``null`` if none);
* ``graph``: the portable ONNX graph of the deployed precision, in standard ops, that any ONNX
  reader (ONNX Runtime, OpenVINO) loads; the C++ program's fallback where no route's runtime is
  linked in;
* ``files``: ``{name: sha256}`` of every file a route or the check reads;
* ``sample``: the stored check sample (encoded images and PyTorch fp32's logits for them);
* ``built``: the machine and tool versions the build ran with.

A package of an unknown schema, or a newer version than this code reads, is refused in one line.
``summary.json`` stays the human-readable report; nothing reads it by position.

This module imports neither torch nor numpy: reading a package costs a JSON parse.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import S2MLPv2Error

__all__ = [
    "Package",
    "PackageRoute",
    "PackageError",
    "PACKAGE_FILE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SUMMARY_FILE",
    "MANIFEST_FILE",
    "FP32_GRAPH",
    "ORT_GRAPH",
    "PLAN_FILE",
    "IR_FILE",
    "IR_WEIGHTS",
    "SAMPLE_FILE",
    "SERVING_FILE",
    "BENCHMARK_FILE",
    "CALIBRATION_DIR",
    "PRECISIONS",
    "DEFAULT_BATCH_PROFILE",
    "GPU_RUNTIMES",
    "CPU_RUNTIMES",
    "graph_file",
    "plan_sidecar_file",
    "ir_sidecar_file",
    "precision_report_file",
    "verify_report_file",
    "write_package",
    "CheckSample",
    "write_sample",
    "read_sample",
    "SAMPLE_SIZE",
]

SCHEMA = "s2mlpv2-package"
SCHEMA_VERSION = 1

# Every file name of a build directory, once.
PACKAGE_FILE = "package.json"
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
BENCHMARK_FILE = "benchmark.json"
FP32_GRAPH = "model.onnx"
ORT_GRAPH = "model.ort.onnx"  # ONNX Runtime's graph, optimized for the build machine (--backend onnxruntime)
PLAN_FILE = "model.plan"
IR_FILE = "model.xml"
IR_WEIGHTS = "model.bin"
SAMPLE_FILE = "check-sample.npz"
SERVING_FILE = "serving.json"  # the serving settings pipeline.tune chose (serve's defaults; --triton-repo's config)
CALIBRATION_DIR = "calibration"

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH_PROFILE = (1, 8, 32)  # min, opt, max: what a build is made for where nobody says

GPU_RUNTIMES = ("tensorrt", "tensorrt-rtx")
CPU_RUNTIMES = ("onnxruntime", "openvino")


def graph_file(precision: str) -> str:
    """The portable ONNX graph of ``precision``: ``model.onnx`` (fp32), ``model-fp16.onnx``, ``model-int8.onnx``."""
    if precision not in PRECISIONS:
        raise PackageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return FP32_GRAPH if precision == "fp32" else f"model-{precision}.onnx"


def plan_sidecar_file(plan: str = PLAN_FILE) -> str:
    """The JSON written beside a plan (``engines.sidecar``): ``model.json``."""
    return str(Path(plan).with_suffix(".json"))


def ir_sidecar_file(xml: str = IR_FILE) -> str:
    """The JSON written beside an IR (``engines.openvino``): ``model.openvino.json``."""
    return str(Path(xml).with_suffix(".openvino.json"))


def precision_report_file(precision: str) -> str:
    return f"precision-{precision}.json"


def verify_report_file(index: int) -> str:
    """The verify report of the ``index``-th route the build checked: ``verify.json``, then ``verify-openvino.json``."""
    return "verify.json" if index == 0 else "verify-openvino.json"


class PackageError(S2MLPv2Error, ValueError):
    """A directory that is not a readable package (missing, foreign, newer, or incomplete); the message says what to do."""


@dataclass(frozen=True)
class PackageRoute:
    """One runnable artifact of the package (the module docstring's ``routes``)."""

    runtime: str  # one of RUNTIMES
    artifact: str  # its file name in the package
    files: tuple[str, ...]  # everything it needs: the artifact, its sidecar, the IR's weights
    precision: str  # whose gates judge it: fp32, fp16, int8
    computes: str  # what it computes in: fp32, fp16, bf16, int8
    needs: dict[str, Any] = field(default_factory=dict)  # runtime versions, GPU compute capabilities, CPU capabilities
    verdict: dict[str, Any] | None = None  # {"passed", "report", "line", "gate"}; None where it did not run at build time
    latency: dict[str, Any] | None = None  # {"batch", "p50_ms"} at build time

    @property
    def on_gpu(self) -> bool:
        return self.runtime in GPU_RUNTIMES

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": list(self.files)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PackageRoute:
        return cls(
            runtime=str(d["runtime"]),
            artifact=str(d["artifact"]),
            files=tuple(d.get("files") or (d["artifact"],)),
            precision=str(d["precision"]),
            computes=str(d.get("computes") or d["precision"]),
            needs=dict(d.get("needs") or {}),
            verdict=d.get("verdict"),
            latency=d.get("latency"),
        )


@dataclass(frozen=True)
class Package:
    """A build directory as its ``package.json`` describes it. :meth:`read` it; the build makes it with :func:`write_package`."""

    directory: Path
    card: dict[str, Any]
    precision: str
    batch_profile: tuple[int, int, int]
    input_shape: tuple[int, int, int]
    routes: tuple[PackageRoute, ...]
    files: dict[str, str]
    cpu_route: str | None = None
    graph: str | None = None
    input_name: str = "input"
    output_name: str = "logits"
    sample: dict[str, Any] | None = None  # {"file", "images", "reference": "pytorch fp32"}
    built: dict[str, Any] = field(default_factory=dict)  # {"cpu", "cpu_capabilities", "tools", "seconds"}
    version: int = SCHEMA_VERSION

    # --- reading
    @classmethod
    def read(cls, directory: str | os.PathLike) -> Package:
        """The package in ``directory``, or ``PackageError`` naming what is missing and the command that makes it."""
        directory = Path(directory)
        path = directory / PACKAGE_FILE
        if not directory.is_dir():
            raise PackageError(f"{directory} is not a directory; give the output directory of build_engine.py (--out)")
        if not path.is_file():
            if (directory / SUMMARY_FILE).is_file() or (directory / MANIFEST_FILE).is_file():
                raise PackageError(
                    f"{directory} was built before packages recorded {PACKAGE_FILE}; run the same build_engine.py command "
                    "again (its finished stages are reused) to write it"
                )
            raise PackageError(
                f"{directory} holds no {PACKAGE_FILE}, so it is not a build directory; make one with "
                f"python build_engine.py --precision fp16 --out {directory}"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PackageError(f"{path} is not readable JSON ({e}); rebuild with build_engine.py") from None
        return cls.from_dict(data, directory)

    @classmethod
    def from_dict(cls, data: Any, directory: Path) -> Package:
        where = directory / PACKAGE_FILE
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise PackageError(f"{where} is not an {SCHEMA} file (schema {found!r}); give a directory built by build_engine.py")
        version = data.get("version")
        if not isinstance(version, int) or version < 1:
            raise PackageError(f"{where} has no valid schema version ({version!r}); rebuild with build_engine.py")
        if version > SCHEMA_VERSION:
            raise PackageError(
                f"{where} is {SCHEMA} version {version}, newer than the version {SCHEMA_VERSION} this project reads; "
                "update this project (pip install -U) or rebuild the package with this version"
            )
        try:
            model = data["model"]
            routes = tuple(PackageRoute.from_dict(r) for r in data["routes"])
            package = cls(
                directory=directory,
                card=dict(model["card"]),
                precision=str(model["precision"]),
                batch_profile=_triple(model["batch"], ("min", "opt", "max")),
                input_shape=tuple(int(v) for v in model["input"]["shape"]),  # type: ignore[arg-type]
                input_name=str(model["input"].get("name", "input")),
                output_name=str(model["output"].get("name", "logits")),
                routes=routes,
                files={str(k): str(v) for k, v in data["files"].items()},
                cpu_route=data.get("cpu_route"),
                graph=data.get("graph"),
                sample=data.get("sample"),
                built=dict(data.get("built") or {}),
                version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PackageError(
                f"{where} is incomplete or damaged ({type(e).__name__}: {e}); rebuild with build_engine.py"
            ) from None
        if package.precision not in PRECISIONS or not routes:
            raise PackageError(
                f"{where} names precision {package.precision!r} and {len(routes)} routes; rebuild with build_engine.py"
            )
        return package

    # --- what it holds
    def path(self, name: str) -> Path:
        return self.directory / name

    def route(self, runtime: str | None = None, artifact: str | None = None) -> PackageRoute | None:
        """The first route with ``runtime`` (and/or ``artifact``), or None."""
        for r in self.routes:
            if (runtime is None or r.runtime == runtime) and (artifact is None or r.artifact == artifact):
                return r
        return None

    @property
    def plan_route(self) -> PackageRoute | None:
        return next((r for r in self.routes if r.on_gpu), None)

    @property
    def recorded_cpu_route(self) -> PackageRoute | None:
        """The route ``cpu_route`` names, when its files are still here."""
        route = self.route(artifact=self.cpu_route) if self.cpu_route else None
        return route if route is not None and not self.missing_files(route.files) else None

    @property
    def name(self) -> str:
        return str(self.card.get("config", {}).get("name") or self.card.get("model") or "model")

    def model_card(self):
        """The card as ``models.card.ModelCard`` (preprocessing and class names)."""
        from models.card import ModelCard

        return ModelCard.from_dict(self.card, f"the card in {self.directory / PACKAGE_FILE}")

    def missing_files(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if not self.path(n).is_file()]

    # --- writing
    def to_dict(self) -> dict[str, Any]:
        lo, opt, hi = self.batch_profile
        return {
            "schema": SCHEMA,
            "version": self.version,
            "model": {
                "name": self.name,
                "precision": self.precision,
                "batch": {"min": lo, "opt": opt, "max": hi},
                "input": {"name": self.input_name, "shape": list(self.input_shape)},
                "output": {"name": self.output_name},
                "card": self.card,
            },
            "routes": [r.to_dict() for r in self.routes],
            "cpu_route": self.cpu_route,
            "graph": self.graph,
            "files": self.files,
            "sample": self.sample,
            "built": self.built,
        }


def _triple(d: dict[str, Any], keys: tuple[str, str, str]) -> tuple[int, int, int]:
    a, b, c = (int(d[k]) for k in keys)
    return a, b, c


def write_package(package: Package) -> Path:
    """Write ``package.json`` atomically, with the hash of every file it lists taken now."""
    from common.fileio import atomic_write_json, sha256_file

    listed = set(package.files) | {f for r in package.routes for f in r.files}
    if package.graph:
        listed.add(package.graph)
    if package.sample:
        listed.add(package.sample["file"])
    missing = sorted(n for n in listed if not package.path(n).is_file())
    if missing:
        raise PackageError(f"cannot write {PACKAGE_FILE}: {', '.join(missing)} missing from {package.directory}")
    files = {n: sha256_file(package.path(n)) for n in sorted(listed)}
    final = dataclasses.replace(package, files=files)
    path = package.directory / PACKAGE_FILE
    atomic_write_json(path, final.to_dict())
    return path


# ----------------------------------------------------------------------------- the check sample

SAMPLE_SIZE = 32  # images: enough to catch a broken route or preprocessing, small enough to ship (a few MB at 224 px)


@dataclass(frozen=True)
class CheckSample:
    """What ``deployment.check`` runs: encoded images (or, without image files, preprocessed tensors) and PyTorch fp32's logits.

    Stored as a plain ``.npz`` of numeric arrays (no pickled objects, so loading it runs no code):
    ``encoded`` (all images' bytes, one after another), ``offsets`` (where each ends), ``names``
    (UTF-8, newline-joined, as bytes), ``logits`` (float32 ``(N, classes)``), and ``tensors``
    (float32 ``(N, C, H, W)``) only where the sample is not image files.
    """

    names: tuple[str, ...]
    logits: Any  # numpy float32 (N, classes)
    images: tuple[bytes, ...] = ()
    tensors: Any = None  # numpy float32 (N, C, H, W) where there are no image files

    def __len__(self) -> int:
        return len(self.names)


def write_sample(path: str | os.PathLike, sample: CheckSample) -> None:
    import numpy as np

    from common.fileio import atomic_path

    arrays = {
        "names": np.frombuffer("\n".join(sample.names).encode(), dtype=np.uint8),
        "logits": np.asarray(sample.logits, dtype=np.float32),
    }
    if sample.images:
        arrays["encoded"] = np.frombuffer(b"".join(sample.images), dtype=np.uint8)
        arrays["offsets"] = np.cumsum([len(b) for b in sample.images]).astype(np.int64)
    if sample.tensors is not None:
        arrays["tensors"] = np.asarray(sample.tensors, dtype=np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def read_sample(path: str | os.PathLike) -> CheckSample:
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            names = tuple(bytes(z["names"]).decode().split("\n"))
            logits = z["logits"]
            images: tuple[bytes, ...] = ()
            if "encoded" in z:
                blob, ends = bytes(z["encoded"]), z["offsets"].tolist()
                images = tuple(blob[a:b] for a, b in zip([0, *ends[:-1]], ends))
            tensors = z["tensors"] if "tensors" in z else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise PackageError(
            f"{path} is not a readable check sample ({type(e).__name__}: {e}); rebuild with build_engine.py"
        ) from None
    count = len(images) if images else (0 if tensors is None else len(tensors))
    if count != len(names) or len(logits) != len(names):
        raise PackageError(
            f"{path} holds {len(names)} names, {count} inputs and {len(logits)} logits; rebuild with build_engine.py"
        )
    return CheckSample(names, logits, images, tensors)
