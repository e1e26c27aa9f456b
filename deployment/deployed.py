"""The deployed model: open what ``build_engine.py`` built, and classify images with it.

.. code-block:: python

    from deployment.deployed import DeployedModel

    model = DeployedModel.open("build/s2mlpv2_cifar10-fp16")   # a build directory, a .plan or an .onnx
    print(model.description)                                     # which runner, device and precision
    for p in model.predict(["cat.jpg", "dog.png"], top_k=3):
        print(p.image, [(c.label, round(c.probability, 3)) for c in p.top])

Which runner (:func:`choose_artifact`), for ``backend="auto"``:

1. the TensorRT plan, where a GPU that its flavour supports is present;
2. otherwise the CPU route the package records as its fastest that passed its gates
   (``package.json``, ``engines.package``), else its first complete CPU route, else its
   portable ONNX graph on ONNX Runtime.

``backend="onnxruntime"`` or ``"openvino"`` takes the package's route for that runtime, and
``"plan"`` its plan. A single file is run as it is (a plan this machine cannot run falls back to
the ONNX graph beside it that it was built from, found by the hash in its sidecar).

Preprocessing (input size, crop, interpolation, mean/std), class names and the batch limit come
from the package (a build directory), or from the artifact's own model card: the ONNX graph's
metadata, the IR's or the plan's sidecar. ``predict`` takes
image file paths, PIL images, uint8 ``(H, W, 3)`` arrays or an already preprocessed float
``(N, C, H, W)`` batch, and runs them in batches that the plan's profile accepts.

Thread safety: ``predict`` and ``logits`` may be called from several threads at once.
Preprocessing runs in the calling thread; the runner is called under a lock unless it is
safe to share (ONNX Runtime's session is: its ``run`` is documented as thread-safe; a TensorRT
execution context and its stream are not, so TensorRT calls take turns).

This module is also where verify, benchmark, ``deployment.classify`` and ``deployment.serve`` get
their runners (:func:`load_runner`) and an artifact's precision (:func:`artifact_precision`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.errors import S2MLPv2Error, UsageError

__all__ = [
    "DeployedModel",
    "Prediction",
    "TopClass",
    "DeployedError",
    "InputImageError",
    "BACKENDS",
    "DEFAULT_BATCH",
    "choose_artifact",
    "load_runner",
    "Runner",
    "plan_runs_here",
    "artifact_precision",
    "read_card",
]

BACKENDS = ("auto", "plan", "onnxruntime", "openvino")  # plan: the TensorRT plan, whichever flavour built it
DEFAULT_BATCH = 32  # a graph with a dynamic batch and no build profile beside it runs in batches of this size


class DeployedError(S2MLPv2Error, RuntimeError):
    """An artifact that cannot be opened or run here; the message says what to give instead."""


class InputImageError(S2MLPv2Error, ValueError):
    """An input that is not an image the model can take; the message names the image and the limit."""


@dataclass(frozen=True)
class TopClass:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One image's answer: its top-k classes, best first, and (on request) its logits."""

    image: str  # the file path, or "image N" for an in-memory input
    top: tuple[TopClass, ...]
    logits: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "top": [{"index": c.index, "label": c.label, "probability": c.probability} for c in self.top],
        }


# ----------------------------------------------------------------------------- artifacts


def artifact_precision(artifact: str | os.PathLike) -> str:
    """``fp32``, ``fp16`` or ``int8``: what the precision stage recorded in the graph, or the plan's sidecar."""
    path = Path(artifact)
    if path.suffix == ".onnx":
        from common.onnx_meta import graph_precision, load_onnx

        return graph_precision(load_onnx(path, DeployedError))
    if path.suffix == ".xml":  # an OpenVINO IR: its sidecar (<stem>.openvino.json) names the gates' precision
        from engines.openvino import IRError, read_ir_sidecar

        try:
            return read_ir_sidecar(path).precision
        except IRError as e:
            raise DeployedError(f"cannot run {path}: {e}") from None
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text()).get("precision", "fp32")
    return "fp32"


