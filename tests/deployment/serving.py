"""What the serving tests share: a real ``deployment.serve`` process, its ``tritonserver`` child, and bounded client load."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tests.conftest import missing


def require_pytriton() -> None:
    try:
        import pytriton  # noqa: F401
        import tritonclient.grpc  # noqa: F401
    except ImportError as e:
        missing(
            f"serving needs NVIDIA PyTriton and tritonclient ({e}): `pip install nvidia-pytriton 'tritonclient[grpc]'`",
            "pytriton",
        )


def infer_logits(url: str, model: str, x: np.ndarray, dtype: str = "FP32", timeout_s: float = 30):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("input", list(x.shape), dtype)
        tensor.set_data_from_numpy(x)
        return client.infer(model, [tensor], client_timeout=timeout_s).as_numpy("logits")


def infer_images(url: str, model: str, images: list[bytes], timeout_s: float = 30):
    import tritonclient.grpc as grpcclient

    data = np.array([[b] for b in images], dtype=object)
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("image", list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        return client.infer(model, [tensor], client_timeout=timeout_s)


@dataclass
class Load:
    """Good requests sent by ``clients`` threads until stopped (at most ``limit`` requests): every outcome, timed."""

    started: list[float] = field(default_factory=list)
    outcomes: list[tuple[float, str | None]] = field(default_factory=list)  # (start time, error or None)

    @property
    def errors(self) -> list[str]:
        return [e for _, e in self.outcomes if e is not None]


@contextlib.contextmanager
def good_load(url: str, model: str, x: np.ndarray, clients: int = 2, limit: int = 400, seconds: float = 60) -> Iterator[Load]:
    """Run bounded good traffic in the background for the duration of the block; the caller checks ``load.errors``."""
    import tritonclient.grpc as grpcclient

    load, stop, lock = Load(), threading.Event(), threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with grpcclient.InferenceServerClient(url) as c:
            while not stop.is_set() and time.monotonic() < deadline:
                with lock:
                    if len(load.started) >= limit:
                        return
                    load.started.append(time.monotonic())
                t0 = load.started[-1]
                tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                try:
                    c.infer(model, [tensor], client_timeout=30)
                    error = None
                except Exception as e:  # tritonclient's InferenceServerException, or the connection going away
                    error = " ".join(str(e).split())[:300]
                with lock:
                    load.outcomes.append((t0, error))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        while len(load.outcomes) < clients and time.monotonic() < deadline:  # the load is really running
            time.sleep(0.05)
        yield load
    finally:
        stop.set()
        for t in threads:
            t.join(40)
