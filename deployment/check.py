"""The package proves itself where it runs: ``python -m pipeline.check BUILD_DIR``.

A build directory copied to another machine (a GPU server, a CPU server, a container) is checked
there, against what the build recorded in its ``package.json`` (``engines.package``):

1. **files**: every file the package lists, against its recorded SHA-256. A changed or missing
   file is named, and nothing is run.
2. **environment**: the runtime versions, the CPU (its name, and the capabilities an OpenVINO IR's
   precision hint needs) and the GPU (what a plan was built for), against the build machine's. Each
   difference is one line, with its consequence. Differences are reported, not judged: the sample
   below judges what they do to the answers.
3. **sample**: the route this machine runs (the one ``DeployedModel`` and ``deployment.serve``
   choose; on a GPU that the plan was built for, the plan) classifies the stored sample, and its
   logits are judged by the precision's gates against the PyTorch fp32 logits stored at build time.
   The sample has a few dozen images and is judged as unlabeled (top-1 agreement and logits cosine;
   int8: logits cosine), since a label-based drop on so few images is noise.
4. **timing**: a short run at the batch the build timed, shown as a ratio to the build's p50.
   For information only: another machine is expected to differ.

Exit status: 0 pass, 1 fail (a file, or the sample's gates), 2 usage error (not a package, an
unknown backend). ``deployment.serve`` runs the same check before it reports ready.

Run it on a GPU machine and the plan is what runs: that is how a TensorRT for RTX plan built on a
CPU-only machine is verified on the machine it was built for.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cli import HelpFormatter, command, report_error
from common.errors import EXPECTED_ERRORS, UsageError
from common.timing import time_fn

__all__ = ["CheckReport", "check_package", "check_files", "environment_differences", "main"]


@dataclass
class CheckReport:
    """What the check found; ``lines`` is the transcript, ``passed`` the verdict."""

    build: str
    files: list[str] = field(default_factory=list)  # problems: "model.bin: changed since the build ..."
    environment: list[str] = field(default_factory=list)  # differences, each with its consequence
    route: str = ""
    sample: dict[str, Any] | None = None  # {"images", "precision", "metrics", "gates": [...], "passed"}
    timing: dict[str, Any] | None = None  # {"batch", "p50_ms", "build_p50_ms", "ratio"}
    lines: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.files and self.sample is not None and bool(self.sample["passed"])

    @property
    def summary(self) -> str:
        """One line: what passed, or what failed."""
        if self.files:
            return f"{len(self.files)} file(s) differ from the build: {'; '.join(self.files)}"
        if self.sample is None:
            return "the sample was not run"
        gates = ", ".join(
            f"{g['metric']} {g['value']:.6g} {g['op']} {g['threshold']}" for g in self.sample["gates"] if g["value"] is not None
        )
        verdict = "pass" if self.sample["passed"] else "FAIL"
        return f"{self.sample['images']} sample images {verdict} the {self.sample.get('gates_for', self.sample['precision'])} gates ({gates})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "build": self.build,
            "passed": self.passed,
            "files": self.files,
            "environment": self.environment,
            "route": self.route,
            "sample": self.sample,
            "timing": self.timing,
        }


def check_files(package) -> list[str]:
    """One line per listed file that is missing or whose content is not what the build wrote."""
    from common.fileio import sha256_file

    problems = []
    for name, digest in sorted(package.files.items()):
        path = package.path(name)
        if not path.is_file():
            problems.append(f"{name}: missing (the build wrote it; copy the whole build directory)")
        elif sha256_file(path) != digest:
            problems.append(
                f"{name}: changed since the build (its SHA-256 differs from package.json's); rebuild or copy it again"
            )
    return problems


_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}


def environment_differences(package, artifact: Path) -> list[str]:
    """How this machine differs from the build machine, for what ``artifact`` needs; one line each, with the consequence."""
    from common.versions import cpu_name, tool_versions

    now, then = tool_versions(), package.built.get("tools", {})
    lines = []
    route = package.route(artifact=artifact.name)
    runtime = route.runtime if route is not None else ("onnxruntime" if artifact.suffix == ".onnx" else None)
    tool = {"tensorrt-rtx": "tensorrt_rtx"}.get(runtime, runtime)
    recorded = (route.needs.get("runtime_version") if route is not None else None) or then.get(tool or "")
    if tool and recorded and now.get(tool) != recorded:
        lines.append(
            f"{tool} {recorded} at build, {now.get(tool) or 'not installed'} here: {artifact.name} is run by another version; "
            "the sample below says whether its answers still pass"
        )
    if then.get("pillow") and now.get("pillow") != then["pillow"]:
        lines.append(
            f"pillow {then['pillow']} at build, {now.get('pillow') or 'not installed'} here: decoding and resizing may differ "
            "in the last bit; the sample below runs this machine's preprocessing"
        )
    cpu = cpu_name()
    if package.built.get("cpu") and package.built["cpu"] != cpu:
        lines.append(f"CPU: built on {package.built['cpu']}, running on {cpu}: the timing ratio compares two machines")
    if route is not None and route.runtime == "openvino":
        hint = route.needs.get("hint")
        needed = _CAPABILITY.get(hint or "")
        if needed:
            from engines.openvino import OpenVINOUnavailable, cpu_facts

            try:
                capabilities = cpu_facts()[1]
            except OpenVINOUnavailable:
                capabilities = ()
            if needed not in capabilities:
                lines.append(
                    f"{artifact.name} was verified computing {hint} (INFERENCE_PRECISION_HINT {hint}); this CPU lacks {needed}, "
                    "so OpenVINO computes in another precision here: answers and speed differ from the build's"
                )
    if route is not None and route.needs.get("cpu") and route.needs["cpu"] != cpu:
        lines.append(
            f"{artifact.name} was optimized by ONNX Runtime on {route.needs['cpu']}; on {cpu} its saved optimizations may not "
            "fit (run the portable graph with --backend onnxruntime on a package built with another backend, or rebuild here)"
        )
    plan = package.plan_route
    if plan is not None and plan.artifact != artifact.name:
        from .deployed import plan_runs_here

        runs, why = plan_runs_here(package.path(plan.artifact))
        if not runs:
            lines.append(f"{plan.artifact} is not run here ({why}): {artifact.name} is checked instead")
    return lines


def check_package(
    build: str | Path, backend: str = "auto", timing_seconds: float = 1.0, model=None, files_checked: bool = False
) -> CheckReport:
    """Run the check (the module docstring's steps) on ``build``; raises ``UsageError`` for a directory that is no package.

    ``model``: the ``DeployedModel`` already opened from ``build`` (serve passes its own), else it is opened here;
    ``files_checked``: the caller has just checked the files (serve does, before it opens the model).
    """
    import numpy as np

    from engines.package import Package, PackageError, read_sample

    from .deployed import DeployedModel

    try:
        package = Package.read(build)
    except PackageError as e:
        raise UsageError(str(e)) from None
    report = CheckReport(str(build))
    say = report.lines.append
    say(f"check: {package.directory} ({package.name}, {package.precision}), package version {package.version}")
    report.files = [] if files_checked else check_files(package)
    if report.files:
        say(f"files: {len(report.files)} of {len(package.files)} differ from the build:")
        report.lines += [f"  {line}" for line in report.files]
        say("FAIL: the package is not what was built; nothing was run")
        return report
    say(f"files: {len(package.files)} checked against the build's SHA-256: all match")

    model = model or DeployedModel.open(package.directory, backend)
    artifact = Path(model.runner.path)
    report.route = model.description
    report.environment = environment_differences(package, artifact)
    if report.environment:
        say("environment: differs from the build machine:")
        report.lines += [f"  {line}" for line in report.environment]
    else:
        say("environment: the same runtime versions and CPU as the build")
    say(f"route: {model.description}")

    if not package.sample:
        raise UsageError(f"{package.directory} stores no check sample; rebuild it with this version of build_engine.py")
    sample = read_sample(package.path(package.sample["file"]))
    if sample.images:
        inputs = np.stack([model.preprocess(data, name) for data, name in zip(sample.images, sample.names)])
    else:
        inputs = np.asarray(sample.tensors, dtype=np.float32)
    logits = model.logits(inputs)
    from .gates import compare_logits

    result = compare_logits(
        sample.logits,
        logits,
        None,
        package.precision,
        sample.names,
        model.class_names,
        model.runner.backend,
        computes=getattr(model.runner, "precision", None),
    )
    gates = list(result.gates.values())
    m = result.metrics
    report.sample = {
        "images": len(sample),
        "precision": package.precision,
        "gates_for": result.gates_for,
        "metrics": {k: m[k] for k in ("top1_agreement", "cosine_min", "cosine_mean", "max_abs_diff")},
        "gates": [g.to_dict() for g in gates],
        "flips": result.flips,
        "passed": result.passed,
    }
    say(
        f"sample: {len(sample)} images ({'encoded, preprocessed here' if sample.images else 'tensors'}) against PyTorch fp32: "
        f"top-1 agreement {m['top1_agreement'] * 100:.2f} %, cosine min {m['cosine_min']:.6f} ({result.gate_note or package.precision + ' gates'})"
    )
    report.lines += [f"  {g}" for g in gates]

    if timing_seconds > 0:
        report.timing = _timing(package, model, artifact, inputs, timing_seconds)
        t = report.timing
        versus = f"; the build measured {t['build_p50_ms']:.2f} ms: {t['ratio']:.2f}x" if t.get("ratio") else ""
        say(f"timing: p50 {t['p50_ms']:.2f} ms at batch {t['batch']}{versus} (for information; not judged)")
    say("PASS" if report.passed else "FAIL: the route's answers are outside the gates")
    return report


def _timing(package, model, artifact: Path, inputs, seconds: float) -> dict[str, Any]:
    import numpy as np

    route = package.route(artifact=artifact.name)
    recorded = route.latency if route is not None and route.latency else None
    batch = recorded["batch"] if recorded else package.batch_profile[1]
    batch = max(model.min_batch, min(batch, model.max_batch))
    x = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])).astype(np.float32))
    times = time_fn(lambda: model.runner(x), warmup=2, iters=5, min_seconds=seconds)
    p50 = float(np.median(times))
    out = {"batch": batch, "p50_ms": p50, "runs": len(times)}
    if recorded and recorded.get("batch") == batch and recorded.get("p50_ms"):
        out.update(build_p50_ms=recorded["p50_ms"], ratio=p50 / recorded["p50_ms"])
    return out


def build_parser() -> argparse.ArgumentParser:
    from .deployed import BACKENDS

    p = argparse.ArgumentParser(
        prog="python -m pipeline.check",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "In order: every file against package.json's SHA-256 (a changed or missing one fails, and nothing runs); "
            "this machine against the build machine (each difference reported with its consequence, not judged); the "
            "route this machine runs on the stored sample, judged by the precision's gates against PyTorch fp32's "
            "logits; a short timing against the build's p50 (information). Exit status: 0 pass, 1 fail, 2 usage error. "
            "The package: docs/PACKAGE.md."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("build", type=Path, help="a build directory (build_engine.py --out)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="which route to check (auto: the one serve would run)")
    p.add_argument("--seconds", type=float, default=1.0, help="how long to time the route; 0 skips the timing")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the transcript")
    return p


@command("nothing was written")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seconds < 0:
        return report_error(UsageError(f"--seconds must be 0 or more, got {args.seconds}"))
    try:
        report = check_package(args.build, args.backend, args.seconds)
    except UsageError:
        raise  # a usage error: exit 2
    except EXPECTED_ERRORS as e:  # a build that cannot be run here: the check fails
        report_error(e)
        return 1
    print(json.dumps(report.to_dict(), indent=1) if args.json else "\n".join(report.lines))
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
