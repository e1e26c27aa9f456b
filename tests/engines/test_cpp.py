"""The C++ TensorRT backend compiles, through CMake, against TensorRT 11.1's and CUDA's real headers, warnings as errors.

Linking and running it need TensorRT's library and a GPU; here only the compile is checked
(CMake builds ``tensorrt_backend.cpp`` as the object library ``s2mlpv2_tensorrt`` where it finds
the headers but no library).
"""

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT, missing

SOURCE = ROOT / "engines" / "cpp"
BACKEND = "tensorrt_backend.cpp"
# CMake stops with this prefix when a library the shared code needs is missing (CMakeLists.txt).
MISSING_DEPENDENCY = "s2mlpv2: missing dependency"


def _toolchain() -> tuple[str, Path, Path]:
    trt = Path(os.environ.get("TENSORRT_INCLUDE_DIR", "/nonexistent"))
    cuda = Path(os.environ.get("CUDA_INCLUDE_DIR", "/usr/local/cuda/include"))
    cmake = shutil.which("cmake")
    if not (trt / "NvInferRuntime.h").is_file():
        missing(
            "set TENSORRT_INCLUDE_DIR to TensorRT 11's include folder (NvInferRuntime.h) to compile the C++ TensorRT backend",
            "cpp",
        )
    if not (cuda / "cuda_runtime_api.h").is_file():
        missing("set CUDA_INCLUDE_DIR to CUDA's include folder (cuda_runtime_api.h) to compile the C++ TensorRT backend", "cpp")
    if cmake is None or not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        missing("needs cmake and a C++ compiler: apt-get install -y cmake g++", "cpp")
    return cmake, trt, cuda


def _compile_backend(source: Path, build: Path) -> subprocess.CompletedProcess:
    """Configure ``source`` (OpenVINO off) and build the TensorRT backend's objects alone."""
    cmake, trt, cuda = _toolchain()
    configure = [cmake, "-S", str(source), "-B", str(build), "-DS2MLPV2_WITH_OPENVINO=OFF"]
    configure += [f"-DTENSORRT_INCLUDE_DIR={trt}", f"-DCUDA_INCLUDE_DIR={cuda}"]
    proc = subprocess.run(configure, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        if MISSING_DEPENDENCY in proc.stderr:
            reason = next(line for line in proc.stderr.splitlines() if MISSING_DEPENDENCY in line)
            missing(f"CMake: {reason.strip()}", "cpp")
        return proc
    return subprocess.run(
        [cmake, "--build", str(build), "--target", "s2mlpv2_tensorrt"], capture_output=True, text=True, timeout=600
    )


def _edited_copy(tmp_path: Path, old: str, new: str) -> Path:
    copy = shutil.copytree(SOURCE, tmp_path / "cpp")
    backend = copy / BACKEND
    text = backend.read_text()
    assert old in text, f"{BACKEND} no longer holds {old!r}: update this test"
    backend.write_text(text.replace(old, new, 1))
    return copy


def test_tensorrt_backend_compiles_against_tensorrt_11_headers(tmp_path):
    proc = _compile_backend(SOURCE, tmp_path / "build")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    objects = list((tmp_path / "build").rglob(f"{BACKEND}.o"))
    assert len(objects) == 1 and objects[0].stat().st_size > 0


def test_a_warning_in_our_own_code_fails_the_check(tmp_path):
    source = _edited_copy(tmp_path, "bool tensorRtDeviceAvailable() {", "bool tensorRtDeviceAvailable() {\n  int unused = 0;")
    proc = _compile_backend(source, tmp_path / "build")
    assert proc.returncode != 0 and "unused" in proc.stdout + proc.stderr


def test_a_call_that_is_not_in_the_api_fails_the_check(tmp_path):
    source = _edited_copy(tmp_path, "context_->enqueueV3(stream_.get())", "context_->enqueueV2(stream_.get())")
    proc = _compile_backend(source, tmp_path / "build")
    assert proc.returncode != 0 and "enqueueV2" in proc.stdout + proc.stderr
