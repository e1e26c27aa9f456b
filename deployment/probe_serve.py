"""Probe a running ``deployment.serve`` as a hostile client would: ``python -m pipeline.probe_serve BUILD_DIR``.

It starts ``python -m pipeline.serve BUILD_DIR`` on free loopback ports (``--python`` and
``--project`` choose another installation, to compare releases), sends each probe below, and
prints a markdown table of what the server answered and whether it was still ready after. Every
probe is bounded in size and time and goes to 127.0.0.1 only; the server is stopped by its
process id at the end (or restarted, after a probe that killed it).

Probes: an HTTP request declaring shape ``[2**40, C, H, W]``; the same over gRPC, and
``[2**32+1, ...]``; access tokens in any process's arguments; model load and unload without a
secret; five 50 MB undecodable images (the server's memory before and after); a 200 MB body;
"hello" as an image; 32 large single-colour PNGs while another client waits for one small image;
SIGKILL of ``tritonserver`` (time until ready again); two ``serve`` processes started 0.3 s apart.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.cli import HelpFormatter, command, report_error
from common.processes import children_named, command_line, command_name, descendants, free_ports, tree_rss_mb

__all__ = ["http_request", "main"]


def http_request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 60):
    """(status, body text) of one HTTP request to 127.0.0.1; (None, why) when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return None, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def _binary_images(images: list[bytes]) -> tuple[bytes, dict]:
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in images)
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [len(images), 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
            ]
        }
    ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


