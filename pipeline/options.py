"""What ``build_engine.py`` builds: its options and their defaults, in one place, importable without torch.

``build_engine.py`` takes every default from :class:`BuildOptions`; the calibration options
shared with other commands take theirs from ``calibration.args``, and the Q/DQ placement from
:data:`QDQ_PLACEMENTS` here (``pipeline.precision`` reads the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calibration.args import CALIB_METHODS, CALIB_SEED, CALIB_SIZE
from common.errors import S2MLPv2Error
from common.onnx_meta import OPSET
from engines.package import DEFAULT_BATCH_PROFILE, PRECISIONS

__all__ = ["BuildOptions", "PipelineError", "PRECISIONS", "QDQ_PLACEMENTS", "add_int8_arguments"]

# Where Q/DQ pairs go, the default first. "gemm-inputs": only on the inputs of MatMul and Gemm,
# so that ONNX Runtime turns each into one integer kernel with a float output and nothing else
# pays a quantize/dequantize pass. "modelopt": ModelOpt's default, which also quantizes residual
# Adds and other inputs (TensorRT fuses those into int8 layers; ONNX Runtime runs each Q/DQ as
# a separate pass and loses accuracy at every one).
QDQ_PLACEMENTS = ("gemm-inputs", "modelopt")


class PipelineError(S2MLPv2Error, RuntimeError):
    """A stage cannot run with these options; the message says what to change."""


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    model: str = "s2mlpv2_small7"
    checkpoint: Path | None = None
    shift_impl: str = "onnx"
    opset: int = OPSET
    calib_data: Path | None = None
    calib_size: int = CALIB_SIZE
    calib_method: str = CALIB_METHODS[0]
    qdq_placement: str = QDQ_PLACEMENTS[0]
    calib_holdout: int = 64
    calib_seed: int = CALIB_SEED
    repair: bool = True  # int8: repair where the held-out check fails (pipeline.precision)
    keep_fp32: tuple[str, ...] = ()  # int8: PyTorch module paths (or node names) kept in fp32
    labels: Path | None = None
    eval_data: Path | None = None
    eval_limit: int | None = 500
    batch: tuple[int, int, int] = DEFAULT_BATCH_PROFILE
    backend: str = "auto"
    compute_capabilities: tuple[str, ...] | None = None  # TensorRT for RTX targets; None: the builder's default set
    out: Path | None = None
    force: bool = False
    triton_repo: Path | None = None
    bench_seconds: float = 1.0
    verbose: bool = False  # the tools' own logs and progress bars (ModelOpt's); not part of any stage's key

    def out_dir(self, model_name: str) -> Path:
        return self.out or Path("build") / f"{model_name}-{self.precision}"

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise PipelineError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "int8" and self.calib_data is None:
            raise PipelineError(
                "--precision int8 needs --calib-data: a folder of a few hundred representative images "
                "(an ImageNet-style class-folder tree, a flat folder with synsets in the file names, or a list file)"
            )
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise PipelineError(f"--batch must satisfy 1 <= MIN <= OPT <= MAX, got {self.batch}")


def add_int8_arguments(group) -> None:
    """``--qdq-placement``, ``--keep-fp32`` and ``--repair``, shared by ``pipeline.precision`` and ``build_engine.py``."""
    import argparse

    group.add_argument(
        "--qdq-placement",
        choices=QDQ_PLACEMENTS,
        default=QDQ_PLACEMENTS[0],
        help="int8: Q/DQ only on MatMul/Gemm inputs (fastest in ONNX Runtime), or ModelOpt's default placement",
    )
    group.add_argument(
        "--keep-fp32",
        nargs="+",
        default=[],
        metavar="MODULE",
        help="int8: PyTorch module paths to keep in fp32 (network.2.3.mlp.fc1; a path keeps every GEMM below it), or "
        "node names as precision-int8.json lists them",
    )
    group.add_argument(
        "--repair",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="int8: where the held-out check fails, smooth LayerNorm outliers into the GEMMs' weights, then keep the "
        "most sensitive GEMMs in fp32 until it passes; --no-repair keeps the graph as quantized, for comparison",
    )
