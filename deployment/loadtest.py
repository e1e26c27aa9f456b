"""Load test a Triton server of a deployed model: ``python -m pipeline.loadtest BUILD_DIR``.

It sweeps concurrency (default 1, 2, 4, 8, 16 clients, each sending its next request as soon as the
last one is answered) and reports, per level, requests/s, images/s, p50/p90/p99 latency and
errors, with dynamic batching on and off. Requests go to the float model
(``<model>_<precision>``) over gRPC with ``tritonclient``, carrying real images from
``--images`` (default: the images of the build's check sample, a few dozen evaluation images
stored in the package; else random inputs), preprocessed as the model card says.

By default it starts ``python -m pipeline.serve BUILD_DIR`` itself, once with dynamic batching
and once without, on free ports on 127.0.0.1, and stops each server by its process id when its
sweep is done. ``--url HOST:PORT`` measures a server that is already running (one sweep, with
whatever batching it has). Requests go to loopback addresses only. Every level is bounded in
number (``--requests``) and in time (``--seconds``).

Writes ``--out`` (markdown), a PNG beside it and a JSON with every figure.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.cli import HelpFormatter, command, report_error
from common.errors import S2MLPv2Error, UsageError
from common.fileio import atomic_paths, atomic_save_figure, atomic_write_json, atomic_write_text, new_figure
from common.processes import free_ports

__all__ = [
    "LoadLevel",
    "LoadTestError",
    "ServerStats",
    "dynamic_batching",
    "Server",
    "run_level",
    "check_loopback",
    "start_server",
    "stop_server",
    "main",
]

READY_TIMEOUT_S = 120
WARMUP_REQUESTS = 8  # per server, before the first level: the first runs pay for lazy initialisation


class LoadTestError(S2MLPv2Error, RuntimeError):
    """The load test cannot run (no server, a non-loopback address); the message says what to do."""


@dataclass
class LoadLevel:
    """What one concurrency level measured."""

    mode: str  # "dynamic batching" | "no dynamic batching" | "as running"
    concurrency: int
    requests: int
    errors: int
    seconds: float
    images_per_request: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    first_error: str | None = None
    # what the server did, from Triton's own statistics over this level (ServerStats); None where it could not be read
    dynamic_batching: bool | None = None
    avg_batch: float | None = None  # images per model execution
    batch_histogram: dict[int, int] = field(default_factory=dict)  # executed batch size -> executions
    queue_ms: float | None = None  # server-side mean per request: waiting in Triton's queue
    compute_ms: float | None = None  # server-side mean per request: input, model and output

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.images_per_request

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("latencies_ms")
        d.update(
            requests_per_s=self.requests_per_s,
            images_per_s=self.images_per_s,
            p50_ms=self.percentile(50),
            p90_ms=self.percentile(90),
            p99_ms=self.percentile(99),
        )
        return d


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of Triton's statistics for one model (``ModelStatistics``): cumulative counts and nanoseconds."""

    inferences: int  # images (each image of a batched request counts)
    executions: int  # model executions (a dynamically formed batch is one)
    requests: int  # successful requests
    queue_ns: int
    compute_ns: int  # compute_input + compute_infer + compute_output
    batches: dict[int, int]  # executed batch size -> executions

    @classmethod
    def read(cls, url: str, model_name: str) -> ServerStats:
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(url) as c:
            (m,) = c.get_inference_statistics(model_name).model_stats
        st = m.inference_stats
        return cls(
            int(m.inference_count),
            int(m.execution_count),
            int(st.success.count),
            int(st.queue.ns),
            int(st.compute_input.ns + st.compute_infer.ns + st.compute_output.ns),
            {int(b.batch_size): int(b.compute_infer.count) for b in m.batch_stats},
        )

    def since(self, before: ServerStats) -> dict:
        """What the server did between ``before`` and this snapshot: LoadLevel's server-side fields."""
        executions = self.executions - before.executions
        requests = self.requests - before.requests
        histogram = {b: n - before.batches.get(b, 0) for b, n in sorted(self.batches.items())}
        return {
            "avg_batch": (self.inferences - before.inferences) / executions if executions else None,
            "batch_histogram": {b: n for b, n in histogram.items() if n},
            "queue_ms": (self.queue_ns - before.queue_ns) / requests / 1e6 if requests else None,
            "compute_ms": (self.compute_ns - before.compute_ns) / requests / 1e6 if requests else None,
        }


