"""Choose how a build is served, by measurement, under a latency budget: ``python -m pipeline.tune BUILD --p99-ms MS``.

``python -m pipeline.tune BUILD --p99-ms 50 [--concurrency 8] [--minutes 10] [--out tune.md]``

It starts real servers (``pipeline.serve``) on free loopback ports, one per configuration, and loads each with the
given numbers of concurrent clients, as ``pipeline.loadtest`` does. The configurations it tries, the defaults first:

* the dynamic batcher's queue delay (0, 100, 500, 2,000 us) and preferred batch sizes;
* the largest batch (the build's profile, and its middle size);
* model instances (1, 2), and for an OpenVINO route the streams and threads per instance that go with them (two
  instances of one stream each, or one instance of two streams, on this machine's cores).

Each configuration is measured twice at every concurrency, back to back on the same server. A configuration is
within budget when every measurement's p99 is at most ``--p99-ms``; its score is the mean images/s over the
concurrencies. The best within budget wins only when its worse repeat beats the defaults' better repeat: an advantage
larger than the spread between repeats. Otherwise the defaults stay, and the report says so. The search is bounded by
``--minutes``: a configuration that would not finish in time is skipped, and the report names it.

It writes a markdown report, a PNG of the Pareto front (throughput against p99, the chosen point marked) and a JSON,
and records the choice in the build (``serving.json``, ``deployment.tuned``): ``serve`` uses it by default and says
so on its ready line; ``--triton-repo`` writes it into ``config.pbtxt``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import HelpFormatter, command
from common.errors import S2MLPv2Error, UsageError
from common.fileio import atomic_paths, atomic_save_figure, atomic_write_json, atomic_write_text, new_figure

from .tuned import ServingChoice

__all__ = ["TuneError", "Point", "candidates", "choose", "pareto", "tune", "main"]

REPEATS = 2


class TuneError(S2MLPv2Error, RuntimeError):
    """The search cannot run; the message says what to change."""


@dataclass
class Point:
    """One configuration, measured: per repeat, the images/s and p99 at each concurrency."""

    choice: ServingChoice
    label: str
    throughput: list[float] = field(default_factory=list)  # per repeat: mean images/s over the concurrencies
    p99_ms: list[float] = field(default_factory=list)  # per repeat: the worst p99 over the concurrencies
    avg_batch: list[float | None] = field(default_factory=list)  # per repeat, at the highest concurrency: server-side
    queue_ms: list[float | None] = field(default_factory=list)
    compute_ms: list[float | None] = field(default_factory=list)
    levels: list[list[dict[str, Any]]] = field(default_factory=list)  # per repeat, every concurrency: loadtest's level
    errors: int = 0
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return float(np.mean(self.throughput)) if self.throughput else 0.0

    @property
    def worst_p99(self) -> float:
        return max(self.p99_ms) if self.p99_ms else float("inf")

    def within(self, budget_ms: float) -> bool:
        return bool(self.throughput) and self.errors == 0 and self.worst_p99 <= budget_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "settings": self.choice.settings(),
            "throughput_by_repeat": self.throughput,
            "p99_ms_by_repeat": self.p99_ms,
            "avg_batch_by_repeat": self.avg_batch,
            "queue_ms_by_repeat": self.queue_ms,
            "compute_ms_by_repeat": self.compute_ms,
            "levels_by_repeat": self.levels,
            "images_per_s": self.score,
            "worst_p99_ms": self.worst_p99,
            "errors": self.errors,
            "seconds": round(self.seconds, 1),
        }


def candidates(max_batch: int, opt_batch: int, openvino: bool, cores: int) -> list[tuple[str, ServingChoice]]:
    """The configurations to try, in order, the defaults first (the module docstring lists them)."""
    found: list[tuple[str, ServingChoice]] = [("defaults", ServingChoice())]
    for delay in (0, 500, 2000):
        found.append((f"queue delay {delay} us", ServingChoice(queue_delay_us=delay)))
    found.append((f"prefer batch {max_batch}, delay 500 us", ServingChoice(queue_delay_us=500, preferred_batch=(max_batch,))))
    if opt_batch < max_batch:
        found.append((f"batches up to {opt_batch}", ServingChoice(max_batch=opt_batch)))
    if cores >= 2:
        half = max(1, cores // 2)
        if openvino:
            found.append((f"2 instances x {half} threads", ServingChoice(instances=2, threads=half)))
            found.append(("1 instance, 2 streams", ServingChoice(streams=2)))
        else:
            found.append((f"2 instances x {half} threads", ServingChoice(instances=2, threads=half)))
    return found


def _flags(choice: ServingChoice) -> list[str]:
    """serve's command line for ``choice``: every setting explicit, and the build's own serving.json ignored."""
    flags = ["--untuned", "--queue-delay-us", str(choice.queue_delay_us), "--instances", str(choice.instances)]
    if choice.max_batch:
        flags += ["--max-batch", str(choice.max_batch)]
    if choice.preferred_batch:
        flags += ["--preferred-batch", *map(str, choice.preferred_batch)]
    if choice.threads:
        flags += ["--threads", str(choice.threads)]
    if choice.streams:
        flags += ["--streams", str(choice.streams)]
    return flags


def measure(build: Path, label: str, choice: ServingChoice, concurrency: Sequence[int], requests: int, seconds: float) -> Point:
    """Start a server with ``choice``, warm it, measure every concurrency ``REPEATS`` times, stop it."""
    from .loadtest import WARMUP_REQUESTS, _inputs, _served, run_level, start_server, stop_server

    model_name, card = _served(build)
    inputs, _ = _inputs(build, card, None)
    point = Point(choice, label)
    t0 = time.monotonic()
    server = start_server(build, _flags(choice))
    try:
        run_level(server.grpc_url, model_name, inputs, 2, WARMUP_REQUESTS, seconds, "warm-up")
        for _ in range(REPEATS):
            levels = [run_level(server.grpc_url, model_name, inputs, c, requests, seconds, label) for c in concurrency]
            point.throughput.append(float(np.mean([lv.images_per_s for lv in levels])))
            point.p99_ms.append(max(lv.percentile(99) for lv in levels))
            point.avg_batch.append(levels[-1].avg_batch)
            point.queue_ms.append(levels[-1].queue_ms)
            point.compute_ms.append(levels[-1].compute_ms)
            point.levels.append([lv.to_dict() for lv in levels])
            point.errors += sum(lv.errors for lv in levels)
    finally:
        stop_server(server)
    point.seconds = time.monotonic() - t0
    return point


def pareto(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both throughput (higher) and p99 (lower)."""
    return [
        p
        for p in points
        if not any(
            q.score >= p.score and q.worst_p99 <= p.worst_p99 and (q.score, q.worst_p99) != (p.score, p.worst_p99) for q in points
        )
    ]


