"""The worker behind ``deployment.serve``'s front: the deployed model and the ``tritonserver`` that PyTriton runs.

``deployment.serve`` starts it as ``python -m deployment.serve_worker`` with its settings as JSON on
standard input, and restarts it when it dies. It is not a command for users.

* **Isolated.** Before anything else it enters a network namespace of its own (as root, or
  through an unprivileged user namespace), so its ``tritonserver`` listens on a loopback that no
  other process of the machine can reach. The front reaches it through Unix sockets in the
  run's private (0700) folder, relayed here to Triton's ports. So Triton needs no access token:
  none is generated, and none appears in any process's arguments. Where the kernel refuses a
  namespace, Triton listens on free ports of the machine's loopback and the ready message says
  that local users can reach it.
* **Tied to serve.** It asks the kernel for SIGTERM when ``serve`` dies (even by SIGKILL); SIGTERM
  stops Triton, which lets requests in flight finish, and removes the run's folder.
* **Quiet.** Its output and Triton's go to a log file; the messages for ``serve`` go, as JSON
  lines, to the file descriptor the settings name: ``{"ready": {...}}`` or ``{"error": ..., "status": ...}``.
* **Image requests** are decoded against a budget: each image's declared size is read from its
  header first, and a request over ``max_request_pixels`` in all, or an image over
  ``max_image_pixels`` or ``max_image_bytes``, is refused before any pixel is decoded. The image
  model runs two instances, so one client's large request does not hold up another's.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

__all__ = ["enter_private_network", "instances_raced", "main"]

PR_SET_PDEATHSIG = 1
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40
PRIVATE_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # inside the namespace: nothing else is there
IMAGE_MODEL_INSTANCES = 2
START_ATTEMPTS = 3  # starts of Triton when a model loses PyTriton's instance race (instances_raced)
EXIT_TIMEOUT_S = 20  # tritonserver's wait for requests in flight at shutdown; the whole stop stays under 30 s


def enter_private_network() -> str | None:
    """Move this (single-threaded) process into a network namespace of its own with loopback up; None, else why not."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNET) != 0:  # needs CAP_SYS_ADMIN; else through a user namespace of our own
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            return f"the kernel refused a private network namespace ({os.strerror(ctypes.get_errno())})"
        try:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        except OSError as e:
            return f"the user namespace could not map this user ({e.strerror})"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
        except OSError as e:
            return f"loopback could not be brought up in the private namespace ({e.strerror})"
    return None


