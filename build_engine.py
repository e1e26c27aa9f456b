#!/usr/bin/env python3
"""Build a deployable S2-MLPv2: export -> precision -> TensorRT plan (or ONNX Runtime graph, OpenVINO IR) -> verify -> benchmark.

  python build_engine.py --precision fp16        # the shipped CIFAR-10 model, checked on bundled images
  python build_engine.py --precision int8        # calibrated on bundled images
  python build_engine.py --precision int8 --checkpoint my.safetensors --calib-data imagenet/train --eval-data imagenet/val

With no --checkpoint and no --model it builds the trained checkpoint the package ships
(s2mlpv2_cifar10), verifies on 500 bundled CIFAR-10 images the model never trained on and
calibrates int8 on 256 others (64 more held out to gate it), so the gates are judged.
Everything lands in --out with a manifest.json; re-running with the same inputs skips the
finished stages. Defaults live in pipeline/options.py (BuildOptions). See README.md and docs/BUILD.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from pathlib import Path

from calibration.args import CalibrationArgs
from calibration.bundled import CALIBRATE_SIZE
from common.cli import HelpFormatter, command
from engines.trt import FLAVOURS
from models.args import ModelArgs
from models.shift import EXPORT_FORMS
from pipeline.options import PRECISIONS, BuildOptions, add_int8_arguments

DEFAULTS = BuildOptions()

MODEL_ARGS = ModelArgs(
    model_default=None,
    model_help="a variant with RANDOM weights (a checkpoint's card overrides it); default: the shipped CIFAR-10 checkpoint",
    checkpoint_help="weights (.safetensors + card, or a PyTorch state dict); default: the shipped CIFAR-10 checkpoint, "
    "or random init when --model is given",
)
CALIBRATION_ARGS = CalibrationArgs(
    data_help="calibration images (int8 needs them): class folders, a flat folder or a list file; "
    "default: the bundled CIFAR-10 set with the shipped checkpoint",
    size_default=None,
    size_help=f"calibration images (default: {DEFAULTS.calib_size}; {CALIBRATE_SIZE} of the bundled set)",
    holdout_default=DEFAULTS.calib_holdout,
    holdout_help="further images held out to gate int8 and, without --eval-data, to verify",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_engine.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision, help="precision of the deployed graph")
    MODEL_ARGS.add_to_parser(p)
    g = p.add_argument_group("export")
    g.add_argument(
        "--shift-impl",
        choices=EXPORT_FORMS,
        default=DEFAULTS.shift_impl,
        help="standard ops, or the TensorRT shift plugin node",
    )
    g.add_argument("--opset", type=int, default=DEFAULTS.opset)
    add_int8_arguments(CALIBRATION_ARGS.add_to_parser(p))
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--eval-data",
        type=Path,
        help="labeled or unlabeled images to verify on (must not overlap the calibration set); "
        "default: the 500 bundled CIFAR-10 images with the shipped checkpoint",
    )
    g.add_argument("--eval-limit", type=int, default=DEFAULTS.eval_limit, help="verify on at most this many images")
    g = p.add_argument_group("shapes")
    g.add_argument("--batch", default=",".join(map(str, DEFAULTS.batch)), help="dynamic batch profile MIN,OPT,MAX")
    g = p.add_argument_group("backend")
    g.add_argument(
        "--backend",
        choices=("auto", *FLAVOURS, "onnxruntime", "openvino"),
        default=DEFAULTS.backend,
        help="auto: TensorRT 11 where it imports and a CUDA GPU exists; else TensorRT for RTX, whose plan runs here on a GPU "
        "it supports and is otherwise built on the CPU and checked through its ONNX graph on ONNX Runtime; "
        "ONNX Runtime alone where neither is installed. Where no GPU runs the plan, auto also builds an OpenVINO IR "
        "(model.xml) from the same graph and records the fastest CPU route that passes its gates. "
        "openvino: the IR alone",
    )
    g.add_argument(
        "--compute-capability",
        help="TensorRT for RTX targets, e.g. 8.6,8.9 (default: the builder's portable set 8.0,8.6,8.9,12.0; 7.5 and 12.1 on request)",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", type=Path, help="output directory (default: build/<model>-<precision>/, the model as its card names it)"
    )
    g.add_argument("--force", action="store_true", help="rerun every stage even if its inputs are unchanged")
    g.add_argument("--triton-repo", type=Path, help="also write a Triton Inference Server model repository here")
    g.add_argument(
        "--bench-seconds",
        type=float,
        default=DEFAULTS.bench_seconds,
        help="time each benchmark row at least this long (more is steadier)",
    )
    g.add_argument("--verbose", action="store_true", help="show the tools' own logs and progress bars (ModelOpt's)")
    return p


BUILD_STACK = ("torch", "timm", "modelopt", "onnxscript")  # what the [build] extra adds to a run-side install


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


@command("finished stages are kept: run the same command again to continue")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Heavy imports after --help.
    from common.cli import report_error
    from common.errors import UsageError

    missing = [m for m in BUILD_STACK if not _installed(m)]
    if missing:  # a run-side install (pip install .): it runs builds, it does not make them
        return report_error(
            UsageError(
                f"building needs {', '.join(missing)}, which this install lacks: pip install -e '.[build]' (the build extra)"
            )
        )
    from engines.build import parse_batch, parse_compute_capabilities
    from pipeline.orchestrate import BuildOptions, run_pipeline

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill ends like Ctrl-C: no stage marked done
    if args.checkpoint is None and args.model is None:  # the first run: a trained model and real images
        from calibration.bundled import CALIBRATE, VERIFY
        from models import SHIPPED_CHECKPOINT

        args.checkpoint = SHIPPED_CHECKPOINT
        args.eval_data = args.eval_data or VERIFY
        if args.calib_data is None:
            args.calib_data, args.calib_size = CALIBRATE, args.calib_size or CALIBRATE_SIZE
    opts = BuildOptions(
        precision=args.precision,
        model=args.model or DEFAULTS.model,
        checkpoint=args.checkpoint,
        shift_impl=args.shift_impl,
        opset=args.opset,
        calib_data=args.calib_data,
        calib_size=args.calib_size or DEFAULTS.calib_size,
        calib_method=args.calib_method,
        calib_holdout=args.calib_holdout,
        calib_seed=args.calib_seed,
        labels=args.labels,
        qdq_placement=args.qdq_placement,
        keep_fp32=tuple(args.keep_fp32),
        repair=args.repair,
        eval_data=args.eval_data,
        eval_limit=args.eval_limit,
        batch=parse_batch(args.batch),
        backend=args.backend,
        compute_capabilities=parse_compute_capabilities(args.compute_capability),
        out=args.out,
        force=args.force,
        triton_repo=args.triton_repo,
        bench_seconds=args.bench_seconds,
        verbose=args.verbose,
    )
    summary = run_pipeline(opts)
    if summary["gates_enforced"] and not summary["verify_passed"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
