"""Export stage: PyTorch S2-MLPv2 -> one self-contained fp32 ONNX file, checked against eager.

``python -m pipeline.export --model s2mlpv2_small7 [--checkpoint P] --out model.onnx``

Two forms of the spatial shift (docs/ARCHITECTURE.md):

* ``--shift-impl onnx`` (default): standard ops only. Each mixer's expansion is two GEMMs: the
  ``(B, H, W, 2c)`` part that is shifted, viewed as rows of c/4 channels, and the third branch,
  used in place. Each shift is one ``Gather`` of moved rows from the first
  (``models.layers.shift_pair``). No Split, Pad, Concat, ScatterND or ScatterElements: each
  shift is a single copy. ``mlp_c``'s bias is added after the split attention's pooling, per
  image (``models.layers.S2MLPv2ExportMixer``): the same math with one pass fewer.
* ``--shift-impl plugin``: each shift is one ``SpatialShift`` node that TensorRT maps to our
  plugin. Everything else is identical to the standard form.

The exporter is torch's dynamo exporter (opset >= 20: native ``Gelu`` and
``LayerNormalization``), followed by onnxslim's cleanup (constant folding, slice fusion). The
input is ``input`` (float32 NCHW, dynamic ``batch``), the output ``logits``. The model card
(model name, config, preprocessing, class names) goes into ``metadata_props``. Before the
file is written, ONNX Runtime runs it at batch 1 and 7 and its logits are compared with
eager PyTorch: max |Δlogit| must stay within 1e-4 x max |logit|.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cli import HelpFormatter, command
from common.errors import S2MLPv2Error, UsageError
from common.fileio import atomic_path, atomic_write_json
from common.module_names import exported_scopes, name_nodes
from common.onnx_meta import CARD_KEY, MODEL_KEY, OPSET, SHIFT_IMPL_KEY, load_onnx, read_metadata, write_metadata
from models.args import ModelArgs, load_model
from models.card import ModelCard
from models.layers import S2MLPv2ExportMixer, S2MLPv2Mixer
from models.s2mlpv2 import S2MLPv2
from models.shift import EXPORT_FORMS

__all__ = ["ExportSettings", "ExportResult", "ExportError", "export_onnx", "read_onnx_card", "main"]

INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"
_TWO_GB = 2**31


class ExportError(S2MLPv2Error, RuntimeError):
    """The export failed or its result does not match PyTorch; the message says what to do."""


@dataclass(frozen=True)
class ExportSettings:
    shift_impl: str = "onnx"
    opset: int = OPSET
    check_batches: tuple[int, ...] = (1, 7)
    rel_tolerance: float = 1e-4  # of max |logit|
    cleanup: bool = True

    def __post_init__(self) -> None:
        if self.shift_impl not in EXPORT_FORMS:
            raise UsageError(f"shift_impl must be one of {', '.join(EXPORT_FORMS)}, got {self.shift_impl!r}")
        if self.opset < OPSET:
            raise UsageError(f"opset must be >= {OPSET} (native Gelu and LayerNormalization), got {self.opset}")


@dataclass
class ParityCheck:
    batch: int
    source: str
    max_abs_diff: float
    max_abs_logit: float

    @property
    def rel(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, 1e-12)


@dataclass
class ExportResult:
    path: Path
    nodes_exported: int
    nodes: int
    op_histogram: dict[str, int]
    seconds_export: float
    seconds_cleanup: float
    checks: list[ParityCheck] = field(default_factory=list)
    rel_tolerance: float = 1e-4

    def __bool__(self) -> bool:
        return all(c.rel <= self.rel_tolerance for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "nodes_exported": self.nodes_exported,
            "nodes": self.nodes,
            "op_histogram": self.op_histogram,
            "seconds_export": round(self.seconds_export, 2),
            "seconds_cleanup": round(self.seconds_cleanup, 2),
            "checks": [{**vars(c), "rel": c.rel} for c in self.checks],
        }

    def __str__(self) -> str:
        hist = ", ".join(f"{op} {n}" for op, n in self.op_histogram.items())
        lines = [
            f"nodes: {self.nodes} after cleanup ({self.nodes_exported} as exported)",
            f"ops: {hist}",
            f"seconds: export {self.seconds_export:.1f}, cleanup {self.seconds_cleanup:.1f}",
        ]
        for c in self.checks:
            verdict = "ok" if c.rel <= self.rel_tolerance else "MISMATCH"
            lines.append(
                f"check batch {c.batch} ({c.source}): max |Δlogit| {c.max_abs_diff:.2e} = {c.rel:.1e} x max |logit| [{verdict}]"
            )
        return "\n".join(lines)


def _histogram(model) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress and internal warnings; keep the stage's output readable."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _rename_batch_dim(model) -> None:
    """Give the dynamic batch dimension the name ``batch`` everywhere it appears."""
    old = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not old or old == BATCH_DIM:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = BATCH_DIM


def card_for(model: S2MLPv2) -> ModelCard:
    card = getattr(model, "card", None)
    return card if card is not None else ModelCard(model.config, {"weights": "random init"})


def export_form(model: S2MLPv2, shift_impl: str) -> S2MLPv2:
    """A copy of ``model`` whose mixers are ``S2MLPv2ExportMixer`` of the form ``shift_impl`` (``onnx`` or ``plugin``).

    The copy shares nothing with ``model`` (the parity check still runs the eager original).
    """
    import copy

    lowered = copy.deepcopy(model)
    for parent in list(lowered.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is S2MLPv2Mixer:
                setattr(parent, name, S2MLPv2ExportMixer.from_mixer(child, shift_impl))
    return lowered


def _trace(model: S2MLPv2, settings: ExportSettings):
    """torch's dynamo exporter on the model's export form (:func:`export_form`): the raw ``ModelProto``."""
    from engines.shift_node import onnx_translation_table, register_onnx_schema

    c, h, w = model.config.preprocessing.input_size
    example = torch.randn(2, c, h, w)
    extra: dict[str, Any] = {}
    if settings.shift_impl == "plugin":
        register_onnx_schema()
        extra["custom_translation_table"] = onnx_translation_table()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                export_form(model, settings.shift_impl),
                (example,),
                dynamo=True,
                opset_version=settings.opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: torch.export.Dim(BATCH_DIM, min=1, max=4096)}},
                verbose=False,
                **extra,
            )
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"torch.onnx.export failed for {model.config.name}: {str(e).splitlines()[0][:300]}") from e
    return program.model_proto


def _check_parity(model: S2MLPv2, proto, settings: ExportSettings, check_inputs, result: ExportResult) -> None:
    """Run ONNX Runtime on random batches (and ``check_inputs``) against eager; ``ExportError`` past the tolerance."""
    from engines.ort import make_session

    c, h, w = model.config.preprocessing.input_size
    session = make_session(proto)
    generator = torch.Generator().manual_seed(0)
    inputs = [("random", torch.randn(b, c, h, w, generator=generator)) for b in settings.check_batches]
    inputs += list(check_inputs)
    for source, batch in inputs:
        with torch.no_grad():
            expected = model(batch).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
        result.checks.append(
            ParityCheck(batch.shape[0], source, float(np.abs(got - expected).max()), float(np.abs(expected).max()))
        )
    if not result:
        worst = max(result.checks, key=lambda ch: ch.rel)
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch for {model.config.name}: max |Δlogit| {worst.max_abs_diff:.3e} "
            f"at batch {worst.batch} ({worst.rel:.1e} x max |logit|, limit {settings.rel_tolerance:.0e}); nothing was written"
        )


def export_onnx(
    model: S2MLPv2,
    out: str | os.PathLike,
    settings: ExportSettings = ExportSettings(),
    check_inputs: Sequence[tuple[str, torch.Tensor]] = (),
) -> ExportResult:
    """Export ``model`` to ``out``; raises ``ExportError`` (and writes nothing) if ORT disagrees with eager."""
    import onnx
    import onnxslim

    model = model.eval()
    t0 = time.perf_counter()
    proto = _trace(model, settings)
    seconds_export = time.perf_counter() - t0
    nodes_exported = len(proto.graph.node)

    scopes = exported_scopes(proto)  # before the cleanup, which drops node metadata
    t0 = time.perf_counter()
    if settings.cleanup:
        with _quiet_exporter():
            proto = onnxslim.slim(proto)
    seconds_cleanup = time.perf_counter() - t0
    name_nodes(proto, scopes)  # every node MODULE/op: common.module_names
    _rename_batch_dim(proto)
    card = card_for(model)
    write_metadata(
        proto, {CARD_KEY: json.dumps(card.to_dict()), SHIFT_IMPL_KEY: settings.shift_impl, MODEL_KEY: model.config.name}
    )
    proto.producer_name = "s2mlpv2-deploy"
    onnx.checker.check_model(proto, full_check=True)

    result = ExportResult(
        Path(out),
        nodes_exported,
        len(proto.graph.node),
        _histogram(proto),
        seconds_export,
        seconds_cleanup,
        rel_tolerance=settings.rel_tolerance,
    )
    _check_parity(model, proto, settings, check_inputs, result)

    with atomic_path(out) as tmp:
        if proto.ByteSize() > _TWO_GB:
            onnx.save(proto, str(tmp), save_as_external_data=True, location=Path(out).name + ".data")
        else:
            onnx.save(proto, str(tmp))
    return result


def read_onnx_card(path: str | os.PathLike) -> ModelCard:
    """The model card stored in an exported graph's ``metadata_props``."""
    props = read_metadata(load_onnx(path, ExportError))
    if CARD_KEY not in props:
        raise ExportError(
            f"{path} was not written by this project's export stage (no {CARD_KEY} metadata); export it with python -m pipeline.export"
        )
    return ModelCard.from_dict(json.loads(props[CARD_KEY]), f"the card in {path}")