class Runner(Protocol):
    """What every runtime's runner is (ONNX Runtime, OpenVINO, TensorRT): :func:`load_runner` makes one per artifact."""

    path: Path
    backend: str  # onnxruntime, openvino, tensorrt, tensorrt-rtx
    device: str  # what it runs on, in words
    input_shape: tuple[int, ...]  # C, H, W
    batch_range: tuple[int, int | None]  # the smallest and largest batch it takes (None: no limit)
    thread_safe: bool  # may be called from several threads at once

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` in, float32 logits ``(N, classes)`` out."""
        ...


def load_runner(artifact: str | os.PathLike, threads: int | None = None, streams: int | None = None) -> Runner:
    """The runner for an artifact, the one place that dispatches on its type: ONNX Runtime for ``.onnx``, OpenVINO
    for ``.xml``, the TensorRT runtime of the plan's flavour for ``.plan``/``.engine``. ``threads``: CPU threads for
    ONNX Runtime and OpenVINO (None: theirs); ``streams``: OpenVINO's requests that run at once (None: one)."""
    path = Path(artifact)
    if not path.is_file():
        raise DeployedError(f"artifact not found: {path}")
    if path.suffix in (".plan", ".engine"):
        from engines.runtime import TensorRTRunner
        from engines.sidecar import EngineMismatchError
        from engines.trt import TensorRTUnavailable

        try:
            return TensorRTRunner(path)
        except (EngineMismatchError, TensorRTUnavailable) as e:
            raise DeployedError(f"cannot run {path}: {e}") from None
    if path.suffix == ".xml":
        from engines.openvino import IRError, OpenVINORunner, OpenVINOUnavailable

        try:
            return OpenVINORunner(path, threads=threads, streams=streams)
        except (IRError, OpenVINOUnavailable) as e:
            raise DeployedError(f"cannot run {path}: {e}") from None
    if path.suffix != ".onnx":
        raise DeployedError(
            f"unsupported artifact {path.name}: give a build directory, an .onnx graph, a TensorRT .plan or an OpenVINO .xml"
        )
    from engines.ort import OnnxRuntimeRunner

    try:
        return OnnxRuntimeRunner(path, threads=threads)
    except Exception as e:  # ORT raises its own exception types for unreadable graphs
        raise DeployedError(
            f"ONNX Runtime cannot load {path} ({' '.join(str(e).split())[:200]}); re-run the export stage"
        ) from None


def read_card(artifact: str | os.PathLike):
    """The model card of an artifact (``models.checkpoint.ModelCard``): an ONNX graph's metadata, or a plan's sidecar.

    A plan whose sidecar predates cards falls back to the ONNX graph beside it that the plan was built from.
    """
    from models.card import ModelCard

    path = Path(artifact)
    if path.suffix == ".onnx":
        from common.onnx_meta import CARD_KEY, load_onnx, read_metadata

        props = read_metadata(load_onnx(path, DeployedError))
        if CARD_KEY not in props:
            raise DeployedError(
                f"{path} has no model card (no {CARD_KEY} metadata), so its preprocessing and class names are unknown; "
                "use a graph written by this project's export stage (python -m pipeline.export or build_engine.py)"
            )
        return ModelCard.from_dict(json.loads(props[CARD_KEY]), f"the card in {path}")
    if path.is_dir():
        from engines.package import Package, PackageError

        try:
            return Package.read(path).model_card()
        except PackageError as e:
            raise DeployedError(str(e)) from None
    if path.suffix == ".xml":  # an OpenVINO IR: the card is in its sidecar (<stem>.openvino.json)
        from engines.openvino import IRError, read_ir_sidecar

        try:
            return ModelCard.from_dict(read_ir_sidecar(path).card, f"the card in {path.with_suffix('.openvino.json')}")
        except IRError as e:
            raise DeployedError(f"cannot run {path}: {e}") from None
    from engines.sidecar import read_sidecar

    sidecar = read_sidecar(path)
    if sidecar.card is not None:
        return ModelCard.from_dict(sidecar.card, f"the card in {path.with_suffix('.json')}")
    graph = _source_graph(path, sidecar.onnx_sha256)
    if graph is None:
        raise DeployedError(
            f"{path}'s sidecar holds no model card and the ONNX graph it was built from is not beside it; "
            "rebuild the plan with this version of the project"
        )
    return read_card(graph)


def _source_graph(plan: Path, onnx_sha256: str) -> Path | None:
    """The ``.onnx`` beside ``plan`` whose content is the one the plan was built from."""
    from common.fileio import sha256_file

    for candidate in sorted(plan.parent.glob("*.onnx")):
        if sha256_file(candidate) == onnx_sha256:
            return candidate
    return None


@dataclass(frozen=True)
class Choice:
    """Which artifact to run and why: ``reason`` completes the description line."""

    artifact: Path
    reason: str = ""


def plan_runs_here(plan: Path) -> tuple[bool, str]:
    """(runs, why not): the plan's flavour is installed and this machine has a GPU the plan was built for."""
    from engines.sidecar import EngineMismatchError, read_sidecar
    from engines.trt import flavour

    try:
        sidecar = read_sidecar(plan)
        fl = flavour(sidecar.flavour)
    except (EngineMismatchError, UsageError) as e:
        return False, str(e)
    if not fl.importable():
        return False, f"{fl.title} is not installed"
    gpu = fl.gpu_here()
    if gpu is None:
        return False, f"no GPU here of compute capability {', '.join(sidecar.compute_capabilities)}"
    try:
        sidecar.check_runtime(fl.name, fl.version(), gpu[1])
    except EngineMismatchError as e:
        return False, str(e)
    return True, ""


def choose_artifact(path: str | os.PathLike, backend: str = "auto") -> Choice:
    """What to run for ``path`` (a build directory, a plan or a graph) on this machine (the module docstring's order)."""
    return _choose(path, backend)[0]


def _choose(path: str | os.PathLike, backend: str):
    """``(choice, the package)`` for a build directory; ``(choice, None)`` for a single file."""
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = Path(path)
    if not path.exists():
        raise DeployedError(f"{path} does not exist; give a build directory (build_engine.py --out), a .plan or an .onnx")
    if path.is_file():
        if path.suffix in (".plan", ".engine") and backend != "plan":
            runs, why = plan_runs_here(path)
            if not runs:
                return _plan_graph(path, why), None
        if backend == "plan" and path.suffix not in (".plan", ".engine"):
            raise DeployedError(f"--backend plan needs a TensorRT plan; {path} is not one")
        return Choice(path), None
    package = _package(path)
    return _choose_route(package, backend), package


def _package(directory: Path):
    from engines.package import Package, PackageError

    try:
        return Package.read(directory)
    except PackageError as e:
        raise DeployedError(str(e)) from None


def _choose_route(package, backend: str) -> Choice:
    """The route of a package to run here, for ``backend`` (the module docstring's order for ``auto``)."""
    from engines.package import CPU_RUNTIMES

    where = package.directory
    has = ", ".join(f"{r.artifact} ({r.runtime})" for r in package.routes)
    plan = package.plan_route
    if backend == "plan":
        if plan is None:
            raise DeployedError(
                f"{where} holds no TensorRT plan (it has {has}); build one with build_engine.py --backend tensorrt-rtx"
            )
        return Choice(_route_file(package, plan))
    if backend in CPU_RUNTIMES:
        route = package.route(runtime=backend)
        if route is not None:
            return Choice(_route_file(package, route))
        if backend == "onnxruntime" and package.graph:  # any ONNX Runtime runs the portable graph
            return Choice(package.path(package.graph), "the package's portable graph (it has no ONNX Runtime route)")
        raise DeployedError(f"{where} has no {backend} route (it has {has}); build one with build_engine.py --backend {backend}")
    why = ""
    if plan is not None:
        lacking = package.missing_files(plan.files)
        runs, why = (False, f"{', '.join(lacking)} missing") if lacking else plan_runs_here(package.path(plan.artifact))
        if runs:
            return Choice(package.path(plan.artifact))
    plan_note = f" ({plan.artifact}: {why})" if why else ""
    recorded = package.recorded_cpu_route
    if recorded is not None:
        return Choice(package.path(recorded.artifact), "the build's fastest CPU route that passed its gates" + plan_note)
    for route in package.routes:
        if not route.on_gpu and not package.missing_files(route.files):
            return Choice(package.path(route.artifact), "the package's first CPU route that is complete" + plan_note)
    if package.graph and package.path(package.graph).is_file():
        return Choice(package.path(package.graph), "the package's portable graph" + plan_note)
    raise DeployedError(
        f"{where}: nothing here runs on this machine ({has}; {why or 'no CPU route is complete'}); "
        "rebuild with build_engine.py --precision ... --out " + str(where)
    )


def _route_file(package, route) -> Path:
    """The route's artifact, after checking every file it needs is present (a copy that left one behind is named)."""
    missing = package.missing_files(route.files)
    if missing:
        raise DeployedError(
            f"{package.directory} lacks {', '.join(missing)}, which its {route.runtime} route needs; copy the whole build "
            "directory, or rebuild it with build_engine.py"
        )
    return package.path(route.artifact)


def _plan_graph(plan: Path, why: str) -> Choice:
    from engines.sidecar import read_sidecar

    graph = _source_graph(plan, read_sidecar(plan).onnx_sha256)
    if graph is None:
        raise DeployedError(f"cannot run {plan} here ({why}), and the ONNX graph it was built from is not beside it")
    return Choice(graph, f"the graph {plan.name} was built from ({plan.name}: {why})")


# ----------------------------------------------------------------------------- the model


class DeployedModel:
    """A built artifact with its card: ``predict(images)`` -> top-k classes per image. Thread-safe (module docstring)."""

    def __init__(self, runner, card, choice: Choice | None = None, batch: int | None = None) -> None:
        self.runner = runner
        self.card = card
        self.precision = artifact_precision(runner.path)
        self.min_batch, high = runner.batch_range
        wanted = batch or DEFAULT_BATCH
        self.max_batch = min(wanted, high) if high else wanted
        if self.max_batch < self.min_batch:
            raise UsageError(f"batch {self.max_batch} is below the plan's smallest batch {self.min_batch}")
        self._lock = contextlib.nullcontext() if getattr(runner, "thread_safe", False) else threading.Lock()
        self._transform = None
        self._transform_lock = threading.Lock()
        reason = f", {choice.reason}" if choice and choice.reason else ""
        self.description = (
            f"{runner.backend} on {runner.device}, {self.precision}: {Path(runner.path).name}{reason}; "
            f"batches of {self.min_batch}-{self.max_batch}"
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        batch: int | None = None,
        threads: int | None = None,
        streams: int | None = None,
    ) -> DeployedModel:
        """Open a build directory, a ``.plan`` or an ``.onnx``; ``batch`` caps the batch size (default: the build's
        profile); ``threads`` and ``streams``: the CPU runtime's (``load_runner``)."""
        if batch is not None and batch < 1:
            raise UsageError(f"batch must be at least 1, got {batch}")
        choice, package = _choose(path, backend)
        if package is not None:
            card = package.model_card()
            if batch is None:
                batch = package.batch_profile[2]
        else:
            card = read_card(choice.artifact)
        runner = load_runner(choice.artifact, threads, streams)
        return cls(runner, card, choice, batch)

    # --- what the card says
    @property
    def name(self) -> str:
        return self.card.config.name

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.card.preprocessing.input_size)

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self.card.class_names
        return tuple(names) if names else tuple(str(i) for i in range(self.card.config.num_classes))

    # --- inputs
    def preprocess(self, image, name: str = "image") -> np.ndarray:
        """One image (file path, encoded bytes, PIL image or uint8 ``(H, W, 3)`` array) -> ``(C, H, W)`` float32, as the card says."""
        from common.images import ImageError, decode_rgb, load_rgb, to_rgb

        if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
            try:
                rgb = load_rgb(image) if isinstance(image, (str, os.PathLike)) else decode_rgb(image, name)
            except ImageError as e:
                raise InputImageError(str(e)) from None
        elif isinstance(image, np.ndarray):
            rgb = _array_to_pil(image, name)
        elif hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image, without importing PIL for the check
            rgb = to_rgb(image)
        else:
            raise InputImageError(
                f"{name} is a {type(image).__name__}; give a file path, a PIL image, a uint8 (H, W, 3) array "
                "or a preprocessed float (N, C, H, W) batch"
            )
        with self._transform_lock:  # building the transform once; applying it is thread-safe
            if self._transform is None:
                from common.images import CardTransform

                self._transform = CardTransform(self.card.preprocessing)
        return self._transform(rgb)

    def _batches(self, images) -> Iterator[tuple[list[str], np.ndarray]]:
        """(names, preprocessed batch) chunks of at most ``max_batch`` images, preprocessing chunk by chunk."""
        if _is_float_batch(images):
            batch = self._check_batch(images)
            for i in range(0, len(batch), self.max_batch):
                yield [f"image {j}" for j in range(i, min(i + self.max_batch, len(batch)))], batch[i : i + self.max_batch]
            return
        try:
            items = [images] if _is_single_image(images) else list(images)
        except TypeError:  # not a sequence: preprocess names what it is
            items = [images]
        for i in range(0, len(items), self.max_batch):
            chunk = items[i : i + self.max_batch]
            names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"image {i + k}" for k, x in enumerate(chunk)]
            yield names, np.stack([self.preprocess(x, n) for x, n in zip(chunk, names)])

    def _check_batch(self, batch, check_finite: bool = True) -> np.ndarray:
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_size:
            raise InputImageError(
                f"a preprocessed batch must be (N, {', '.join(map(str, self.input_size))}) float as the model card says, "
                f"got shape {tuple(batch.shape)}; or pass images (paths, PIL images, uint8 HxWx3 arrays)"
            )
        if check_finite and not np.isfinite(batch).all():
            raise InputImageError("the preprocessed batch contains NaN or Inf; check the preprocessing")
        return np.ascontiguousarray(batch, dtype=np.float32)

    # --- running
    def warm_up(self, max_batch: int | None = None) -> None:
        """Run every batch size from the smallest to ``max_batch`` (default: ``self.max_batch``) once, on zeros.

        A runner may prepare each batch size on first use (OpenVINO compiles one per size), which a
        server with dynamic batching would otherwise pay inside some client's request.
        """
        c, h, w = self.input_size
        for n in range(self.min_batch, min(max_batch or self.max_batch, self.max_batch) + 1):
            self.logits(np.zeros((n, c, h, w), np.float32))

    def logits(self, batch, check_finite: bool = True) -> np.ndarray:
        """Logits ``(N, classes)`` of a preprocessed float ``(N, C, H, W)`` batch, run in batches the artifact accepts.

        ``check_finite=False``: an image with NaN or Inf values gets NaN logits instead of an error, so a
        server batching many clients' requests does not fail the others' for it.
        """
        batch = self._check_batch(batch, check_finite)
        finite = np.isfinite(batch).all(axis=(1, 2, 3))
        out = np.full((len(batch), self.card.config.num_classes), np.nan, dtype=np.float32)
        good = batch[finite]
        if len(good):
            out[finite] = np.concatenate([self._run(good[i : i + self.max_batch]) for i in range(0, len(good), self.max_batch)])
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < self.min_batch:  # a plan whose profile starts above n: pad with copies, drop their answers
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.min_batch - n, axis=0)])
        with self._lock:
            out = self.runner(batch)
        return np.asarray(out, dtype=np.float32)[:n]

    def predict(self, images, top_k: int = 5, logits: bool = False) -> list[Prediction]:
        """Each image's ``top_k`` classes as (index, label, probability), best first; with ``logits=True`` its logits too.

        ``images``: one image or a sequence of file paths, PIL images and uint8 ``(H, W, 3)`` arrays, or a
        preprocessed float ``(N, C, H, W)`` batch. Raises ``InputImageError`` naming the first image that
        cannot be read or used.
        """
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        predictions = []
        for names, batch in self._batches(images):
            predictions += self.top_classes(self._run(batch), names, top_k, logits)
        return predictions

    def top_classes(
        self, logits: np.ndarray, names: Sequence[str], top_k: int = 5, keep_logits: bool = False
    ) -> list[Prediction]:
        """Predictions from logits: softmax probabilities, the ``top_k`` best with their labels."""
        labels = self.class_names
        z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        k = min(top_k, logits.shape[1])
        order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        return [
            Prediction(
                name,
                tuple(
                    TopClass(int(i), labels[i] if i < len(labels) else str(i), float(probabilities[row, i])) for i in order[row]
                ),
                logits[row].copy() if keep_logits else None,
            )
            for row, name in enumerate(names)
        ]


def _is_float_batch(images) -> bool:
    dtype = getattr(images, "dtype", None)
    return getattr(images, "ndim", 0) == 4 and dtype is not None and ("float" in str(dtype))


def _is_single_image(images) -> bool:
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or (
        hasattr(images, "mode") and hasattr(images, "convert")
    ):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


def _array_to_pil(array: np.ndarray, name: str):
    from PIL import Image

    if array.dtype != np.uint8:
        raise InputImageError(
            f"{name} is a {array.dtype} array; image arrays must be uint8 (H, W, 3) RGB, "
            "and preprocessed inputs a float (N, C, H, W) batch"
        )
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise InputImageError(f"{name} has shape {array.shape}; image arrays must be uint8 (H, W, 3) RGB")
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def iter_image_files(
    paths: Iterable[str | os.PathLike], on_skip: Callable[[Path, str, bool], None] | None = None
) -> Iterator[Path]:
    """Files as given, folders walked recursively for images, sorted; what ``deployment.classify`` takes.

    Symlinked folders are followed, each real folder once: a link back to a folder above it is a
    loop, and a folder reached a second way is not walked again. Only regular files are yielded;
    a FIFO, socket or device named like an image would block or mislead the reader. Whatever is
    passed over is told to ``on_skip(path, reason, is_error)``: ``is_error`` is True when the
    user's images may be missing (a folder or file that cannot be read), False for a notice
    (not a regular file, a loop, a folder already walked, a broken link).
    """
    from common.images import IMAGE_SUFFIXES, file_kind, os_reason

    skip = on_skip or (lambda path, reason, is_error: None)
    walked: set[tuple[int, int]] = set()

    def walk(folder: Path, above: frozenset[tuple[int, int]]) -> Iterator[Path]:
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
        except OSError as e:
            skip(folder, os_reason(e), True)
            return
        if key in above:
            skip(folder, "symlink loop: it leads back to a folder above it; not walked again", False)
            return
        if key in walked:
            skip(folder, "the same folder as one already walked (through a symlink); not walked twice", False)
            return
        walked.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skip(folder, f"folder not read: {os_reason(e)}", True)
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                mode = os.stat(entry.path).st_mode  # follows symlinks
            except OSError as e:
                if entry.is_symlink() or path.suffix.lower() in IMAGE_SUFFIXES:
                    skip(path, os_reason(e), not entry.is_symlink())
                continue
            kind = file_kind(mode)
            if kind == "directory":
                yield from walk(path, above | {key})
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                if kind == "regular file":
                    yield path
                else:
                    skip(path, f"not a regular file ({kind}); skipped", False)

    for p in map(Path, paths):
        if p.is_dir():
            yield from walk(p, frozenset())
        else:
            yield p
