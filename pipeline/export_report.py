"""Export every registered variant and report node counts, export time and ORT-vs-PyTorch parity.

``python -m pipeline.export_report --images ../shared/data/imagenet-sample --out export_report.json``

Each variant (random init, seed 0, with every bias and LayerNorm shift randomised too, so
that no ``x + 0`` is folded away and the node count is what trained weights give) is exported
in standard form, and Small/7 also in plugin form. Parity is checked on random inputs at batch 1 and 7 and, with ``--images``, on images
preprocessed with each variant's own settings at batch 1 and 7. Graphs go to a temporary
folder unless ``--keep DIR`` is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from common.cli import HelpFormatter
from common.fileio import atomic_write_json
from models import create_model, list_models

from .export import ExportError, ExportSettings, export_onnx, load_images


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.export_report",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--images", type=Path, help="folder of images for the parity check (e.g. an ImageNet sample)")
    p.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    p.add_argument("--plugin", nargs="*", default=["s2mlpv2_small7"], help="variants also exported in plugin form")
    p.add_argument("--keep", type=Path, help="keep the exported graphs in this folder")
    p.add_argument("--out", type=Path, help="JSON report")
    args = p.parse_args(argv)
    rows = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        jobs = [(name, "onnx") for name in args.models] + [(name, "plugin") for name in args.plugin]
        for name, impl in jobs:
            torch.manual_seed(0)
            model = create_model(name).eval()
            with torch.no_grad():
                for pname, p in model.named_parameters():
                    if pname.endswith("bias"):
                        p.normal_(0.0, 0.02)
            checks = []
            if args.images is not None:
                images = load_images(args.images, model, 7)
                checks = [("images", images[:1]), ("images", images)]
            try:
                result = export_onnx(model, folder / f"{name}-{impl}.onnx", ExportSettings(shift_impl=impl), checks)
            except ExportError as e:
                failed = True
                rows.append({"model": name, "shift_impl": impl, "error": str(e)})
                print(f"{name} ({impl}): FAILED: {e}", flush=True)
                continue
            worst = max(result.checks, key=lambda c: c.rel)
            rows.append({"model": name, "shift_impl": impl, **result.to_dict(), "worst_rel": worst.rel})
            print(
                f"{name:20s} {impl:6s} nodes {result.nodes:5d} (exported {result.nodes_exported:5d})  "
                f"export {result.seconds_export:6.1f}s + cleanup {result.seconds_cleanup:4.1f}s  "
                f"worst max|Δ|/max|logit| {worst.rel:.1e} over {len(result.checks)} checks",
                flush=True,
            )
    if args.out:
        atomic_write_json(args.out, {"images": str(args.images) if args.images else None, "rows": rows})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