class Probe:
    """One ``serve`` process and the probes against it."""

    def __init__(self, build: Path, python: str, project: Path | None):
        self.build, self.python, self.project = build, python, project
        self.rows: list[tuple[str, str]] = []
        self.proc = None

    # --- the server
    def start(self, extra: Sequence[str] = ()) -> None:
        self.http, self.grpc, self.metrics = free_ports(3)
        cmd = [self.python, "-m", "pipeline.serve", str(self.build.resolve()), *self._ports(), *extra]
        self.proc = subprocess.Popen(cmd, cwd=self.project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout: list[str] = []
        threading.Thread(target=lambda: self.stdout.extend(self.proc.stdout), daemon=True).start()
        deadline = time.monotonic() + 180
        while not any(line.startswith("ready:") for line in self.stdout):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"serve did not start: {self.proc.stderr.read()[-500:] if self.proc.poll() is not None else 'timeout'}"
                )
            time.sleep(0.2)
        self.name = re.search(r"ready: (\S+) ", next(x for x in self.stdout if x.startswith("ready:"))).group(1)
        self.models = (self.name, f"{self.name}_classify")

    def _ports(self) -> list[str]:
        return ["--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ready(self, timeout: float = 2) -> bool:
        status, _ = http_request(self.http, "GET", "/v2/health/ready", timeout=timeout)
        return status == 200

    def alive_note(self) -> str:
        if self.proc.poll() is not None:
            return f"; serve exited with status {self.proc.returncode}"
        return "; still ready" if self.ready() else "; not ready"

    def restart_if_dead(self) -> None:
        if self.proc.poll() is not None or not self._wait_ready(60):
            self.stop()
            self.start()

    def _wait_ready(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.ready():
                return True
            time.sleep(0.2)
        return False

    def add(self, probe: str, outcome: str) -> None:
        self.rows.append((probe, " ".join(outcome.split())[:240]))
        print(f"{probe}: {self.rows[-1][1]}", file=sys.stderr, flush=True)

    @staticmethod
    def _short(status, text: str) -> str:
        leak = (
            " (a traceback or server path in the body)"
            if ("Traceback" in text or re.search(r"/(tmp|usr|home|root|work)/", text))
            else ""
        )
        try:
            text = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            pass
        return f"{status}: {text.splitlines()[0][:120] if text else ''}{leak}"

    # --- the probes
    def crash_request(self) -> None:
        c, h, w = self._input_size()
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [2**40, c, h, w], "datatype": "FP32", "data": [0.0] * (c * h * w)}]}
        ).encode()
        status, text = http_request(
            self.http, "POST", f"/v2/models/{self.name}/infer", body, {"Content-Type": "application/json"}
        )
        time.sleep(1.0)
        self.add(f"HTTP shape [2**40, {c}, {h}, {w}], {len(body) // 1000} KB", self._short(status, text) + self.alive_note())
        self.restart_if_dead()

    def grpc_shapes(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        c, h, w = self._input_size()
        channel = __import__("grpc").insecure_channel(f"127.0.0.1:{self.grpc}")
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for n in (2**40, 2**32 + 1):
            request = service_pb2.ModelInferRequest(model_name=self.name)
            tensor = request.inputs.add(name="input", datatype="FP32", shape=[n, c, h, w])
            request.raw_input_contents.append(np.zeros(c * h * w, np.float32).tobytes())
            del tensor
            try:
                response = stub.ModelInfer(request, timeout=30)
                outcome = f"OK, {len(response.raw_output_contents[0]) // 4} logits returned (accepted as batch 1)"
            except Exception as e:  # grpc.RpcError
                details = e.details() if hasattr(e, "details") else str(e)
                leak = " (a traceback in the message)" if "Traceback" in details else ""
                outcome = f"{e.code().name}: {details.splitlines()[0][:120]}{leak}"
            self.add(f"gRPC shape [{'2**40' if n == 2**40 else '2**32+1'}, {c}, {h}, {w}]", outcome + self.alive_note())
        channel.close()
        del grpcclient
        self.restart_if_dead()

    def tokens_in_arguments(self) -> None:
        visible = []
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            args = b" ".join(command_line(pid)).decode(errors="replace")
            if re.search(r"restricted|access-token", args):
                visible.append(f"{command_name(pid)} (pid {pid})")
        self.add(
            "access token in `ps -eo args`", f"visible: {', '.join(visible)}" if visible else "none in any process's arguments"
        )

    def model_control(self) -> None:
        model_py = "import triton_python_backend_utils as pb_utils\nclass TritonPythonModel:\n    pass\n"
        body = json.dumps({"parameters": {"config": json.dumps({"backend": "python"}), "file:1/model.py": model_py}}).encode()
        load = http_request(self.http, "POST", "/v2/repository/models/intruder/load", body)
        unload = http_request(self.http, "POST", f"/v2/repository/models/{self.name}/unload", b"{}")
        time.sleep(1.0)
        status, _ = http_request(self.http, "GET", f"/v2/models/{self.name}/ready")
        self.add(
            "load and unload without the secret",
            f"load {self._short(*load)}; unload {self._short(*unload)}; model {'still ready' if status == 200 else 'gone'}",
        )
        self.restart_if_dead()

    def undecodable_payloads(self, count: int = 5, size: int = 50_000_000) -> None:
        before = tree_rss_mb(self.proc.pid)
        raw_size = size + 4
        header = json.dumps(
            {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": raw_size}}]}
        ).encode()
        path = f"/v2/models/{self.models[1]}/infer"
        statuses = [self._post_streamed(path, header, size, size.to_bytes(4, "little"))[0] for _ in range(count)]
        time.sleep(1.0)
        after = tree_rss_mb(self.proc.pid)
        self.add(
            f"{count} x {size // 1_000_000} MB undecodable images",
            f"HTTP {', '.join(map(str, statuses))}; server RSS {before:,.0f} -> {after:,.0f} MB{self.alive_note()}",
        )

    def huge_body(self, size: int = 200_000_000) -> None:
        t0 = time.monotonic()
        status, text = self._send_huge(size)
        self.add(
            f"{size // 1_000_000} MB body", f"{self._short(status, text)} after {time.monotonic() - t0:.1f} s{self.alive_note()}"
        )

    def _send_huge(self, size: int):
        header = json.dumps(
            {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]}
        )
        return self._post_streamed(f"/v2/models/{self.models[1]}/infer", header.encode(), size)

    def _post_streamed(self, path: str, header: bytes, zeros: int, payload: bytes = b""):
        """POST ``header``, ``payload`` and ``zeros`` zero bytes, with their Content-Length, reading an answer that comes
        before the whole body was sent (a server that refuses from the headers). (status, body text)."""
        s = socket.create_connection(("127.0.0.1", self.http), timeout=60)
        try:
            s.sendall(
                (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(header) + len(payload) + zeros}\r\n"
                    f"Inference-Header-Content-Length: {len(header)}\r\nConnection: close\r\n\r\n"
                ).encode()
                + header
                + payload
            )
            chunk, sent = b"\x00" * (1 << 20), 0
            while sent < zeros:
                s.sendall(chunk[: zeros - sent])
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed before the whole body: read its answer
        data = b""
        try:
            while part := s.recv(65536):
                data += part
        except OSError:
            pass
        finally:
            s.close()
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        status = re.match(r"HTTP/1\.[01] (\d+)", head)
        return (int(status.group(1)) if status else None), body

    def hello(self) -> None:
        body, headers = _binary_images([b"hello"])
        status, text = http_request(self.http, "POST", f"/v2/models/{self.models[1]}/infer", body, headers)
        self.add('"hello" as an image', self._short(status, text))

    def large_pngs_while_waiting(self, count: int = 32, side: int = 4096) -> None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, "PNG")
        big = buffer.getvalue()
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (10, 200, 30)).save(buffer, "PNG")
        small = buffer.getvalue()
        result = {}

        def heavy() -> None:
            body, headers = _binary_images([big] * count)
            t0 = time.monotonic()
            result["heavy"] = (
                *http_request(self.http, "POST", f"/v2/models/{self.models[1]}/infer", body, headers, timeout=120),
            )
            result["heavy_s"] = time.monotonic() - t0

        body, headers = _binary_images([small])
        http_request(self.http, "POST", f"/v2/models/{self.models[1]}/infer", body, headers, timeout=120)  # warm-up
        thread = threading.Thread(target=heavy)
        thread.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        status, _ = http_request(self.http, "POST", f"/v2/models/{self.models[1]}/infer", body, headers, timeout=120)
        waited = time.monotonic() - t0
        thread.join(130)
        heavy_status = result.get("heavy", (None, ""))
        self.add(
            f"{count} PNGs {side}x{side} ({count * len(big) // 1000} KB) while another client sends one image",
            f"the other client: {status} in {waited:.2f} s; the {count} PNGs: {self._short(*heavy_status)} in {result.get('heavy_s', 0):.1f} s",
        )

    def kill_tritonserver(self) -> None:
        servers = children_named(self.proc.pid, "tritonserver")
        if not servers:
            return self.add("SIGKILL of tritonserver", "no tritonserver found")
        os.kill(servers[0], signal.SIGKILL)
        t0 = time.monotonic()
        time.sleep(0.5)
        back = self._wait_ready(90)
        outcome = f"ready again after {time.monotonic() - t0:.1f} s" if back else f"not ready within 90 s{self.alive_note()}"
        self.add("SIGKILL of tritonserver", outcome)
        self.restart_if_dead()

    def racing_serves(self) -> None:
        ports = [str(p) for p in free_ports(3)]
        cmd = [self.python, "-m", "pipeline.serve", str(self.build.resolve()), "--http-port", ports[0], "--grpc-port", ports[1]]
        cmd += ["--metrics-port", ports[2]]
        first = subprocess.Popen(cmd, cwd=self.project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        second = subprocess.Popen(cmd, cwd=self.project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, err = second.communicate(timeout=120)
            outcome = f"the second exited {second.returncode} with {len(err.strip().splitlines())} stderr line(s): {err.strip().splitlines()[-1][:140] if err.strip() else ''}"
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()
            outcome = "the second did not exit within 120 s"
        for proc in (first, second):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.add("two serve started 0.3 s apart on the same ports", outcome)

    def _input_size(self) -> tuple[int, int, int]:
        status, text = http_request(self.http, "GET", f"/v2/models/{self.name}")
        shape = json.loads(text)["inputs"][0]["shape"]
        return tuple(shape[-3:])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.probe_serve", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("build", type=Path, help="a build directory to serve")
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs serve")
    p.add_argument("--project", type=Path, help="the checkout serve runs from (default: this one)")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    return p


@command("the probe was interrupted; its server is stopped")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.build.is_dir():
        return report_error(FileNotFoundError(2, "no such build directory", str(args.build)))
    probe = Probe(args.build, args.python, args.project)
    try:
        probe.start()
        for step in (
            probe.crash_request,
            probe.grpc_shapes,
            probe.tokens_in_arguments,
            probe.model_control,
            probe.undecodable_payloads,
            probe.huge_body,
            probe.hello,
            probe.large_pngs_while_waiting,
            probe.kill_tritonserver,
        ):
            step()
        probe.stop()
        probe.racing_serves()
    except RuntimeError as e:  # a probe that could not run: one line, as for the expected errors
        return report_error(e)
    finally:
        probe.stop()
    table = "| probe | outcome |\n|---|---|\n" + "".join(f"| {a} | {b.replace('|', '/')} |\n" for a, b in probe.rows)
    print(table)
    if args.out:
        from common.fileio import atomic_write_text

        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
