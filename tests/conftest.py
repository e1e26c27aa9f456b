import contextlib
import io
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

# Keep CPU tests predictable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Triton kernels run on the CPU through Triton's interpreter (set before triton is imported).
os.environ.setdefault("TRITON_INTERPRET", "1")

# .ci/run sets S2MLPV2_REQUIRE to the tools it provides ("tensorrt-rtx", and "cpp" where it
# found TensorRT 11's and CUDA's headers and a compiler): a test that needs one of them fails instead of skipping,
# so the real TensorRT for RTX builder and the C++ compile check are never skipped quietly in CI.
REQUIRED = frozenset(filter(None, os.environ.get("S2MLPV2_REQUIRE", "").split(",")))


# Fixtures that run build_engine's whole pipeline or build a real engine: a test that uses one, directly or through
# another fixture, is marked slow, so that `pytest -m "not slow"` stays a quick loop.
SLOW_FIXTURES = frozenset({"shared", "shipped_fp16_build", "built", "tiny_plan"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def missing(reason: str, tool: str):
    """Skip with ``reason``; fail with it instead where ``tool`` is in S2MLPV2_REQUIRE (CI)."""
    if tool in REQUIRED:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def run_cli(tmp_path):
    """Run ``python -m MODULE args`` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    def _run(module: str, *args: str, check: bool = False, timeout: float = 600, env: dict | None = None, cwd=None):
        proc = subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or ROOT,
            env={**os.environ, **(env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{module} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    return _run


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """A small ImageFolder tree whose classes differ by colour, so a model can learn them quickly."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 220, 40), (200, 50, 200)]
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(palette[c % len(palette)], dtype=np.float32)
            img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


CIFAR10_CHECKPOINT = ROOT / "models" / "weights" / "s2mlpv2_cifar10.safetensors"


class Graphs:
    """ONNX graphs of the tiny and CIFAR-10 variants, made once per test session and shared.

    ``graphs.get("cifar10", "plugin", "int8", "modelopt")`` exports, converts and caches; int8
    graphs are calibrated on the bundled CIFAR-10 images.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._models: dict = {}
        self._exports: dict = {}

    def model(self, variant: str):
        if variant not in self._models:
            import torch

            import models

            if variant == "cifar10":
                self._models[variant] = models.load_checkpoint(CIFAR10_CHECKPOINT)
            else:
                torch.manual_seed(0)
                self._models[variant] = models.create_model("s2mlpv2_tiny_test").eval()
        return self._models[variant]

    def images(self, variant: str, count: int = 64):
        from pipeline.export import load_images

        return load_images(DATA / "cifar10-val", self.model(variant), count).numpy()

    def export(self, variant: str, form: str = "onnx"):
        """(eager model, fp32 graph, ``ExportResult``) of ``variant`` in ``form``, exported once per session."""
        from pipeline.export import ExportSettings, export_onnx

        if (variant, form) not in self._exports:
            fp32 = self.folder / f"{variant}-{form}-fp32.onnx"
            self._exports[variant, form] = (
                self.model(variant),
                fp32,
                export_onnx(self.model(variant), fp32, ExportSettings(shift_impl=form)),
            )
        return self._exports[variant, form]

    def get(self, variant: str, form: str = "onnx", precision: str = "fp32", placement: str = "gemm-inputs") -> Path:
        from pipeline.precision import convert_precision

        _, fp32, _ = self.export(variant, form)
        if precision == "fp32":
            return fp32
        out = self.folder / f"{variant}-{form}-{precision}-{placement}.onnx"
        if not out.exists():
            calibration = self.images(variant, 64 if precision == "int8" else 16)
            convert_precision(fp32, out, precision, calibration, qdq_placement=placement)
        return out


@pytest.fixture(scope="session")
def graphs(tmp_path_factory) -> Graphs:
    return Graphs(tmp_path_factory.mktemp("graphs"))


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """The tiny model's checkpoint, a finished fp32 build_engine directory (ONNX Runtime), and 2 x 4 images."""
    import torch

    import models
    from pipeline.orchestrate import BuildOptions, run_pipeline
    from tests.failures import TINY, Shared

    root = tmp_path_factory.mktemp("shared")
    torch.manual_seed(0)
    checkpoint = models.save_checkpoint(models.create_model(TINY).eval(), root / "tiny.safetensors")
    build = root / "build"
    # the same settings as FP32_BUILD, so that command finds every stage done
    opts = BuildOptions(precision="fp32", model=TINY, batch=(1, 2, 4), backend="onnxruntime", out=build, bench_seconds=0.05)
    run_pipeline(opts)
    return Shared(checkpoint, build / "model.onnx", build, make_image_folder(root / "images", classes=2, per_class=4))


@pytest.fixture(scope="session")
def shipped_fp16_build(tmp_path_factory) -> Path:
    """``python build_engine.py --precision fp16`` (the shipped CIFAR-10 checkpoint, bundled images), into a temporary folder."""
    import subprocess

    out = tmp_path_factory.mktemp("shipped") / "s2mlpv2_cifar10-fp16"
    proc = subprocess.run(
        [sys.executable, "build_engine.py", "--precision", "fp16", "--out", str(out), "--bench-seconds", "0.05"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


MATRIX_BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt-rtx", "tensorrt")
MATRIX_PRECISIONS = ("fp32", "fp16", "int8")  # engines.package.PRECISIONS, spelled out so that collecting imports nothing


class PackageMatrix:
    """Every ``--backend`` x ``--precision`` build of the tiny model (with a checkpoint, so the gates are judged), made on
    first use. Builds of one precision start from a copy of the first, so export and precision conversion run once."""

    def __init__(self, root: Path, checkpoint: Path) -> None:
        self.root, self.checkpoint, self._built = root, checkpoint, {}

    def build(self, backend: str, precision: str) -> Path:
        import shutil

        from pipeline.orchestrate import BuildOptions, PipelineError, run_pipeline
        from tests.failures import TINY

        key = (backend, precision)
        if key not in self._built:
            out = self.root / f"{backend}-{precision}"
            first = self.root / f"onnxruntime-{precision}"
            if backend != "onnxruntime":
                self.build("onnxruntime", precision)
                shutil.copytree(first, out, ignore=shutil.ignore_patterns("model.ort.onnx", "package.json", ".lock"))
            opts = BuildOptions(
                precision=precision,
                model=TINY,
                checkpoint=self.checkpoint,
                batch=(1, 2, 4),
                backend=backend,
                out=out,
                bench_seconds=0.01,
                calib_data=ROOT / "calibration" / "data" / "cifar10-calibrate",
                calib_size=32,
                calib_holdout=8,
                eval_data=ROOT / "calibration" / "data" / "cifar10-verify",
                eval_limit=40,
            )
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    run_pipeline(opts)
                self._built[key] = out
            except PipelineError as e:  # a backend this machine cannot build for (TensorRT 11 is not installable here)
                self._built[key] = e
        built = self._built[key]
        if isinstance(built, Exception):
            missing(f"--backend {backend} cannot build here: {built}", backend)
        return built


@pytest.fixture(scope="session")
def package_matrix(tmp_path_factory, shared) -> PackageMatrix:
    return PackageMatrix(tmp_path_factory.mktemp("matrix"), shared.checkpoint)