def choose(points: Sequence[Point], budget_ms: float) -> tuple[Point, str]:
    """The chosen point and why (the module docstring has the rule); ``points[0]`` is the defaults."""
    default = points[0]
    within = [p for p in points if p.within(budget_ms)]
    if not within:
        return default, f"no configuration kept p99 within {budget_ms:g} ms: the defaults stay; raise --p99-ms or lower the load"
    best = max(within, key=lambda p: p.score)
    if best is default:
        return default, "the defaults measured best within the budget"
    if not default.within(budget_ms):
        return (
            best,
            f"the defaults exceed the budget (p99 {default.worst_p99:.1f} ms); {best.label} keeps it at the best throughput",
        )
    if min(best.throughput) > max(default.throughput):
        return best, (
            f"{best.label}: {best.score:.1f} images/s against the defaults' {default.score:.1f}; its worse repeat "
            f"({min(best.throughput):.1f}) beats their better one ({max(default.throughput):.1f})"
        )
    return default, (
        f"{best.label} measured {best.score:.1f} images/s against the defaults' {default.score:.1f}, within the spread "
        f"between repeats ({min(best.throughput):.1f}..{max(best.throughput):.1f} against "
        f"{min(default.throughput):.1f}..{max(default.throughput):.1f}): the defaults stay"
    )