def _relay(path: Path, port: int) -> None:
    """Accept on the Unix socket ``path`` and pass each connection's bytes both ways to 127.0.0.1:``port``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(128)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve_one(client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        t.start()
        pump(client, upstream)
        t.join()
        client.close()
        upstream.close()

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=serve_one, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True, name=f"relay-{port}").start()


class _Channel:
    """JSON lines to ``serve``."""

    def __init__(self, fd: int):
        self._file = os.fdopen(fd, "w", buffering=1)

    def send(self, **message) -> None:
        try:
            self._file.write(json.dumps(message) + "\n")
        except OSError:  # serve is gone; SIGTERM follows
            pass


def _infer_logits(model):
    import numpy as np  # noqa: F401 - PyTriton's decorators hand numpy arrays
    from pytriton.decorators import batch

    @batch
    def infer(input):  # noqa: A002 - the tensor's name is the input's name
        return {"logits": model.logits(input, check_finite=False)}

    return infer


def _decode_within_budget(blobs: list[bytes], limits) -> list:
    """Each image as RGB, after the front's header checks again (bytes, declared pixels, the request's budget)."""
    from common.images import decode_rgb

    from .serve_front import check_images

    check_images(blobs, limits)
    return [decode_rgb(data, f"image {i}", limits.max_image_pixels) for i, data in enumerate(blobs)]


def _infer_images(model, top_k: int, limits):
    import numpy as np
    from pytriton.decorators import batch

    from common.errors import S2MLPv2Error

    from .serve_front import ClientError, mark_client_error

    @batch
    def infer(image: np.ndarray):
        try:
            rgbs = _decode_within_budget([bytes(row[0]) for row in image], limits)
            predictions = model.predict(rgbs, top_k=top_k)
        except S2MLPv2Error as e:  # ImageError, InputImageError, or a budget refused above
            raise ClientError(mark_client_error(str(e))) from None
        return {
            "labels": np.array([[c.label.encode() for c in p.top] for p in predictions], dtype=object),
            "probabilities": np.array([[c.probability for c in p.top] for p in predictions], dtype=np.float32),
            "indices": np.array([[c.index for c in p.top] for p in predictions], dtype=np.int32),
        }

    return infer


def _bind(triton, model, settings: dict, limits):
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    from .serve import model_names

    float_name, image_name = model_names(model.name, model.precision)
    max_batch = settings["max_batch"] or model.max_batch
    if max_batch < model.min_batch:
        from common.errors import UsageError

        raise UsageError(f"--max-batch {max_batch} is below the plan's smallest batch {model.min_batch}")
    classes = model.card.config.num_classes
    top_k = min(settings["top_k"], classes)
    preferred = [b for b in settings.get("preferred_batch") or () if b <= max_batch]
    batcher = (
        DynamicBatcher(max_queue_delay_microseconds=settings["queue_delay_us"], preferred_batch_size=preferred or None)
        if settings["dynamic_batching"]
        else None
    )
    triton.bind(
        model_name=float_name,
        infer_func=[_infer_logits(model) for _ in range(settings.get("instances") or 1)],
        inputs=[Tensor(name="input", dtype=np.float32, shape=model.input_size)],
        outputs=[Tensor(name="logits", dtype=np.float32, shape=(classes,))],
        config=ModelConfig(max_batch_size=max_batch, batcher=batcher),
        strict=True,
    )
    triton.bind(
        model_name=image_name,
        infer_func=[_infer_images(model, top_k, limits) for _ in range(IMAGE_MODEL_INSTANCES)],
        inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
        outputs=[
            Tensor(name="labels", dtype=bytes, shape=(top_k,)),
            Tensor(name="probabilities", dtype=np.float32, shape=(top_k,)),
            Tensor(name="indices", dtype=np.int32, shape=(top_k,)),
        ],
        config=ModelConfig(max_batch_size=max_batch, batcher=None),
        strict=True,
    )
    return {
        "float_name": float_name,
        "image_name": image_name,
        "input_size": list(model.input_size),
        "max_batch": max_batch,
        "top_k": top_k,
    }


def instances_raced(message: str) -> bool:
    """Whether a failed start is PyTriton's race between a model's instances, which a new start gets past.

    PyTriton 0.7 has Triton start every instance of a model at once. The first instance publishes the model's
    configuration on a Unix socket in the workspace; every other instance waits for that socket for one second only
    (``pytriton.proxy.communication.get_config_from_handshake_server``, ``timeout_s=1.0``, which nothing can
    configure) and the model fails to load when the first one is slower, as it can be on a busy machine. Nothing is
    wrong with the build or the settings, so the worker starts Triton again, up to ``START_ATTEMPTS`` times.
    """
    return "get_config_from_handshake_server" in message or "waiting for config file" in message


def _log_tail(log_file: Path) -> str:
    """The server log's last error line, for a one-line message."""
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.startswith("E")]
    except OSError:
        lines = []
    return f"; its log says: {' '.join(lines[-1].split()[4:])[:300]}" if lines else ""


class _FilesDiffer(Exception):
    pass


def _check_files(settings: dict) -> None:
    if settings["check"] and Path(settings["build"]).is_dir():
        from engines.package import Package, PackageError

        from .check import check_files

        try:
            problems = check_files(Package.read(settings["build"]))
        except PackageError:
            return  # DeployedModel.open names it
        if problems:
            raise _FilesDiffer(f"{len(problems)} file(s) differ from the build: {'; '.join(problems)}")


def _check(settings: dict, model):
    """``deployment.check`` on the build directory with the model just opened (files and sample; no timing), or None."""
    if not settings["check"] or not Path(settings["build"]).is_dir():
        return None
    from .check import check_package

    return check_package(settings["build"], settings["backend"], timing_seconds=0, model=model, files_checked=True)


