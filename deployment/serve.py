"""Serve a deployed model with NVIDIA Triton Inference Server: ``python -m pipeline.serve BUILD_DIR``.

It runs the real ``tritonserver`` (2.51, with its Python backend) that NVIDIA PyTriton ships, and
serves two models from the artifact ``deployment.deployed.DeployedModel`` chooses:

* ``<model>_<precision>`` (e.g. ``s2mlpv2_cifar10_fp16``): input ``input``, FP32
  ``[-1, C, H, W]``, preprocessed as the model card says; output ``logits``, FP32
  ``[-1, classes]``. These are the name, tensors and types of the model repository that
  ``build_engine.py --triton-repo`` writes for Triton's TensorRT or ONNX Runtime backend, so a
  client written against this server works unchanged against a production Triton.
* ``<model>_<precision>_classify``: input ``image``, BYTES ``[-1, 1]`` (encoded JPEG, PNG, ...);
  outputs ``labels`` (BYTES), ``probabilities`` (FP32) and ``indices`` (INT32), each ``[-1, K]``:
  the top-K classes, decoded and preprocessed on the server.

The float model batches requests dynamically: the largest batch is the plan's profile (or the
build's) unless ``--max-batch`` says otherwise, and ``--queue-delay-us`` is how long a request
may wait for others. A build that ``pipeline.tune`` tuned is served with the settings it recorded
(``serving.json``: batching, instances, threads, streams) unless a flag says otherwise or
``--untuned``; the ready line says which applied. The image model runs each request on its own (two at a time), so that one
client's undecodable or large image costs only that client's request.

Built to face hostile clients (docs/SERVING.md has the probes and what each now gets):

* **A front checks every request** (``deployment.serve_front``) on the public ports before Triton
  parses it: sizes, shapes, datatypes, models, per-image bytes; the model-repository,
  shared-memory, trace and logging APIs are closed (403 / PERMISSION_DENIED). A refused request
  is HTTP 400 or gRPC INVALID_ARGUMENT with one line; no traceback or server path is ever sent.
* **Triton runs isolated and supervised** (``deployment.serve_worker``): in a network namespace of
  its own, with no access token anywhere. If it dies, readiness is false at once, and it is
  restarted with a growing delay (1, 2, 4, 8, 16 s); more than ``--max-restarts`` failures in
  10 minutes end ``serve`` with status 1.
* **Limits that fit the model**, with flags: bytes and pixels per image, pixels decoded per
  request, bytes per request; the defaults scale with the model's input and largest batch.
* **The build proves itself first**: before it reports ready, the worker runs ``deployment.check``
  on the build directory (the package's file hashes, and its stored sample through the route it
  serves, against the precision's gates). A failure is one ``error:`` line and exit 1;
  ``--skip-check`` skips it, and the ready line says so.

The server binds to 127.0.0.1 unless ``--host`` says otherwise, prints one line on stdout when it
is ready (and nothing else there), and on SIGTERM or Ctrl-C lets the requests in flight finish
and exits 0, leaving no ``tritonserver`` process and no temporary folder behind, as it does when
killed with SIGKILL. A port in use, by another ``serve`` too, is one ``error:`` line and exit 2
before anything starts.

Triton's Python backend loads ``libpython3.X.so`` by name: this command puts the running
interpreter's library folder first on ``LD_LIBRARY_PATH`` for the server it starts, so that the
backend does not pick another installation's library of the same name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.cli import HelpFormatter, command, report_error
from common.errors import S2MLPv2Error, UsageError

from .deployed import BACKENDS

__all__ = ["ServeSettings", "ServeError", "Supervisor", "model_names", "python_library_dir", "check_settings", "serve", "main"]

RUN_DIR_PREFIX = "s2mlpv2-serve-"
READY_TIMEOUT_S = 180  # a worker's start: the model, its warm-up, tritonserver
STOP_TIMEOUT_S = 30
RESTART_BACKOFF_S = (1, 2, 4, 8, 16)
RESTART_WINDOW_S = 600


class ServeError(S2MLPv2Error, RuntimeError):
    """The server cannot start here; the message says what to change."""


class CheckFailed(ServeError):
    """The build did not pass ``deployment.check`` here: serve exits 1 without reporting ready."""


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int | None = None  # None: the tuned choice's, else the plan's (or the build's) profile
    # None: the build's tuned choice (serving.json, deployment.tuned), else ServingChoice's defaults
    queue_delay_us: int | None = None
    preferred_batch: tuple[int, ...] | None = None
    instances: int | None = None
    threads: int | None = None
    streams: int | None = None
    tuned: bool = True  # take the build's serving.json where a setting is not given
    tuned_note: str = ""  # which settings applied, for the ready line (resolve_tuned)
    dynamic_batching: bool = True
    top_k: int = 5
    backend: str = "auto"
    verbose: bool = False
    # None: scaled to the model (deployment.serve_front.Limits.for_model)
    max_image_bytes: int | None = None
    max_image_pixels: int | None = None
    max_request_pixels: int | None = None
    max_request_bytes: int | None = None
    max_restarts: int = 5
    check: bool = True  # deployment.check (files and sample) before ready

    def ports(self) -> dict[str, int]:
        return {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}


def model_names(model: str, precision: str) -> tuple[str, str]:
    """(float model, image model): ``<model>_<precision>`` as ``--triton-repo`` names it, and ``..._classify``."""
    name = f"{model}_{precision}"
    return name, f"{name}_classify"


def python_library_dir() -> Path:
    """The folder of the running interpreter's shared libpython, which Triton's Python backend must load."""
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not (Path(libdir) / str(library)).is_file():
        raise ServeError(
            f"this Python ({sys.executable}) has no shared libpython, which Triton's Python backend loads; "
            "use a Python built with --enable-shared (python.org and distribution builds are; with pyenv, "
            "PYTHON_CONFIGURE_OPTS=--enable-shared)"
        )
    return Path(libdir)


def _port_error(settings: ServeSettings, busy) -> UsageError:
    flag = next((f for f, p in settings.ports().items() if f"port {p}" == str(busy.port)), "--http-port")
    return UsageError(
        f"{busy.port} on {settings.host} is not free ({busy.reason}); stop what holds it (another serve?) or pass {flag} with a free port"
    )


def check_settings(settings: ServeSettings) -> None:
    """Refuse settings that cannot work, before anything starts."""
    ports = settings.ports()
    if len(set(ports.values())) != len(ports):
        raise UsageError(f"--http-port, --grpc-port and --metrics-port must differ, got {', '.join(map(str, ports.values()))}")
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise UsageError(f"{flag} must be a port number from 1 to 65535, got {port}")
    if settings.queue_delay_us is not None and settings.queue_delay_us < 0:
        raise UsageError(f"--queue-delay-us must be 0 or more, got {settings.queue_delay_us}")
    for flag, value in (
        ("--top-k", settings.top_k),
        ("--max-batch", settings.max_batch),
        ("--instances", settings.instances),
        ("--threads", settings.threads),
        ("--streams", settings.streams),
        *(("--preferred-batch", b) for b in settings.preferred_batch or ()),
        ("--max-image-bytes", settings.max_image_bytes),
        ("--max-image-pixels", settings.max_image_pixels),
        ("--max-request-pixels", settings.max_request_pixels),
        ("--max-request-bytes", settings.max_request_bytes),
        ("--max-restarts", settings.max_restarts),
    ):
        if value is not None and value < (0 if flag == "--max-restarts" else 1):
            raise UsageError(f"{flag} must be at least {0 if flag == '--max-restarts' else 1}, got {value}")


def serve(build: str | os.PathLike, settings: ServeSettings = ServeSettings(), ready=None) -> int:
    """Serve ``build`` until SIGTERM or Ctrl-C; returns the exit status. ``ready(line)`` is called once it answers."""
    from .serve_front import Front, PortBusy

    check_settings(settings)
    if not Path(build).exists():
        raise UsageError(f"{build} does not exist; give a build directory (build_engine.py --out), a .plan, an .onnx or an .xml")
    settings = resolve_tuned(settings, build)
    libdir = python_library_dir()
    front = Front(settings.host, settings.http_port, settings.grpc_port, settings.metrics_port)
    try:
        front.bind()  # every public port now, atomically: a second serve on them stops here
    except PortBusy as busy:
        raise _port_error(settings, busy) from None
    _remove_stale_run_dirs()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
    _become_subreaper()  # a tritonserver whose worker died comes to us, to be stopped
    supervisor = Supervisor(Path(build), settings, run_dir, libdir)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C
    try:
        front.start()
        return _serve_until_stopped(front, supervisor, settings, ready)
    except KeyboardInterrupt:
        print("stopping: requests in flight finish first", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        front.stop()
        supervisor.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _serve_until_stopped(front, supervisor: Supervisor, settings: ServeSettings, ready) -> int:
    from .serve_front import Backend, Limits, ServedModels

    crashes: list[float] = []
    announced = False
    while True:
        message = supervisor.start()
        if "error" in message:
            if not announced:  # the first start: the settings or the build are wrong
                raise {2: UsageError, 3: CheckFailed}.get(message.get("status"), ServeError)(message["error"])
            reason = message["error"]
        else:
            info = message["ready"]
            models = ServedModels.from_dict(info["models"])
            front.attach(models, Limits(**info["limits"]), Backend(**info["backend"]))
            if not announced:
                (ready or (lambda text: print(text, flush=True)))(_ready_line(settings, models, info))
                if info["isolation"]:
                    print(
                        f"warning: Triton is not isolated: {info['isolation']}; local users can reach its ports", file=sys.stderr
                    )
                announced = True
            else:
                print(f"restarted: ready again after {time.monotonic() - crashes[-1]:.1f} s", file=sys.stderr, flush=True)
            reason = supervisor.wait()  # until the worker or its tritonserver dies
            front.detach()  # readiness is false until the restart is ready
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < RESTART_WINDOW_S] + [now]
        if len(crashes) > settings.max_restarts:
            print(
                f"error: the Triton server failed {len(crashes)} times in {RESTART_WINDOW_S} s (last: {reason}); giving up",
                file=sys.stderr,
                flush=True,
            )
            return 1
        delay = RESTART_BACKOFF_S[min(len(crashes), len(RESTART_BACKOFF_S)) - 1]
        print(
            f"restarting: the Triton server stopped ({reason}); again in {delay} s, restart {len(crashes)} of at most "
            f"{settings.max_restarts} in {RESTART_WINDOW_S} s; not ready meanwhile",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(delay)


def resolve_tuned(settings: ServeSettings, build: str | os.PathLike) -> ServeSettings:
    """``settings`` with every batching and instance setting filled: given on the command line, else the build's tuned
    choice (``serving.json``), else the defaults. ``tuned_note`` says which applied, for the ready line."""
    import dataclasses

    from engines.package import SERVING_FILE

    from .tuned import ServingChoice

    choice = ServingChoice.read(build) if settings.tuned else None
    base = choice or ServingChoice()
    fields = ("max_batch", "queue_delay_us", "preferred_batch", "instances", "threads", "streams")
    given = {f: getattr(settings, f) for f in fields if getattr(settings, f) is not None}
    if choice is None:
        note = "default serving settings" + ("" if settings.tuned else " (--untuned)")
    else:
        overridden = f"; {', '.join(sorted(given))} from the command line" if given else ""
        note = f"tuned by pipeline.tune ({SERVING_FILE}: {choice.describe()}){overridden}"
    return dataclasses.replace(settings, **{f: given.get(f, getattr(base, f)) for f in fields}, tuned_note=note)


def _ready_line(settings: ServeSettings, models, info: dict) -> str:
    if settings.dynamic_batching:
        preferred = f", preferred {', '.join(map(str, settings.preferred_batch))}" if settings.preferred_batch else ""
        batching = f"dynamic batching up to {models.max_batch}{preferred}, queue delay {settings.queue_delay_us} us"
    else:
        batching = f"no dynamic batching, batches up to {models.max_batch}"
    instances = settings.instances or 1
    batching += f", {instances} model instance{'s' if instances > 1 else ''}; {settings.tuned_note or 'default serving settings'}"
    return (
        f"ready: {models.float_name} (input -> logits) and {models.image_name} (image bytes -> top-{models.top_k}) "
        f"on http://{settings.host}:{settings.http_port}, grpc {settings.host}:{settings.grpc_port}, "
        f"metrics :{settings.metrics_port}; {info['description']}; {batching}; {info['check']}; pid {os.getpid()}, "
        "SIGTERM or Ctrl-C stops"
    )


class Supervisor:
    """Starts ``deployment.serve_worker`` (the model and its tritonserver), waits for it, and stops it and all it started."""

    def __init__(self, build: Path, settings: ServeSettings, run_dir: Path, libdir: Path):
        self.build, self.settings, self.run_dir, self.libdir = build, settings, run_dir, libdir
        self.proc: subprocess.Popen | None = None
        self._messages: queue.Queue = queue.Queue()
        self._stub_dirs: set[Path] = set()  # the Python backend's model copies (/tmp/folderXXXXXX), left when Triton is killed

    def start(self) -> dict:
        """Start a worker; its first message: ``{"ready": ...}`` or ``{"error": ..., "status": ...}``."""
        from common.processes import free_ports

        read_fd, write_fd = os.pipe()
        http, grpc, metrics = free_ports(3)  # used only where the kernel refuses the worker a namespace of its own
        s = self.settings
        config = {
            "parent": os.getpid(),
            "channel_fd": write_fd,
            "run_dir": str(self.run_dir),
            "build": str(self.build),
            "backend": s.backend,
            "max_batch": s.max_batch,
            "queue_delay_us": s.queue_delay_us,
            "preferred_batch": list(s.preferred_batch or ()),
            "instances": s.instances or 1,
            "threads": s.threads,
            "streams": s.streams,
            "dynamic_batching": s.dynamic_batching,
            "top_k": s.top_k,
            "verbose": s.verbose,
            "check": s.check,
            "max_image_bytes": s.max_image_bytes,
            "max_image_pixels": s.max_image_pixels,
            "max_request_pixels": s.max_request_pixels,
            "max_request_bytes": s.max_request_bytes,
            "fallback_ports": {"http": http, "grpc": grpc, "metrics": metrics},
        }
        env = dict(os.environ)
        # the server inherits this environment: the interpreter's own libpython first; its temp files in the run's folder
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.libdir), os.environ.get("LD_LIBRARY_PATH")]))
        env["TMPDIR"] = str(self.run_dir)
        env["PYTRITON_HOME"] = str(self.run_dir / "pytriton-home")
        log = None if s.verbose else open(self.run_dir / "worker.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deployment.serve_worker"],
                stdin=subprocess.PIPE,
                stdout=log if log else sys.stderr,
                stderr=log if log else sys.stderr,
                pass_fds=(write_fd,),
                start_new_session=True,  # its own process group: stopped as one, and Ctrl-C reaches only serve
                env=env,
            )
        finally:
            os.close(write_fd)
            if log:
                log.close()
        self.proc.stdin.write(json.dumps(config).encode())
        self.proc.stdin.close()
        self._messages = queue.Queue()
        threading.Thread(target=self._read, args=(read_fd, self._messages), daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                message = self._messages.get(timeout=0.2)
                self._stub_dirs |= _python_backend_dirs(self.proc.pid)
                return message
            except queue.Empty:
                if self.proc.poll() is not None and self._messages.empty():
                    time.sleep(0.2)  # the reader's last line
                    if self._messages.empty():
                        return {"error": f"the worker exited with status {self.proc.returncode}{self._log_line()}", "status": 1}
        self.stop()
        return {"error": f"the worker was not ready within {READY_TIMEOUT_S} s{self._log_line()}", "status": 1}

    @staticmethod
    def _read(fd: int, messages: queue.Queue) -> None:
        with os.fdopen(fd, "r") as channel:
            for line in channel:
                try:
                    messages.put(json.loads(line))
                except ValueError:
                    continue

    def _log_line(self) -> str:
        try:
            text = (self.run_dir / "worker.log").read_text(errors="replace")
        except OSError:
            return ""
        # the worker's own line, else a Python error's last line; not Triton's log lines
        lines = [line.strip() for line in text.splitlines() if re.match(r"worker: |\w+(Error|Exception)\b", line)]
        return f"; {lines[-1].removeprefix('worker: ')[:300]}" if lines else ""

    def wait(self) -> str:
        """Block until the worker exits; returns why, for one log line. Its leftovers are stopped."""
        while self.proc.poll() is None:
            time.sleep(0.2)
        reason = f"worker exit {self.proc.returncode}{self._log_line()}"
        self.stop()
        return reason

    def stop(self) -> None:
        """SIGTERM to the worker's process group (Triton lets requests in flight finish), SIGKILL after 30 s; then any
        tritonserver it left behind, and its files."""
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still there
        for pid in _orphans():
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        for leftover in self.run_dir.glob("pytriton-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.run_dir.glob("*.sock"):
            leftover.unlink(missing_ok=True)
        for folder in self._stub_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self._stub_dirs.clear()


def _python_backend_dirs(pid: int) -> set[Path]:
    """The model folders that Triton's Python backend stubs below ``pid`` run from (their first argument's grandparent)."""
    from common.processes import command_line, descendants

    found = set()
    for child in descendants(pid):
        args = command_line(child)
        if args and args[0].endswith(b"triton_python_backend_stub") and len(args) > 1:
            folder = Path(os.fsdecode(args[1])).parent.parent
            if folder.name.startswith("folder") and folder.parent == Path("/tmp"):
                found.add(folder)
    return found


def _become_subreaper() -> None:
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


def _orphans() -> list[int]:
    """Processes that came to this one as their subreaper (a killed worker's tritonserver): children not started here."""
    from common.processes import process_table

    me = os.getpid()
    return [pid for pid, (parent, name) in process_table().items() if parent == me and name == "tritonserver"]


def _remove_stale_run_dirs() -> None:
    """Run folders of serve processes that no longer exist (a machine crash): removed."""
    for run_dir in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        try:
            pid = int(run_dir.name[len(RUN_DIR_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists() and run_dir.owner() == _user():
            shutil.rmtree(run_dir, ignore_errors=True)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.serve",
        description=__doc__.split("\n\n")[0],
        epilog="Models, tensors and the production path: docs/SERVING.md.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", type=Path, help="a build directory (build_engine.py --out), a .plan, an .onnx or an .xml")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    from engines.package import SERVING_FILE

    tuned = p.add_argument_group(
        f"batching and instances (default: the build's {SERVING_FILE}, which python -m pipeline.tune writes; else as below)"
    )
    tuned.add_argument("--max-batch", type=int, help="largest batch (default: the plan's or the build's profile)")
    tuned.add_argument("--queue-delay-us", type=int, help="how long a request may wait for others to batch with (default: 100)")
    tuned.add_argument("--preferred-batch", type=int, nargs="+", help="batch sizes the batcher aims for (default: none)")
    tuned.add_argument("--instances", type=int, help="model instances that run at once (default: 1)")
    tuned.add_argument("--threads", type=int, help="CPU threads per instance (default: the runtime's, all cores)")
    tuned.add_argument("--streams", type=int, help="OpenVINO: requests that run at once in its runtime (default: 1)")
    tuned.add_argument("--untuned", action="store_true", help=f"ignore the build's {SERVING_FILE}")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run every request on its own")
    p.add_argument("--top-k", type=int, default=5, help="classes the image model returns")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: the plan on a GPU it runs on, else the CPU route")
    limits = p.add_argument_group("request limits (default: scaled to the model's input and largest batch)")
    limits.add_argument(
        "--max-image-bytes", type=int, help="encoded bytes per image (default: 1 MiB at 32x32 .. 25 MB at 224x224)"
    )
    limits.add_argument("--max-image-pixels", type=int, help="declared pixels per image (default: 1,024 x the input's, 1-64 Mpx)")
    limits.add_argument("--max-request-pixels", type=int, help="pixels decoded for one image request (default: 4 images' worth)")
    limits.add_argument(
        "--max-request-bytes", type=int, help="bytes per request (default: the largest batch of floats or images)"
    )
    p.add_argument("--max-restarts", type=int, default=5, help="Triton failures tolerated in 10 minutes before serve gives up")
    p.add_argument(
        "--skip-check",
        action="store_true",
        help="do not run deployment.check (the package's file hashes and its sample against the gates) before ready",
    )
    p.add_argument("--verbose", action="store_true", help="print the server's own log (on stderr)")
    return p


@command("before the server was ready; nothing was started")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ServeSettings(
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        preferred_batch=tuple(args.preferred_batch) if args.preferred_batch else None,
        instances=args.instances,
        threads=args.threads,
        streams=args.streams,
        tuned=not args.untuned,
        dynamic_batching=not args.no_dynamic_batching,
        top_k=args.top_k,
        backend=args.backend,
        verbose=args.verbose,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        max_request_bytes=args.max_request_bytes,
        max_restarts=args.max_restarts,
        check=not args.skip_check,
    )
    try:
        return serve(args.model, settings)
    except CheckFailed as e:  # the build is not what was built, or its answers left the gates: a failure, not a usage error
        report_error(e)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
