"""Triton Inference Server model repository for a build, or for one artifact.

``write_package_repository(repo, build)`` reads the build's ``package.json`` and writes what Triton serves: its
TensorRT 11 plan where it has one; else, where its recorded CPU route is the OpenVINO IR, the IR on Triton's
OpenVINO backend with the portable ONNX graph as a fallback model; else the portable graph. The name, batch profile,
input and class count come from the package. ``write_model_repository(repo, name, artifact, ...)`` writes ``repo/name/1/model.plan`` (or
``model.onnx``) and ``repo/name/config.pbtxt`` with the platform, ``max_batch_size`` from the
profile, dynamic batching, and the input and output names, types and dims. Where
``tritonclient`` is installed, the config is parsed into Triton's own ``ModelConfig`` protobuf
before it is written, so a field Triton does not know fails here, not at server start.

What each artifact becomes:

* a TensorRT 11 plan: ``tensorrt_plan``, served by Triton's TensorRT backend;
* an ONNX graph in standard ops: ``onnxruntime_onnx``, served by Triton's ONNX Runtime backend;
* an OpenVINO IR: ``backend: "openvino"`` with ``model.xml`` and ``model.bin``, one CPU instance, and the backend's
  parameters from the IR's sidecar (the precision hint; :func:`_openvino_parameters` says what the backend can and
  cannot be told);
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


OPENVINO_BACKEND = "openvino"


class TritonRepoError(S2MLPv2Error, ValueError):
    """The artifact cannot be served by Triton as it is; the message says what to serve instead."""


def config_text(
    name: str,
    platform: str,
    max_batch: int,
    preferred: list[int],
    input_dims: tuple[int, ...],
    num_classes: int,
    parameters: dict[str, str] | None = None,
    queue_delay_us: int = 100,
    instances: int | None = None,
) -> str:
    """``config.pbtxt`` for a classifier ``input`` (float32 NCHW) -> ``logits``. ``platform`` is a Triton platform
    (``tensorrt_plan``, ``onnxruntime_onnx``) or, for the OpenVINO backend, ``openvino`` (written as ``backend``);
    ``parameters`` are the backend's string parameters; ``instances``: an ``instance_group`` of that many (the
    OpenVINO backend always gets one, on the CPU)."""
    dims = ", ".join(str(d) for d in input_dims)
    preferred_text = ", ".join(str(b) for b in preferred)
    runtime = f'backend: "{platform}"' if platform == OPENVINO_BACKEND else f'platform: "{platform}"'
    text = f"""name: "{name}"
{runtime}
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
  max_queue_delay_microseconds: {queue_delay_us}
}}
"""
    if platform == OPENVINO_BACKEND or instances is not None:
        kind = "\n    kind: KIND_CPU" if platform == OPENVINO_BACKEND else ""
        text += f"instance_group [\n  {{\n    count: {instances or 1}{kind}\n  }}\n]\n"
    for key, value in (parameters or {}).items():
        text += f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    return text


def write_model_repository(
    repo: Path,
    name: str,
    artifact: Path,
    batch: tuple[int, int, int],
    input_dims: tuple[int, ...],
    num_classes: int,
    choice=None,
) -> Path:
    """``repo/name/1/<model file(s)>`` and ``repo/name/config.pbtxt`` for a plan, an ONNX graph or an OpenVINO IR.
    ``choice``: the serving settings ``pipeline.tune`` chose (``deployment.tuned.ServingChoice``): the batcher's
    preferred sizes and queue delay, the instance count, and OpenVINO's threads and streams."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UsageError(f"Triton model names take letters, digits, '_', '.' and '-'; got {name!r}")
    kind = "plan" if artifact.suffix in (".plan", ".engine") else "ir" if artifact.suffix == ".xml" else "onnx"
    parameters = None
    if kind == "ir":
        parameters = _openvino_parameters(artifact, choice)
        files = {"model.xml": artifact, "model.bin": artifact.with_suffix(".bin")}
        platform = OPENVINO_BACKEND
    else:
        _check_servable(artifact, kind == "plan")
        files = {"model.plan" if kind == "plan" else "model.onnx": artifact}
        platform = "tensorrt_plan" if kind == "plan" else "onnxruntime_onnx"
    max_batch = min(choice.max_batch, batch[2]) if choice is not None and choice.max_batch else batch[2]
    if choice is not None and choice.preferred_batch:
        preferred = [b for b in choice.preferred_batch if b <= max_batch] or [max_batch]
    else:
        preferred = sorted({b for b in batch[1:] if 1 < b <= max_batch}) or [max_batch]
    text = config_text(
        name,
        platform,
        max_batch,
        preferred,
        input_dims,
        num_classes,
        parameters,
        queue_delay_us=choice.queue_delay_us if choice is not None else 100,
        instances=choice.instances if choice is not None else None,
    )
    validate_config(text)
    version_dir = Path(repo) / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    for target, source in files.items():
        with atomic_path(version_dir / target) as tmp:
            shutil.copyfile(source, tmp)
    atomic_write_text(Path(repo) / name / "config.pbtxt", text)
    return Path(repo) / name


