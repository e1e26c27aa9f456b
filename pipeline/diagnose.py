"""Where a deployed artifact's error enters, in the names of the PyTorch modules: ``python -m pipeline.diagnose``.

``python -m pipeline.diagnose build/model-int8.onnx build/model.xml --checkpoint CK --data DIR [--limit N] [--json]``

PyTorch fp32 (forward hooks) and each artifact run on the same images. For every module's output in execution
order (the patch embedding, each block, each stage transition, the final norm and the head), the two are compared:

* ``cosine``: the mean over images of the cosine between the flattened outputs;
* ``rel_error``: ``||artifact - pytorch|| / ||pytorch||`` over all the images;
* ``growth``: ``rel_error`` divided by the previous module's: how much the error grows across this module.

The artifact's intermediate outputs are its own tensors: ONNX Runtime runs a copy of the graph with each module's
last node's output added as a graph output; OpenVINO compiles the IR once more with each module's last operation
as a model output; for a TensorRT plan, a diagnostic copy is built from the graph the plan was built from (the
``.onnx`` beside it whose SHA-256 its sidecar records), with the same flavour and batch profile and each module's
output marked as a network output, and run on the GPU. All three find a module's nodes by name (every exported
node is ``MODULE/op``, ``common.module_names``). Marking an output keeps TensorRT from fusing across it, so the
diagnostic plan's error at a module can differ a little from the deployed plan's; its final logits are compared
too. A plan needs its flavour and a GPU it runs on: without them the command says so in one line and names the
graph to diagnose instead.

The culprits are the modules where the error enters, most responsible first: ranked by how much each adds to the
relative error over the module before it (``rel_error - previous``), and listed while that is at least a tenth of
the largest step. The first module is compared with an exact input, so its whole error is its own.

It prints a table per artifact and writes a PNG of the relative error against depth, one line per runtime
(``--png``). ``--json`` prints ``{"modules": [{"module", "cosine", "rel_error", "growth"}, ...], "culprits": [...]}``
(a list of them, each with ``artifact`` and ``runtime``, for several artifacts). It exits 0 whether or not the
artifact passes its gates: it is a report.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import HelpFormatter, command
from common.errors import S2MLPv2Error, UsageError
from common.fileio import atomic_save_figure, new_figure
from common.module_names import block_outputs, module_of
from models.args import ModelArgs, load_model

__all__ = ["DiagnoseError", "Diagnosis", "diagnose", "main"]

CULPRIT_SHARE = 0.1  # a module is a culprit while its step is at least this share of the largest step


class DiagnoseError(S2MLPv2Error, RuntimeError):
    """The artifact cannot be diagnosed as given; the message says what to give instead."""


@dataclass
class Diagnosis:
    artifact: str
    runtime: str
    modules: list[dict[str, Any]] = field(default_factory=list)  # execution order: module, cosine, rel_error, growth
    culprits: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "runtime": self.runtime, "modules": self.modules, "culprits": self.culprits}

    def table(self) -> str:
        lines = [
            f"{self.runtime}: {self.artifact}",
            f"{'module':28s} {'cosine':>10s} {'rel error':>10s} {'growth':>8s}",
        ]
        for m in self.modules:
            growth = "-" if m["growth"] is None else f"{m['growth']:.2f}x"
            mark = f"  <- culprit {self.culprits.index(m['module']) + 1}" if m["module"] in self.culprits else ""
            lines.append(f"{m['module']:28s} {m['cosine']:10.6f} {m['rel_error']:10.2e} {growth:>8s}{mark}")
        lines.append(f"culprits, most responsible first: {', '.join(self.culprits) or 'none'}")
        return "\n".join(lines)


def compared_modules(model) -> list[str]:
    """The modules whose outputs are compared, in execution order: the model's children and the members of its
    containers (blocks of a stage), not the containers themselves, nor the parts inside a block."""
    import torch

    containers = (torch.nn.Sequential, torch.nn.ModuleList)
    found: list[str] = []

    def walk(module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, containers):
                walk(child, f"{path}.")
            else:
                found.append(path)

    walk(model, "")
    return found


def _reference(model, modules: Sequence[str], images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """PyTorch fp32's output of each module on ``images``, by forward hooks."""
    import torch

    outputs: dict[str, list[np.ndarray]] = {m: [] for m in modules}
    handles = []
    by_name = dict(model.named_modules())
    for name in modules:

        def hook(_module, _inputs, output, name=name) -> None:
            outputs[name].append(output.detach().float().numpy().copy())

        handles.append(by_name[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                model(torch.from_numpy(images[i : i + batch]))
    finally:
        for h in handles:
            h.remove()
    return {m: np.concatenate(v) for m, v in outputs.items() if v}


def _module_tensors(path: Path, modules: Sequence[str]):
    """(the ONNX graph at ``path``, its tensor holding each module's output)."""
    from common.onnx_meta import load_onnx

    graph = load_onnx(path, DiagnoseError, load_external_data=True)
    tensors = block_outputs(graph, modules)
    if not tensors:
        raise DiagnoseError(
            f"{path} names no node after a module (MODULE/op): it was exported before module names were recorded; "
            "export it again with this version (python build_engine.py, or python -m pipeline.export)"
        )
    return graph, tensors


def _mark_outputs(graph, tensors: dict[str, str]) -> None:
    """Add each module's tensor to the graph's outputs (once; the logits stay the first output), typed as ONNX's shape
    inference finds it (TensorRT's parser needs an output's type; where inference cannot tell, past a custom node, the
    graph input's type)."""
    import onnx

    present = {o.name for o in graph.graph.output}
    try:
        inferred = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(graph).graph.value_info}
    except Exception:  # noqa: BLE001 - inference is a help for the types, not a requirement
        inferred = {}
    fallback = graph.graph.input[0].type.tensor_type.elem_type
    for tensor in dict.fromkeys(tensors.values()):
        if tensor not in present:
            graph.graph.output.append(onnx.helper.make_tensor_value_info(tensor, inferred.get(tensor) or fallback, None))


def _onnx_outputs(path: Path, modules: Sequence[str], images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """ONNX Runtime's tensor for each module's output: the graph with those tensors added as outputs."""
    from engines.ort import make_session

    graph, tensors = _module_tensors(path, modules)
    _mark_outputs(graph, tensors)
    session = make_session(graph)
    names = [o.name for o in session.get_outputs()]
    wanted = list(dict.fromkeys(tensors.values()))
    runs = [session.run(wanted, {session.get_inputs()[0].name: images[i : i + batch]}) for i in range(0, len(images), batch)]
    by_tensor = {t: np.concatenate([r[k] for r in runs]).astype(np.float32) for k, t in enumerate(wanted) if t in names}
    return {m: by_tensor[t] for m, t in tensors.items() if t in by_tensor}


def _ir_outputs(path: Path, modules: Sequence[str], images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """OpenVINO's output of each module: the IR compiled again with each module's last operation as an output."""
    from engines.openvino import IRError, OpenVINORunner, operation_names, tap

    try:
        runner = OpenVINORunner(path)
    except IRError as e:
        raise DiagnoseError(str(e)) from None
    wanted = set(modules)
    last: dict[str, str] = {}
    for name in operation_names(runner):
        module = module_of(name)
        if module in wanted:
            last[module] = name
    if not last:
        raise DiagnoseError(
            f"{path} names no operation after a module (MODULE/op): it was built from a graph exported before module "
            "names were recorded; build it again with this version"
        )
    order = list(last)
    run = tap(runner, [last[m] for m in order])
    runs = [run(images[i : i + batch]) for i in range(0, len(images), batch)]
    return {m: np.concatenate([r[1 + k] for r in runs]) for k, m in enumerate(order)}


def plan_graph(plan: Path) -> Path:
    """The ONNX graph ``plan`` was built from: the ``.onnx`` beside it whose SHA-256 the plan's sidecar records."""
    from common.fingerprint import sha256_file
    from engines.sidecar import EngineMismatchError, read_sidecar

    try:
        wanted = read_sidecar(plan).onnx_sha256
    except EngineMismatchError as e:
        raise DiagnoseError(str(e)) from None
    for candidate in sorted(plan.parent.glob("*.onnx")):
        if sha256_file(candidate) == wanted:
            return candidate
    raise DiagnoseError(
        f"{plan}: the graph it was built from (SHA-256 {wanted[:12]}...) is not beside it; "
        "diagnosing a plan builds a copy from that graph: put it in the plan's folder"
    )


def diagnostic_plan(plan: Path, modules: Sequence[str], folder: Path) -> tuple[Path, dict[str, str]]:
    """Build, in ``folder``, a copy of ``plan`` from its graph with each module's output marked as a network output.

    The same flavour and batch profile as the plan; TensorRT for RTX builds for this machine's GPU where there is
    one, else for the plan's compute capabilities (its builder needs no GPU). Returns the plan and each module's
    output tensor name."""
    import onnx

    from engines.build import BuildSettings, build_plan
    from engines.sidecar import read_sidecar
    from engines.trt import cuda_device

    sidecar = read_sidecar(plan)
    graph, tensors = _module_tensors(plan_graph(plan), modules)
    _mark_outputs(graph, tensors)
    source = folder / "diagnose.onnx"
    onnx.save(graph, str(source))
    gpu = cuda_device()
    targets = None if sidecar.flavour == "tensorrt" else ((gpu[1],) if gpu else sidecar.compute_capabilities)
    settings = BuildSettings(sidecar.batch_profile, timing_cache=None, flavour=sidecar.flavour, compute_capabilities=targets)
    return build_plan(source, folder / "diagnose.plan", settings).plan, tensors


def _plan_outputs(path: Path, modules: Sequence[str], images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """TensorRT's output of each module: a diagnostic copy of the plan, each module's output marked, run on the GPU."""
    import tempfile

    from engines.runtime import TensorRTRunner

    with tempfile.TemporaryDirectory(prefix="s2mlpv2-diagnose-") as tmp:
        diagnostic, tensors = diagnostic_plan(path, modules, Path(tmp))
        runner = TensorRTRunner(diagnostic)
        lo, _, hi = runner.sidecar.batch_profile
        step, runs = max(lo, min(batch, hi)), []
        try:
            for i in range(0, len(images), step):
                chunk = images[i : i + step]
                padded = np.concatenate([chunk, np.repeat(chunk[-1:], lo - len(chunk), axis=0)]) if len(chunk) < lo else chunk
                runs.append({name: out[: len(chunk)] for name, out in runner.outputs(padded).items()})
        finally:
            runner.close()
    return {m: np.concatenate([r[t] for r in runs]) for m, t in tensors.items() if t in runs[0]}


def _check_plan_runs_here(path: Path) -> None:
    """Refuse, in one line, a plan this machine cannot run (no flavour, no GPU it supports), naming the graph instead."""
    from engines.runtime import check_plan_file
    from engines.sidecar import EngineMismatchError
    from engines.trt import TensorRTUnavailable, cuda_device, flavour

    try:
        sidecar = check_plan_file(path)
        fl = flavour(sidecar.flavour)
        fl.module()
    except (EngineMismatchError, TensorRTUnavailable) as e:
        raise DiagnoseError(f"{path.name}: {e}") from None
    gpu = cuda_device()
    if gpu is None or not fl.runs_plan_built_for(sidecar.compute_capabilities, sidecar.hardware_compatible, gpu[1]):
        where = "this machine has no CUDA GPU" if gpu is None else f"this {gpu[0]} (compute capability {gpu[1]}) does not run it"
        try:
            instead = f"diagnose the graph it was built from, {plan_graph(path).name}, on ONNX Runtime or as an IR"
        except DiagnoseError:
            instead = "diagnose the ONNX graph it was built from (its SHA-256 is in the plan's sidecar)"
        raise DiagnoseError(
            f"{path.name}: diagnosing a {fl.title} plan runs a copy of it with each module's output marked, on a GPU it "
            f"runs on; {where}; {instead}"
        )


def _runtime(path: Path) -> tuple[str, Callable]:
    if path.suffix == ".onnx":
        return "onnxruntime", _onnx_outputs
    if path.suffix == ".xml":
        return "openvino", _ir_outputs
    if path.suffix in (".plan", ".engine"):
        from engines.sidecar import EngineMismatchError, read_sidecar

        try:
            return read_sidecar(path).flavour, _plan_outputs
        except EngineMismatchError as e:
            raise DiagnoseError(f"{path.name}: {e}") from None
    raise DiagnoseError(f"{path}: give an .onnx graph (ONNX Runtime), an OpenVINO .xml or a TensorRT .plan")


def compare(reference: dict[str, np.ndarray], deployed: dict[str, np.ndarray], order: Sequence[str]) -> list[dict[str, Any]]:
    """Per module in ``order`` that both hold: cosine, relative error and growth over the module before it."""
    rows: list[dict[str, Any]] = []
    previous = None
    for module in order:
        if module not in reference or module not in deployed:
            continue
        a = reference[module].reshape(len(reference[module]), -1).astype(np.float64)
        b = deployed[module].astype(np.float64)
        if b.size != a.size:
            continue  # a tensor of another layout: not comparable element by element
        b = b.reshape(a.shape)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
        rel = float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-30))
        growth = None if previous is None else rel / max(previous, 1e-12)
        rows.append({"module": module, "cosine": float(cos.mean()), "rel_error": rel, "growth": growth})
        previous = rel
    return rows


def culprits(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The modules where the error enters, most responsible first (the module docstring says how)."""
    steps, previous = [], 0.0
    for row in rows:
        steps.append((row["rel_error"] - previous, row["module"]))
        previous = row["rel_error"]
    largest = max((s for s, _ in steps), default=0.0)
    if largest <= 0:
        return []
    return [m for s, m in sorted(steps, key=lambda sm: -sm[0]) if s >= CULPRIT_SHARE * largest]


def diagnose(artifacts: Sequence[Path], model, images: np.ndarray, batch: int = 16) -> list[Diagnosis]:
    """One :class:`Diagnosis` per artifact, against ``model`` (PyTorch fp32) on preprocessed ``images``."""
    model = model.eval()
    order = compared_modules(model)
    reference = _reference(model, order, images, batch)
    found = []
    for path in artifacts:
        runtime, outputs = _runtime(Path(path))
        rows = compare(reference, outputs(Path(path), order, images, batch), order)
        if not rows:
            raise DiagnoseError(f"{path}: no module's output could be compared with PyTorch's")
        found.append(Diagnosis(str(path), runtime, rows, culprits(rows)))
    return found


def plot(diagnoses: Sequence[Diagnosis], path: Path) -> None:
    """Relative error against depth, one line per runtime, culprits marked."""
    fig, ax = new_figure(figsize=(max(7.0, 0.35 * max(len(d.modules) for d in diagnoses)), 4.0))
    for d in diagnoses:
        x = np.arange(len(d.modules))
        y = [max(m["rel_error"], 1e-9) for m in d.modules]
        ax.plot(x, y, marker="o", label=f"{d.runtime} ({Path(d.artifact).name})")
        for k, m in enumerate(d.modules):
            if d.culprits and m["module"] == d.culprits[0]:
                ax.annotate(m["module"], (k, y[k]), textcoords="offset points", xytext=(4, 6), fontsize=8, color="#c00")
    names = [m["module"] for m in diagnoses[0].modules]
    ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("relative error vs PyTorch fp32")
    ax.set_title("where the error enters (first culprit marked)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.diagnose", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument(
        "artifacts",
        nargs="+",
        type=Path,
        metavar="ARTIFACT",
        help="an .onnx graph, an OpenVINO .xml, or a TensorRT .plan (needs a GPU it runs on); or several",
    )
    ModelArgs(
        checkpoint_required=True, checkpoint_help="the reference: the checkpoint the artifacts were built from"
    ).add_to_parser(p)
    p.add_argument("--data", type=Path, required=True, help="images: an ImageFolder tree or a folder of images")
    p.add_argument("--limit", type=int, default=64, help="images to compare on, spread over the classes")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON (the table goes to stderr)")
    p.add_argument("--png", type=Path, help="the figure; default: diagnose.png beside the first artifact")
    return p


@command()
def main(argv: Sequence[str] | None = None) -> int:
    import json
    import sys

    from calibration.dataset import load_images

    args = build_parser().parse_args(argv)
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    for path in args.artifacts:
        if not path.is_file():
            raise DiagnoseError(f"{path} does not exist; give an .onnx graph, an .xml IR or a .plan of a build")
        _runtime(path)  # an unsupported kind is refused before anything loads
        if path.suffix in (".plan", ".engine"):
            _check_plan_runs_here(path)
    model = load_model(args.checkpoint, None, "the reference")
    images = load_images(args.data, model.config.preprocessing, args.limit)[0]
    diagnoses = diagnose(args.artifacts, model, images)
    png = args.png or args.artifacts[0].with_name("diagnose.png")
    plot(diagnoses, png)
    tables = "\n\n".join(d.table() for d in diagnoses) + f"\n\nwrote {png}"
    if args.json:
        print(tables, file=sys.stderr)
        out = [d.to_dict() for d in diagnoses]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
    else:
        print(tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
