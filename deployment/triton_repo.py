"""Triton Inference Server model repository for a build, or for one artifact.

``write_package_repository(repo, build)`` reads the build's ``package.json`` and writes the model Triton can serve:
its TensorRT 11 plan where it has one, else its portable ONNX graph (standard ops); the name, batch profile, input
and class count come from the package. ``write_model_repository(repo, name, artifact, ...)`` writes ``repo/name/1/model.plan`` (or
``model.onnx``) and ``repo/name/config.pbtxt`` with the platform, ``max_batch_size`` from the
profile, dynamic batching, and the input and output names, types and dims. Where
``tritonclient`` is installed, the config is parsed into Triton's own ``ModelConfig`` protobuf
before it is written, so a field Triton does not know fails here, not at server start.

What each artifact becomes:

* a TensorRT 11 plan: ``tensorrt_plan``, served by Triton's TensorRT backend;
* an ONNX graph in standard ops: ``onnxruntime_onnx``, served by Triton's ONNX Runtime backend;
* a TensorRT for RTX plan is refused: Triton's TensorRT backend runs TensorRT, not TensorRT for
  RTX. Serve the ONNX graph the plan was built from instead (``build_engine.py`` does);
* a plugin-form graph is refused: Triton's ONNX Runtime backend has no ``SpatialShift`` op.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from common.errors import S2MLPv2Error, UsageError
from common.fileio import atomic_path, atomic_write_text

__all__ = [
    "write_package_repository",
    "write_model_repository",
    "config_text",
    "read_config",
    "validate_config",
    "TritonRepoError",
]


class TritonRepoError(S2MLPv2Error, ValueError):
    """The artifact cannot be served by Triton as it is; the message says what to serve instead."""


def config_text(
    name: str, platform: str, max_batch: int, preferred: list[int], input_dims: tuple[int, ...], num_classes: int
) -> str:
    dims = ", ".join(str(d) for d in input_dims)
    preferred_text = ", ".join(str(b) for b in preferred)
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch}
input [
  {{
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred_text} ]
  max_queue_delay_microseconds: 100
}}
"""


def write_model_repository(
    repo: Path, name: str, artifact: Path, batch: tuple[int, int, int], input_dims: tuple[int, ...], num_classes: int
) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UsageError(f"Triton model names take letters, digits, '_', '.' and '-'; got {name!r}")
    is_plan = artifact.suffix in (".plan", ".engine")
    _check_servable(artifact, is_plan)
    preferred = sorted({b for b in batch[1:] if b > 1}) or [batch[2]]
    text = config_text(name, "tensorrt_plan" if is_plan else "onnxruntime_onnx", batch[2], preferred, input_dims, num_classes)
    validate_config(text)
    version_dir = Path(repo) / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / ("model.plan" if is_plan else "model.onnx")
    with atomic_path(target) as tmp:
        shutil.copyfile(artifact, tmp)
    atomic_write_text(Path(repo) / name / "config.pbtxt", text)
    return Path(repo) / name


def write_package_repository(repo: Path, build: Path) -> tuple[Path, str]:
    """``(model folder, the build file it serves)``: the package's TensorRT 11 plan, else its portable graph."""
    from engines.package import Package
    from engines.trt import FLAVOURS, flavour

    package = Package.read(build)
    plan = package.plan_route
    if plan is not None and plan.runtime in FLAVOURS and flavour(plan.runtime).triton_platform is not None:
        served = plan.artifact
    elif package.graph is not None:
        served = package.graph  # a TensorRT for RTX plan or an OpenVINO IR: the graph they were made from
    else:
        raise TritonRepoError(
            f"{build} has no model Triton can serve: no TensorRT 11 plan and no standard-ops graph (a plugin-form "
            "build); build with --shift-impl onnx, or with --backend tensorrt for a plan"
        )
    config = package.model_card().config
    folder = write_model_repository(
        Path(repo),
        f"{package.name}_{package.precision}",
        package.path(served),
        package.batch_profile,
        package.input_shape,
        config.num_classes,
    )
    return folder, served


def _check_servable(artifact: Path, is_plan: bool) -> None:
    if is_plan:
        from engines.sidecar import read_sidecar
        from engines.trt import flavour

        sidecar = read_sidecar(artifact)
        if flavour(sidecar.flavour).triton_platform is None:
            raise TritonRepoError(
                f"{artifact} is a {sidecar.title} plan, and Triton's TensorRT backend runs TensorRT plans only; "
                "serve the ONNX graph it was built from (onnxruntime_onnx), or build with --backend tensorrt"
            )
        return
    import onnx

    from engines.ort import has_plugin_nodes

    if has_plugin_nodes(onnx.load(str(artifact), load_external_data=False)):
        raise TritonRepoError(
            f"{artifact} holds SpatialShift plugin nodes, which Triton's ONNX Runtime backend cannot run; "
            "serve the standard-ops graph (--shift-impl onnx) or a TensorRT 11 plan"
        )


def validate_config(text: str) -> None:
    """Parse ``text`` into Triton's ``ModelConfig`` protobuf (when ``tritonclient[grpc]`` is installed); raise on a bad field."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise TritonRepoError(f"config.pbtxt does not fit Triton's ModelConfig schema: {e}") from None


def read_config(text: str) -> dict[str, Any]:
    """Parse the protobuf text format used in ``config.pbtxt`` (the subset written here) into dicts and lists."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                if tokens[pos] == ",":
                    pos += 1
                    continue
                items.append(value())
            pos += 1
            return items
        if tok.startswith('"'):
            return tok[1:-1]
        try:
            return int(tok)
        except ValueError:
            return tok

    def message(end):
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            out[key] = value()
        pos += 1
        return out

    return message(None)