def dynamic_batching(url: str, model_name: str) -> bool | None:
    """Whether the served model's configuration batches dynamically (None: the configuration could not be read)."""
    import tritonclient.grpc as grpcclient

    try:
        with grpcclient.InferenceServerClient(url) as c:
            return c.get_model_config(model_name).config.HasField("dynamic_batching")
    except Exception:  # tritonclient's and grpc's own errors: the report says "unknown"
        return None


def check_loopback(host: str) -> None:
    """Refuse any address that is not this machine's loopback: a load test is not sent elsewhere."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise LoadTestError(f"cannot resolve {host} ({e.strerror}); give a loopback address such as 127.0.0.1") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise LoadTestError(f"{host} is not a loopback address; this load test sends requests to 127.0.0.1 or localhost only")


@dataclass
class Server:
    """A ``deployment.serve`` process started here: its process, ports and what it printed."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    stdout: list[str] = field(default_factory=list)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"


def start_server(build: Path, extra: Sequence[str] = (), timeout_s: float = READY_TIMEOUT_S) -> Server:
    """Start ``deployment.serve`` on free loopback ports; returns once it printed its ready line (else stops it and raises)."""
    http, grpc, metrics = free_ports(3)
    cmd = [
        sys.executable,
        "-m",
        "pipeline.serve",
        str(build),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        *extra,
    ]
    server = Server(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), http, grpc, metrics)

    def read() -> None:
        for line in server.proc.stdout:
            server.stdout.append(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(line.startswith("ready:") for line in server.stdout):
            return server
        if server.proc.poll() is not None:
            err = server.proc.stderr.read().strip().splitlines()
            raise LoadTestError(f"the server exited with status {server.proc.returncode}: {err[-1] if err else 'no message'}")
        time.sleep(0.2)
    stop_server(server)
    raise LoadTestError(f"the server was not ready within {timeout_s:.0f} s")


def stop_server(server: Server, timeout_s: float = 30) -> int:
    """SIGTERM to the server's process id, then wait for it (SIGKILL after ``timeout_s``); returns its exit status."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return proc.returncode


def run_level(
    url: str, model_name: str, inputs: np.ndarray, concurrency: int, requests: int, seconds: float, mode: str, batch: int = 1
) -> LoadLevel:
    """``concurrency`` clients share ``requests`` requests of ``batch`` images each, for at most ``seconds``."""
    import tritonclient.grpc as grpcclient

    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def client(worker: int) -> None:
        nonlocal issued
        with grpcclient.InferenceServerClient(url) as c:
            k = worker
            while time.monotonic() < deadline:
                with lock:
                    if issued >= requests:
                        return
                    issued += 1
                x = np.take(inputs, range(k * batch, (k + 1) * batch), axis=0, mode="wrap")
                k += concurrency
                tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                t0 = time.perf_counter()
                try:
                    c.infer(model_name, [tensor], outputs=[grpcclient.InferRequestedOutput("logits")], client_timeout=seconds)
                except Exception as e:  # tritonclient raises InferenceServerException, grpc its own errors
                    with lock:
                        errors.append(" ".join(str(e).split())[:200])
                    continue
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1e3)

    before = _stats(url, model_name)
    t0 = time.perf_counter()
    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)
    elapsed = time.perf_counter() - t0
    after = _stats(url, model_name)
    settle = time.monotonic() + 2.0  # Triton may count the last responses a moment after the client has them
    while before is not None and after is not None and after.requests - before.requests < len(latencies):
        if time.monotonic() > settle:
            break
        time.sleep(0.05)
        after = _stats(url, model_name)
    level = LoadLevel(mode, concurrency, issued, len(errors), elapsed, batch, latencies, errors[0] if errors else None)
    level.dynamic_batching = dynamic_batching(url, model_name)
    if before is not None and after is not None:
        for key, value in after.since(before).items():
            setattr(level, key, value)
    return level


def _stats(url: str, model_name: str) -> ServerStats | None:
    try:
        return ServerStats.read(url, model_name)
    except Exception:  # a server without the statistics extension: the report leaves the server-side columns empty
        return None


def _served(build: Path):
    """(float model name, model card) of what ``deployment.serve`` serves for ``build`` (no runner is loaded here)."""
    from .deployed import artifact_precision, choose_artifact, read_card
    from .serve import model_names

    artifact = choose_artifact(build).artifact
    card = read_card(build if build.is_dir() else artifact)
    return model_names(card.config.name, artifact_precision(artifact))[0], card


def _inputs(build: Path, card, images: Path | None, count: int = 64) -> tuple[np.ndarray, str]:
    """Preprocessed inputs to send: ``images``, else the package's check-sample images, else random inputs."""
    if images is not None:
        from calibration.dataset import load_images

        x = load_images(images, card.preprocessing, count)[0]
        return x, f"{len(x)} images from {images}"
    if build.is_dir():
        from common.images import CardTransform, decode_rgb
        from engines.package import Package, PackageError, read_sample

        try:
            package = Package.read(build)
            sample = read_sample(package.path(package.sample["file"])) if package.sample else None
        except PackageError:
            sample = None
        if sample is not None and sample.images:
            transform = CardTransform(card.preprocessing)
            x = np.stack([transform(decode_rgb(data, name)) for data, name in zip(sample.images, sample.names)])
            return x, f"the package's {len(x)} check-sample images"
    x = np.random.default_rng(0).standard_normal((count, *card.preprocessing.input_size)).astype(np.float32)
    return x, f"{count} random inputs"


def _markdown(result: dict) -> str:
    lines = [
        f"# Load test: {result['model']} on {result['cpu']}",
        "",
        f"Server: `python -m pipeline.serve` (PyTriton, tritonserver); clients: tritonclient gRPC, each sending its next "
        f"request when the last is answered; {result['batch']} image(s) per request, {result['inputs']}. At most "
        f"{result['requests']} requests and {result['seconds']:.0f} s per level. Command: `{result['command']}`",
        "",
        *[f"The {mode} server said: `{line}`" for mode, line in result.get("servers", {}).items()],
        "",
        "Client side: requests/s, images/s and latency per request. Server side, from Triton's own statistics over "
        "the level: images per executed batch (mean, and how many executions of each size), and each request's mean "
        "time waiting in Triton's queue and computing (input, model, output).",
        "",
        "| batching | clients | requests | errors | requests/s | images/s | p50 ms | p90 ms | p99 ms "
        "| avg batch | executed batches | queue ms | compute ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(v, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    for r in result["levels"]:
        histogram = ", ".join(f"{b}: {n}" for b, n in r["batch_histogram"].items()) or "–"
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.1f} | "
            f"{r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{num(r['avg_batch'], '.2f')} | {histogram} | {num(r['queue_ms'], '.2f')} | {num(r['compute_ms'], '.2f')} |"
        )
    lines += ["", *[f"- {line}" for line in result["ratios"]]]
    errors = [r for r in result["levels"] if r["first_error"]]
    if errors:
        lines += [
            "",
            "First error per level:",
            *[f"- {r['mode']}, {r['concurrency']} clients: {r['first_error']}" for r in errors],
        ]
    return "\n".join(lines) + "\n"


