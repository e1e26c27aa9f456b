#!/usr/bin/env python3
"""Build a deployable S2-MLPv2: export -> precision -> TensorRT plan (or ONNX Runtime graph) -> verify -> benchmark.

  python build_engine.py --precision fp16
  python build_engine.py --precision int8 --checkpoint my.safetensors --calib-data imagenet/train --eval-data imagenet/val

Everything lands in --out with a manifest.json; re-running with the same inputs skips the
finished stages. See README.md for what each stage writes.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from models import list_models
from pipeline.precision import add_qdq_placement_argument


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_engine.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16", help="precision of the deployed graph")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="s2mlpv2_small7", choices=list_models(), help="variant (a checkpoint's card overrides it)")
    g.add_argument(
        "--checkpoint", type=Path, help="weights (.safetensors + card, or a PyTorch state dict); random init when omitted"
    )
    g = p.add_argument_group("export")
    g.add_argument(
        "--shift-impl", choices=("onnx", "plugin"), default="onnx", help="standard ops, or the TensorRT shift plugin node"
    )
    g.add_argument("--opset", type=int, default=20)
    g = p.add_argument_group("calibration")
    g.add_argument(
        "--calib-data", type=Path, help="calibration images (required for int8): class folders, a flat folder or a list file"
    )
    g.add_argument("--calib-size", type=int, default=512, help="calibration images")
    g.add_argument("--calib-method", choices=("entropy", "max"), default="entropy")
    add_qdq_placement_argument(g)
    g.add_argument(
        "--calib-holdout", type=int, default=64, help="further images held out to gate int8 and, without --eval-data, to verify"
    )
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--eval-data", type=Path, help="labeled or unlabeled images to verify on (must not overlap the calibration set)"
    )
    g.add_argument("--eval-limit", type=int, default=500, help="verify on at most this many images")
    g = p.add_argument_group("shapes")
    g.add_argument("--batch", default="1,8,32", help="dynamic batch profile MIN,OPT,MAX")
    g = p.add_argument_group("backend")
    g.add_argument(
        "--backend",
        choices=("auto", "tensorrt", "onnxruntime"),
        default="auto",
        help="auto: TensorRT where TensorRT 11 and a CUDA GPU exist, else ONNX Runtime",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, help="output directory (default: build/<model>-<precision>/)")
    g.add_argument("--force", action="store_true", help="rerun every stage even if its inputs are unchanged")
    g.add_argument("--triton-repo", type=Path, help="also write a Triton Inference Server model repository here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Heavy imports after --help.
    from calibration.dataset import CalibrationError
    from calibration.sources import SourceError
    from engines.build import EngineBuildError, parse_batch
    from engines.trt import TensorRTUnavailable
    from models import CheckpointError
    from models.cli import report_error, report_interrupt
    from pipeline.export import ExportError
    from pipeline.manifest import LockedError
    from pipeline.orchestrate import BuildOptions, PipelineError, run_pipeline
    from pipeline.plugin_swap import PluginSwapError
    from pipeline.precision import PrecisionError
    from pipeline.verify import VerifyError

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill ends like Ctrl-C: no stage marked done
    try:
        opts = BuildOptions(
            precision=args.precision, model=args.model, checkpoint=args.checkpoint, shift_impl=args.shift_impl, opset=args.opset,
            calib_data=args.calib_data, calib_size=args.calib_size, calib_method=args.calib_method, calib_holdout=args.calib_holdout,
            qdq_placement=args.qdq_placement,
            eval_data=args.eval_data, eval_limit=args.eval_limit, batch=parse_batch(args.batch), backend=args.backend,
            out=args.out, force=args.force, triton_repo=args.triton_repo,
        )  # fmt: skip
        summary = run_pipeline(opts)
    except (PipelineError, CheckpointError, CalibrationError, SourceError, ExportError, PrecisionError, PluginSwapError,
            VerifyError, EngineBuildError, TensorRTUnavailable, LockedError, ValueError, OSError) as e:  # fmt: skip
        return report_error(e)
    except KeyboardInterrupt:
        return report_interrupt("finished stages are kept: run the same command again to continue")
    if summary["gates_enforced"] and not summary["verify_passed"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
