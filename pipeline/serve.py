"""Serve a deployed model with NVIDIA Triton Inference Server: ``python -m pipeline.serve BUILD_DIR``.

It runs the real ``tritonserver`` (2.51, with its Python backend) that NVIDIA PyTriton ships, and
serves two models from the artifact ``pipeline.deployed.DeployedModel`` chooses:

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
may wait for others. The image model runs each request on its own, so that one client's
undecodable image fails only that client's request. Triton itself refuses a wrong dtype, a wrong
shape and a batch over the maximum before the model sees them.

The server binds to 127.0.0.1 unless ``--host`` says otherwise, prints one line when it is
ready, and on SIGTERM or Ctrl-C lets the requests in flight finish and exits 0, leaving no
``tritonserver`` process behind. A port in use is one ``error:`` line before anything starts.

Triton's Python backend loads ``libpython3.X.so`` by name: this command puts the running
interpreter's library folder first on ``LD_LIBRARY_PATH`` for the server it starts, so that the
backend does not pick another installation's library of the same name.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import HelpFormatter, report_error
from common.errors import EXPECTED_ERRORS, S2MLPv2Error, UsageError

from .deployed import BACKENDS, DeployedModel

__all__ = ["ServeSettings", "ServeError", "model_names", "python_library_dir", "check_ports", "serve", "main"]

EXIT_TIMEOUT_S = 20  # tritonserver's wait for requests in flight at shutdown; the whole stop stays under 30 s


class ServeError(S2MLPv2Error, RuntimeError):
    """The server cannot start here; the message says what to change."""


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int | None = None  # None: the plan's (or the build's) profile
    queue_delay_us: int = 100
    dynamic_batching: bool = True
    top_k: int = 5
    backend: str = "auto"
    verbose: bool = False

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


def check_ports(settings: ServeSettings) -> None:
    """Refuse, before anything starts, ports that repeat or that another process holds."""
    ports = settings.ports()
    if len(set(ports.values())) != len(ports):
        raise UsageError(f"--http-port, --grpc-port and --metrics-port must differ, got {', '.join(map(str, ports.values()))}")
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise UsageError(f"{flag} must be a port number from 1 to 65535, got {port}")
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((settings.host, port))
            except OSError as e:
                raise ServeError(
                    f"port {port} on {settings.host} is not free ({e.strerror}); stop what holds it or pass {flag} with a free port"
                ) from None


def _infer_logits(model: DeployedModel):
    from pytriton.decorators import batch

    @batch
    def infer(input: np.ndarray):  # noqa: A002 - the tensor's name is the input's name
        return {"logits": model.logits(input, check_finite=False)}

    return infer


def _infer_images(model: DeployedModel, top_k: int):
    from pytriton.decorators import batch

    @batch
    def infer(image: np.ndarray):
        images = [bytes(row[0]) for row in image]
        predictions = model.predict(images, top_k=top_k)
        return {
            "labels": np.array([[c.label.encode() for c in p.top] for p in predictions], dtype=object),
            "probabilities": np.array([[c.probability for c in p.top] for p in predictions], dtype=np.float32),
            "indices": np.array([[c.index for c in p.top] for p in predictions], dtype=np.int32),
        }

    return infer


def _bind(triton, model: DeployedModel, settings: ServeSettings) -> tuple[str, str, int]:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    float_name, image_name = model_names(model.name, model.precision)
    max_batch = settings.max_batch or model.max_batch
    if max_batch < model.min_batch:
        raise UsageError(f"--max-batch {max_batch} is below the plan's smallest batch {model.min_batch}")
    classes = model.card.config.num_classes
    top_k = min(settings.top_k, classes)
    batcher = DynamicBatcher(max_queue_delay_microseconds=settings.queue_delay_us) if settings.dynamic_batching else None
    triton.bind(
        model_name=float_name,
        infer_func=_infer_logits(model),
        inputs=[Tensor(name="input", dtype=np.float32, shape=model.input_size)],
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(classes,))],
        config=ModelConfig(max_batch_size=max_batch, batcher=batcher),
        strict=True,
    )
    triton.bind(
        model_name=image_name,
        infer_func=_infer_images(model, top_k),
        inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
        outputs=[
            Tensor(name="labels", dtype=bytes, shape=(top_k,)),
            Tensor(name="probabilities", dtype=np.float32, shape=(top_k,)),
            Tensor(name="indices", dtype=np.int32, shape=(top_k,)),
        ],
        config=ModelConfig(max_batch_size=max_batch, batcher=None),
        strict=True,
    )
    return float_name, image_name, max_batch


def serve(build: str | os.PathLike, settings: ServeSettings = ServeSettings(), ready=None) -> int:
    """Serve ``build`` until SIGTERM or Ctrl-C; returns the exit status. ``ready(line)`` is called once it answers."""
    if settings.queue_delay_us < 0:
        raise UsageError(f"--queue-delay-us must be 0 or more, got {settings.queue_delay_us}")
    if settings.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {settings.top_k}")
    if settings.max_batch is not None and settings.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {settings.max_batch}")
    check_ports(settings)
    libdir = python_library_dir()
    model = DeployedModel.open(build, settings.backend)
    try:
        from pytriton.triton import Triton, TritonConfig
    except ImportError as e:
        raise ServeError(
            f"NVIDIA PyTriton is not installed ({e}); `pip install nvidia-pytriton` (Linux, Python 3.8-3.12)"
        ) from None
    # the server inherits this process's environment: the interpreter's own libpython comes first
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libdir), os.environ.get("LD_LIBRARY_PATH")]))
    if not settings.verbose:
        logging.getLogger("pytriton").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="s2mlpv2-serve-") as tmp:
        log_file = None if settings.verbose else Path(tmp) / "tritonserver.log"  # the server's own log, shown when it fails
        config = TritonConfig(
            http_address=settings.host,
            http_port=settings.http_port,
            grpc_address=settings.host,
            grpc_port=settings.grpc_port,
            metrics_address=settings.host,
            metrics_port=settings.metrics_port,
            exit_timeout_secs=EXIT_TIMEOUT_S,
            log_verbose=1 if settings.verbose else 0,
            log_file=log_file,
        )
        return _run(Triton(config=config), model, settings, log_file, ready)


def _log_tail(log_file: Path | None) -> str:
    """The server log's last error line, for a one-line message."""
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.startswith("E")] if log_file else []
    except OSError:
        lines = []
    return f"; its log says: {' '.join(lines[-1].split()[4:])[:300]}" if lines else ""