def tune(
    build: Path,
    budget_ms: float,
    concurrency: Sequence[int],
    minutes: float,
    requests: int,
    seconds: float,
    say=print,
) -> dict[str, Any]:
    """Measure the candidates within ``minutes``; the report as a dict (``points``, ``skipped``, ``chosen``, ``why``)."""
    from engines.package import Package

    from .deployed import choose_artifact

    package = Package.read(build)
    lo, opt, hi = package.batch_profile
    openvino = choose_artifact(build).artifact.suffix == ".xml"
    todo = candidates(hi, opt, openvino, os.cpu_count() or 1)
    from .loadtest import LoadTestError

    deadline = time.monotonic() + minutes * 60
    points: list[Point] = []
    skipped: list[str] = []
    failed: list[dict[str, str]] = []
    for label, choice in todo:
        left = deadline - time.monotonic()
        expected = max((p.seconds for p in points), default=0.0)
        if points and expected > left:
            skipped.append(label)
            continue
        say(f"[tune] {label}: {choice.describe()} ...")
        point = None
        for attempt in (1, 2):  # a server that did not start is tried once more: its start can time out under load
            try:
                point = measure(build, label, choice, concurrency, requests, seconds)
                break
            except LoadTestError as e:
                say(f"[tune] {label}: {e}" + ("; trying once more" if attempt == 1 else ""))
                reason = str(e)
        if point is None:
            if not points:
                raise TuneError(
                    f"the server with the default settings did not start twice ({reason}); run python -m pipeline.serve on the build to see why"
                )
            failed.append({"label": label, "error": reason})
            continue
        say(
            f"[tune] {label}: {', '.join(f'{t:.1f}' for t in point.throughput)} images/s, p99 "
            f"{', '.join(f'{q:.1f}' for q in point.p99_ms)} ms ({point.seconds:.0f} s)"
        )
        points.append(point)
    chosen, why = choose(points, budget_ms)
    front = pareto(points)
    return {
        "build": str(build),
        "p99_budget_ms": budget_ms,
        "concurrency": list(concurrency),
        "repeats": REPEATS,
        "requests": requests,
        "seconds": seconds,
        "minutes": minutes,
        "points": [p.to_dict() | {"pareto": p in front, "within_budget": p.within(budget_ms)} for p in points],
        "skipped": skipped,
        "failed": failed,
        "chosen": chosen.label,
        "chosen_settings": chosen.choice.settings(),
        "why": why,
        "_chosen": chosen,
    }