def _openvino_parameters(xml: Path, choice=None) -> dict[str, str]:
    """The OpenVINO backend's parameters for an IR of this project, from its sidecar.

    The backend (triton-inference-server/openvino_backend) reads ``PERFORMANCE_HINT``, ``NUM_STREAMS``,
    ``INFERENCE_NUM_THREADS``, ``COMPILATION_NUM_THREADS`` and ``HINT_BF16`` and no other precision setting: an IR
    built for bf16 gets ``HINT_BF16: YES``; one built for f32 gets no hint, so on a CPU whose OpenVINO default is bf16
    (AMX) the server computes in bf16 where the build verified f32."""
    from engines.openvino import IRError, read_ir_sidecar

    try:
        sidecar = read_ir_sidecar(xml)
    except IRError as e:
        raise TritonRepoError(f"cannot serve {xml} with OpenVINO: {e}") from None
    # as the project's runner compiles it, with the tuned threads and streams
    streams = choice.streams if choice is not None and choice.streams else 1
    parameters = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": str(streams)}
    if choice is not None and choice.threads:
        parameters["INFERENCE_NUM_THREADS"] = str(choice.threads)
    if sidecar.inference_precision_hint == "bf16":
        parameters["HINT_BF16"] = "YES"
    return parameters


def write_package_repository(repo: Path, build: Path) -> list[tuple[Path, str]]:
    """The build's models for Triton, ``[(model folder, the build file it serves)]``, primary first:

    * a TensorRT 11 plan: ``NAME`` (``tensorrt_plan``);
    * else, where the build's recorded CPU route is its OpenVINO IR: ``NAME`` on Triton's OpenVINO backend, and its
      portable graph as the fallback ``NAME_onnxruntime`` (``onnxruntime_onnx``), for a server without that backend;
    * else the portable graph as ``NAME`` (a TensorRT for RTX plan or an IR that did not pass its gates is not what
      Triton runs)."""
    from engines.package import Package
    from engines.trt import FLAVOURS, flavour

    from .tuned import ServingChoice

    package = Package.read(build)
    choice = ServingChoice.read(build)
    name = f"{package.name}_{package.precision}"
    classes = package.model_card().config.num_classes
    plan = package.plan_route
    ir = package.route(runtime="openvino")
    models: list[tuple[str, str]] = []
    if plan is not None and plan.runtime in FLAVOURS and flavour(plan.runtime).triton_platform is not None:
        models.append((name, plan.artifact))
    elif ir is not None and package.cpu_route == ir.artifact:
        models.append((name, ir.artifact))
        if package.graph is not None:
            models.append((f"{name}_onnxruntime", package.graph))
    elif package.graph is not None:
        models.append((name, package.graph))
    if not models:
        raise TritonRepoError(
            f"{build} has no model Triton can serve: no TensorRT 11 plan and no standard-ops graph (a plugin-form "
            "build); build with --shift-impl onnx, or with --backend tensorrt for a plan"
        )
    return [
        (
            write_model_repository(
                Path(repo), model, package.path(served), package.batch_profile, package.input_shape, classes, choice
            ),
            served,
        )
        for model, served in models
    ]


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
            item = value()
            if key in out:  # a repeated field (parameters): its values in order
                out[key] = [*(out[key] if isinstance(out[key], list) else [out[key]]), item]
            else:
                out[key] = item
        pos += 1
        return out

    return message(None)