def _run(triton, model: DeployedModel, settings: ServeSettings, log_file: Path | None, ready) -> int:
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C
    try:
        float_name, image_name, max_batch = _bind(triton, model, settings)
        model.warm_up(max_batch)  # every batch size the batcher may form, before the first client's request
        try:
            triton.run()
        except Exception as e:  # PyTriton's own errors and timeouts, with the server's log kept by PyTriton
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise ServeError(
                f"the Triton server did not start ({reason}{_log_tail(log_file)}); rerun with --verbose to see its log"
            ) from None
        if settings.dynamic_batching:
            batching = f"dynamic batching up to {max_batch}, queue delay {settings.queue_delay_us} us"
        else:
            batching = f"no dynamic batching, batches up to {max_batch}"
        line = (
            f"ready: {float_name} (input -> logits) and {image_name} (image bytes -> top-{min(settings.top_k, model.card.config.num_classes)}) "
            f"on http://{settings.host}:{settings.http_port}, grpc {settings.host}:{settings.grpc_port}, "
            f"metrics :{settings.metrics_port}; {model.description}; {batching}; pid {os.getpid()}, SIGTERM or Ctrl-C stops"
        )
        (ready or (lambda text: print(text, flush=True)))(line)
        while triton.is_alive():
            time.sleep(0.5)
        print("error: the Triton server stopped by itself; rerun with --verbose to see its log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping: requests in flight finish first", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        triton.stop()
        signal.signal(signal.SIGTERM, previous)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.serve",
        description=__doc__.split("\n\n")[0],
        epilog="Models, tensors and the production path: docs/SERVING.md.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", type=Path, help="a build directory (build_engine.py --out), a .plan or an .onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--max-batch", type=int, help="largest batch (default: the plan's or the build's profile)")
    p.add_argument("--queue-delay-us", type=int, default=100, help="how long a request may wait for others to batch with")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run every request on its own")
    p.add_argument("--top-k", type=int, default=5, help="classes the image model returns")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: the plan on a GPU it runs on, else the CPU route")
    p.add_argument("--verbose", action="store_true", help="print the server's own log")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ServeSettings(
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        dynamic_batching=not args.no_dynamic_batching,
        top_k=args.top_k,
        backend=args.backend,
        verbose=args.verbose,
    )
    try:
        return serve(args.model, settings)
    except EXPECTED_ERRORS as e:
        return report_error(e)
    except KeyboardInterrupt:  # before the server was up
        print("error: interrupted before the server was ready", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