def _markdown(report: dict[str, Any], command_line: str) -> str:
    lines = [
        f"# Serving tuned for {report['build']}",
        "",
        f"Budget: p99 at most {report['p99_budget_ms']:g} ms with {', '.join(map(str, report['concurrency']))} concurrent "
        f"client(s); each configuration measured {report['repeats']} times ({report['requests']} requests or "
        f"{report['seconds']:g} s per concurrency and repeat). Command: `{command_line}`",
        "",
        "Server side, from Triton's statistics at the highest concurrency, per repeat: images per executed batch, how "
        "many executions of each size (the last repeat), and each request's mean time in Triton's queue and computing. "
        "The JSON has every concurrency level of every repeat, as pipeline.loadtest reports them.",
        "",
        "| configuration | images/s (repeats) | p99 ms (repeats) | avg batch | executed batches | queue ms | compute ms "
        "| within budget | Pareto |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def each(values) -> str:
        return ", ".join("–" if v is None else f"{v:.2f}" for v in values)

    for p in report["points"]:
        last = p["levels_by_repeat"][-1][-1] if p.get("levels_by_repeat") else {}
        histogram = ", ".join(f"{b}: {n}" for b, n in (last.get("batch_histogram") or {}).items()) or "–"
        lines.append(
            f"| {p['label']} | {', '.join(f'{t:.1f}' for t in p['throughput_by_repeat'])} | "
            f"{', '.join(f'{q:.1f}' for q in p['p99_ms_by_repeat'])} | {each(p['avg_batch_by_repeat'])} | {histogram} | "
            f"{each(p['queue_ms_by_repeat'])} | {each(p['compute_ms_by_repeat'])} | "
            f"{'yes' if p['within_budget'] else 'no'} | {'yes' if p['pareto'] else ''} |"
        )
    lines += ["", f"**Chosen: {report['chosen']}.** {report['why']}."]
    if report["skipped"]:
        lines += ["", f"Skipped for time (--minutes {report['minutes']:g}): {', '.join(report['skipped'])}."]
    if report["failed"]:
        lines += [
            "",
            "Not measured, the server did not start (twice):",
            *[f"- {f['label']}: {f['error']}" for f in report["failed"]],
        ]
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    fig, ax = new_figure(figsize=(6.5, 4.2))
    points = report["points"]
    ax.scatter([p["worst_p99_ms"] for p in points], [p["images_per_s"] for p in points], color="#888", label="measured")
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["worst_p99_ms"])
    ax.plot(
        [p["worst_p99_ms"] for p in front], [p["images_per_s"] for p in front], color="#4c72b0", marker="o", label="Pareto front"
    )
    chosen = next(p for p in points if p["label"] == report["chosen"])
    ax.scatter(
        [chosen["worst_p99_ms"]],
        [chosen["images_per_s"]],
        marker="*",
        s=250,
        color="#d62728",
        zorder=5,
        label=f"chosen: {chosen['label']}",
    )
    ax.axvline(report["p99_budget_ms"], color="k", ls="--", lw=1, label="p99 budget")
    for p in points:
        ax.annotate(p["label"], (p["worst_p99_ms"], p["images_per_s"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("p99 latency, worst repeat (ms)")
    ax.set_ylabel("images/s, mean of repeats")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    from engines.package import SERVING_FILE

    p = argparse.ArgumentParser(
        prog="python -m pipeline.tune", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("build", type=Path, help="a build directory (build_engine.py --out)")
    p.add_argument("--p99-ms", type=float, required=True, help="the latency budget: p99 per request, in milliseconds")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8], help="concurrent clients the budget holds for")
    p.add_argument(
        "--minutes", type=float, default=10.0, help="time for the whole search; configurations that do not fit are skipped"
    )
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency and repeat (at most)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per concurrency and repeat (at most)")
    p.add_argument("--out", type=Path, default=Path("tune.md"), help="the report; .png and .json are written beside it")
    p.add_argument(
        "--no-record", action="store_true", help=f"report only; do not write {SERVING_FILE} (the choice) into the build"
    )
    return p


@command("nothing was recorded; the servers it started are stopped")
def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    for flag, value in (
        ("--p99-ms", args.p99_ms),
        ("--minutes", args.minutes),
        ("--requests", args.requests),
        ("--seconds", args.seconds),
    ):
        if value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if min(args.concurrency) < 1:
        raise UsageError(f"--concurrency must be at least 1, got {min(args.concurrency)}")
    if not args.build.is_dir():
        raise UsageError(f"{args.build} is not a build directory; give the output directory of build_engine.py (--out)")
    report = tune(args.build, args.p99_ms, args.concurrency, args.minutes, args.requests, args.seconds)
    chosen: Point = report.pop("_chosen")
    command_line = " ".join(["python -m pipeline.tune", *(argv if argv is not None else sys.argv[1:])])
    out = args.out
    with atomic_paths(out, out.with_suffix(".png"), out.with_suffix(".json")) as (md, png, js):
        atomic_write_text(md, _markdown(report, command_line))
        _plot(report, png)
        atomic_write_json(js, report | {"command": command_line})
    print(_markdown(report, command_line))
    if not args.no_record:
        recorded = ServingChoice(
            **chosen.choice.settings(),
            provenance={"command": command_line, "why": report["why"], "images_per_s": chosen.score, "p99_ms": chosen.worst_p99},
        ).write(args.build)
        print(f"recorded {recorded}: python -m pipeline.serve {args.build} serves with it")
    print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