def _run(settings: dict, channel: _Channel, isolation: str | None) -> int:
    import logging

    from common.cli import describe
    from common.errors import EXPECTED_ERRORS

    from .deployed import DeployedModel
    from .serve_front import Limits

    run_dir = Path(settings["run_dir"])
    try:
        _check_files(settings)  # before anything loads a file that is not what was built
        model = DeployedModel.open(
            settings["build"], settings["backend"], threads=settings.get("threads"), streams=settings.get("streams")
        )
        check = _check(settings, model)
        if check is not None and not check.passed:
            channel.send(
                error=f"the package check failed: {check.summary}; run python -m pipeline.check for the details", status=3
            )
            return 1
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
    except _FilesDiffer as e:
        channel.send(error=f"the package check failed: {e}; run python -m pipeline.check for the details", status=3)
        return 1
    except EXPECTED_ERRORS as e:
        channel.send(error=describe(e), status=2)
        return 2
    except ImportError as e:
        channel.send(
            error=f"NVIDIA PyTriton is not installed ({e}); `pip install nvidia-pytriton` (Linux, Python 3.8-3.12)", status=2
        )
        return 2
    if not settings["verbose"]:
        logging.getLogger("pytriton").setLevel(logging.ERROR)
    ports = PRIVATE_PORTS if isolation is None else settings["fallback_ports"]
    triton = None
    try:
        limits_args = {k: settings[k] for k in ("max_image_bytes", "max_image_pixels", "max_request_pixels", "max_request_bytes")}
        for attempt in range(1, START_ATTEMPTS + 1):
            log_file = run_dir / f"tritonserver-{os.getpid()}-{attempt}.log"
            config = TritonConfig(
                http_address="127.0.0.1",
                http_port=ports["http"],
                grpc_address="127.0.0.1",
                grpc_port=ports["grpc"],
                metrics_address="127.0.0.1",
                metrics_port=ports["metrics"],
                exit_timeout_secs=EXIT_TIMEOUT_S,
                log_verbose=1 if settings["verbose"] else 0,
                log_file=None if settings["verbose"] else log_file,
            )
            # no token: in the private namespace only this process and the front (through the relays) reach Triton
            triton = Triton(
                config=config,
                workspace=run_dir / f"pytriton-{os.getpid()}-{attempt}",
                security_config=TritonSecurityConfig(restricted_endpoints=[]),
            )
            try:
                limits = Limits.for_model(model.input_size, settings["max_batch"] or model.max_batch, **limits_args)
                served = _bind(triton, model, settings, limits)
                if attempt == 1:
                    model.warm_up(served["max_batch"])  # every batch size the batcher may form, before the first request
                triton.run()
                break
            except EXPECTED_ERRORS as e:
                channel.send(error=describe(e), status=2)
                return 2
            except Exception as e:  # PyTriton's own errors and timeouts
                reason = " ".join(str(e).split())[:300] or type(e).__name__
                log_tail = _log_tail(log_file)
                if attempt < START_ATTEMPTS and instances_raced(f"{e} {log_tail}"):
                    print(f"worker: start {attempt} lost PyTriton's instance race; starting again", file=sys.stderr, flush=True)
                    triton.stop()
                    triton = None
                    continue
                channel.send(
                    error=f"the Triton server did not start ({reason}{log_tail}); rerun with --verbose to see its log",
                    status=1,
                )
                return 1
        if isolation is None:
            sockets = {name: run_dir / f"{name}-{os.getpid()}.sock" for name in ports}
            for name, port in ports.items():
                _relay(sockets[name], port)
            backend = {name: f"unix:{path}" for name, path in sockets.items()}
        else:
            backend = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        channel.send(
            ready={
                "models": served,
                "limits": vars(limits),
                "backend": backend,
                "description": model.description,
                "isolation": isolation,
                "check": (
                    f"checked: {check.summary}"
                    if check is not None
                    else "package check skipped (--skip-check)"
                    if settings["check"] is False
                    else "no package to check (a single file)"
                ),
            }
        )
        while triton.is_alive():
            time.sleep(0.2)
        print(f"worker: the Triton server stopped by itself{_log_tail(log_file)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        if triton is not None:
            triton.stop()


def main() -> int:
    settings = json.loads(sys.stdin.read())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # serve's death, even by SIGKILL, stops this worker
    if os.getppid() != settings["parent"]:  # serve died before the line above took effect
        return 1
    isolation = enter_private_network()  # first, while this process has one thread
    signal.signal(signal.SIGTERM, _stop_once)
    # SIGINT is Triton's stop signal; when it reaches this process too, it must not cut the stop short (a handler,
    # not SIG_IGN, which tritonserver would inherit)
    signal.signal(signal.SIGINT, lambda *_: None)
    channel = _Channel(settings["channel_fd"])
    try:
        return _run(settings, channel, isolation)
    except KeyboardInterrupt:
        return 0
    finally:
        if os.getppid() != settings["parent"]:  # serve is gone: nobody else removes the run's folder
            _remove_when_alone(Path(settings["run_dir"]))


def _stop_once(signum, frame) -> None:
    """SIGTERM: stop, once. A killed serve's death signal can come several times: the kernel hands this worker to
    each of serve's threads in turn as they exit and signals it again each time. A second KeyboardInterrupt would cut
    Triton's stop and the folder's removal short, so every later one is ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _remove_when_alone(folder: Path, timeout_s: float = 15.0) -> None:
    """Remove ``folder`` once nothing below this process can write into it any more (a stopping tritonserver or its
    backend stubs may still flush a log or a socket there after the first removal)."""
    from common.processes import alive, descendants

    deadline = time.monotonic() + timeout_s
    while True:
        shutil.rmtree(folder, ignore_errors=True)
        busy = [pid for pid in descendants(os.getpid()) if alive(pid)]
        if (not busy and not folder.exists()) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