def _plot(levels: list[dict], path: Path) -> None:
    fig, (left, right) = new_figure(ncols=2, figsize=(10, 3.8))
    for mode in dict.fromkeys(r["mode"] for r in levels):
        rows = [r for r in levels if r["mode"] == mode]
        left.plot([r["concurrency"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=mode)
        right.plot([r["concurrency"] for r in rows], [r["p50_ms"] for r in rows], marker="o", label=f"{mode}, p50")
        right.plot([r["concurrency"] for r in rows], [r["p99_ms"] for r in rows], marker="x", ls="--", label=f"{mode}, p99")
    for ax, ylabel in ((left, "images/s"), (right, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def _ratios(levels: list[LoadLevel]) -> list[str]:
    out = []
    for mode in dict.fromkeys(r.mode for r in levels):
        by = {r.concurrency: r for r in levels if r.mode == mode}
        if 1 in by and by[1].images_per_s:
            top = max(by)
            for c in sorted({8, top} & set(by)):
                out.append(f"{mode}: {c} clients give {by[c].images_per_s / by[1].images_per_s:.2f}x the images/s of 1 client")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.loadtest",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("build", type=Path, help="the build directory the server serves (names the model and its card)")
    p.add_argument("--url", help="gRPC HOST:PORT of a running server (loopback only); default: start deployment.serve twice")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="clients per level")
    p.add_argument("--requests", type=int, default=300, help="requests per level, at most")
    p.add_argument("--seconds", type=float, default=30.0, help="time per level, at most")
    p.add_argument("--batch", type=int, default=1, help="images per request")
    p.add_argument("--images", type=Path, help="images to send (default: the package's check-sample images, else random inputs)")
    p.add_argument("--queue-delay-us", type=int, default=100, help="the started servers' dynamic-batching delay")
    p.add_argument("--out", type=Path, default=Path("loadtest.md"), help="markdown report; .png and .json beside it")
    return p


@command("no report was written")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (
        ("--requests", args.requests),
        ("--batch", args.batch),
        ("--seconds", args.seconds),
        ("--concurrency", min(args.concurrency)),
    ):
        if value <= 0:
            return report_error(UsageError(f"{flag} must be positive, got {value}"))
    proc = None
    try:
        if args.url:
            check_loopback(args.url.rsplit(":", 1)[0].strip("[]"))
        model_name, card = _served(args.build)
        inputs, what = _inputs(args.build, card, args.images)
        modes = (
            [("as running", None)]
            if args.url
            else [
                ("dynamic batching", ["--queue-delay-us", str(args.queue_delay_us)]),
                ("no dynamic batching", ["--no-dynamic-batching"]),
            ]
        )
        levels: list[LoadLevel] = []
        servers: dict[str, str] = {}  # mode -> the server's ready line: which runner, device and precision it chose
        for mode, extra in modes:
            url = args.url
            if extra is not None:
                print(f"starting deployment.serve ({mode}) ...", file=sys.stderr, flush=True)
                proc = start_server(args.build, extra)
                url = proc.grpc_url
                servers[mode] = next(line for line in proc.stdout if line.startswith("ready:")).strip()
            run_level(url, model_name, inputs, 2, WARMUP_REQUESTS, args.seconds, "warm-up", args.batch)  # not reported
            for c in args.concurrency:
                level = run_level(url, model_name, inputs, c, args.requests, args.seconds, mode, args.batch)
                levels.append(level)
                d = level.to_dict()
                print(
                    f"{mode:20s} {c:3d} clients: {d['requests']:5d} requests, {d['errors']} errors, {d['requests_per_s']:7.1f} req/s, "
                    f"{d['images_per_s']:7.1f} img/s, p50 {d['p50_ms']:7.1f} ms, p99 {d['p99_ms']:7.1f} ms",
                    flush=True,
                )
            if proc is not None:
                status = stop_server(proc)
                proc = None
                if status != 0:
                    raise LoadTestError(f"the {mode} server exited with status {status} when stopped")
    finally:
        if proc is not None:
            stop_server(proc)
    from common.versions import cpu_name

    result = {
        "model": model_name,
        "cpu": cpu_name(),
        "batch": args.batch,
        "inputs": what,
        "requests": args.requests,
        "seconds": args.seconds,
        "command": " ".join(["python -m pipeline.loadtest", *(argv if argv is not None else sys.argv[1:])]),
        "servers": servers,
        "levels": [lv.to_dict() for lv in levels],
        "ratios": _ratios(levels),
        "total_requests": sum(lv.requests for lv in levels),
        "total_errors": sum(lv.errors for lv in levels),
    }
    out = args.out
    with atomic_paths(out, out.with_suffix(".png"), out.with_suffix(".json")) as (md, png, js):
        atomic_write_text(md, _markdown(result))
        _plot(result["levels"], png)
        atomic_write_json(js, result)
    print("\n".join(result["ratios"]))
    print(
        f"{result['total_requests']} requests, {result['total_errors']} errors; wrote {out}, {out.with_suffix('.png')}, {out.with_suffix('.json')}"
    )
    return 1 if result["total_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
