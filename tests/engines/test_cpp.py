"""The C++ example compiles against TensorRT 11.1's and CUDA's real headers, warnings as errors."""

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT, missing

MAIN = ROOT / "engines" / "cpp" / "main.cpp"
WARNINGS = ["-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Werror"]


def _toolchain() -> tuple[str, Path, Path]:
    trt = Path(os.environ.get("TENSORRT_INCLUDE_DIR", "/nonexistent"))
    cuda = Path(os.environ.get("CUDA_INCLUDE_DIR", "/usr/local/cuda/include"))
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if not (trt / "NvInferRuntime.h").is_file():
        missing("set TENSORRT_INCLUDE_DIR to TensorRT 11's include folder (NvInferRuntime.h) to compile the C++ example", "cpp")
    if not (cuda / "cuda_runtime_api.h").is_file():
        missing("set CUDA_INCLUDE_DIR to CUDA's include folder (cuda_runtime_api.h) to compile the C++ example", "cpp")
    if cxx is None:
        missing("no C++ compiler (g++ or c++) on PATH", "cpp")
    return cxx, trt, cuda


def _compile(source: Path, out: Path) -> subprocess.CompletedProcess:
    cxx, trt, cuda = _toolchain()
    cmd = [cxx, "-std=c++17", *WARNINGS, "-isystem", str(trt), "-isystem", str(cuda), "-c", str(source), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_cpp_example_compiles_against_tensorrt_11_headers(tmp_path):
    proc = _compile(MAIN, tmp_path / "main.o")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "main.o").stat().st_size > 0


def test_a_warning_in_our_own_code_fails_the_check(tmp_path):
    broken = tmp_path / "main.cpp"
    broken.write_text(
        MAIN.read_text().replace("int main(int argc, char** argv) {", "int main(int argc, char** argv) {\n  int unused = 0;", 1)
    )
    proc = _compile(broken, tmp_path / "main.o")
    assert proc.returncode != 0 and "unused" in proc.stderr


def test_a_call_that_is_not_in_the_api_fails_the_check(tmp_path):
    broken = tmp_path / "main.cpp"
    broken.write_text(MAIN.read_text().replace("context->enqueueV3(stream)", "context->enqueueV2(stream)", 1))
    assert _compile(broken, tmp_path / "main.o").returncode != 0