def load_images(folder: str | os.PathLike, model: S2MLPv2, limit: int) -> torch.Tensor:
    """The first ``limit`` images of ``folder`` (any layout ``calibration.sources`` reads), preprocessed by the card."""
    from calibration.dataset import load_images as load

    return torch.from_numpy(load(folder, model.config.preprocessing, limit, stratified=False)[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.export",
        description=__doc__.split("\n\n")[0],
        epilog="Prints the node count, the op histogram and the seconds taken.",
        formatter_class=HelpFormatter,
    )
    ModelArgs().add_to_parser(p)
    p.add_argument(
        "--shift-impl", choices=EXPORT_FORMS, default=EXPORT_FORMS[0], help="standard ops, or one TensorRT plugin node per shift"
    )
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (>= {OPSET})")
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument(
        "--check-images",
        type=Path,
        help="also compare ORT with PyTorch on images from this folder (preprocessed by the model card)",
    )
    p.add_argument("--check-limit", type=int, default=7, help="images taken from --check-images")
    p.add_argument("--no-cleanup", action="store_true", help="skip onnxslim's cleanup pass")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    return p


@command()
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ExportSettings(shift_impl=args.shift_impl, opset=args.opset, cleanup=not args.no_cleanup)
    model = load_model(args.checkpoint, args.model, "the exported model")
    checks = []
    if args.check_images is not None:
        checks.append((f"images from {args.check_images}", load_images(args.check_images, model, args.check_limit)))
    print(f"exporting {model.config.name} ({args.shift_impl} shift, opset {args.opset}) to {args.out}", flush=True)
    result = export_onnx(model, args.out, settings, checks)
    print(result)
    if args.json:
        atomic_write_json(args.json, result.to_dict())
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
