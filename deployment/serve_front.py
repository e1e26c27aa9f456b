"""The front of ``deployment.serve``: the only listener clients reach, which checks every request before Triton sees it.

Triton 2.51 trusts what a request declares. An HTTP request whose shape says ``[2**40, 3, 32, 32]``
makes its parser allocate that many bytes and the server aborts (``std::bad_alloc``); over gRPC
the same shape reaches the Python backend and ``[2**32+1, ...]`` wraps around to a batch of 1.
So the front, which speaks the same KServe v2 protocol on the public HTTP, gRPC and metrics
ports, refuses before anything is allocated from a declared size:

* a body over ``Limits.max_request_bytes`` (from the batcher: the largest batch of float inputs,
  or of images at ``max_image_bytes`` each), read from ``Content-Length`` before the body is read;
* a compressed or chunked HTTP body (Triton would inflate it: a decompression bomb);
* a model this server does not serve, an input other than the model's, a datatype other than
  FP32 (``input``) or BYTES (``image``), a shape other than ``[n, C, H, W]`` or ``[n, 1]`` with
  ``1 <= n <=`` the largest batch, and an image over ``max_image_bytes``;
* Triton's shared-memory parameters, and the model-repository, shared-memory, trace and logging
  APIs (HTTP 403, gRPC PERMISSION_DENIED): nobody outside ``serve`` loads, unloads or reconfigures
  a model.

A refused request is HTTP 400 (413 for a body over the limit) or gRPC INVALID_ARGUMENT with one
line naming the input or image and the reason. Whatever Triton answers goes back to the client
with server paths and tracebacks removed: a client error raised by the model (``ClientError``,
marked in the message) becomes that one line; any other server fault is logged here, in full,
and the client gets one line with the log's reference. While the worker behind the front is
restarting, readiness is false and inference is HTTP 503 / gRPC UNAVAILABLE.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from common.errors import S2MLPv2Error

__all__ = [
    "ServedModels",
    "Limits",
    "ClientError",
    "mark_client_error",
    "public_error",
    "check_inputs",
    "check_images",
    "Front",
    "PortBusy",
    "Backend",
]

CLIENT_ERROR_OPEN, CLIENT_ERROR_CLOSE = "<<client-error>>", "<</client-error>>"
HTTP_HEADER_SLACK = 64 * 1024  # the JSON part of a binary request, beside its tensors
FORWARD_TIMEOUT_S = 60
MIN_PIXEL_LIMIT, MAX_PIXEL_LIMIT = 1 << 20, 64_000_000
MIN_IMAGE_BYTES, MAX_IMAGE_BYTES = 1 << 20, 32 << 20
MAX_IMAGE_REQUEST_BYTES = 64 << 20
# gRPC refuses a message over this before reading it; the model's own, smaller limit is checked per request
GRPC_MESSAGE_CEILING = 2 * MAX_IMAGE_REQUEST_BYTES

# KServe v2 endpoints nobody outside serve may use: loading code, unloading the model, mapping memory, writing traces
_HTTP_DENIED = re.compile(
    r"^/v2/(repository|systemsharedmemory|cudasharedmemory|trace|logging)(/|$)|^/v2/models/[^/]+/trace(/|$)"
)
_GRPC_DENIED = {
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
}
_GRPC_SERVICE = "/inference.GRPCInferenceService/"
_HTTP_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_PATH = re.compile(r"(?<![\w.])(?:/[\w.@+-]+){2,}/?")  # an absolute path of two or more parts


class ClientError(S2MLPv2Error, ValueError):
    """A request this server refuses; the message is the one line the client is sent."""


@dataclass(frozen=True)
class ServedModels:
    """What the worker serves: the two models' names, the float input's shape, the largest batch, top-K."""

    float_name: str
    image_name: str
    input_size: tuple[int, int, int]
    max_batch: int
    top_k: int

    @classmethod
    def from_dict(cls, d: dict) -> ServedModels:
        return cls(d["float_name"], d["image_name"], tuple(d["input_size"]), int(d["max_batch"]), int(d["top_k"]))


@dataclass(frozen=True)
class Limits:
    """What one request may cost. ``for_model`` scales the defaults to the model's input and batch."""

    max_image_bytes: int
    max_image_pixels: int
    max_request_pixels: int  # decoded pixels in one image request: its decode budget
    max_request_bytes: int

    @classmethod
    def for_model(
        cls,
        input_size: Sequence[int],
        max_batch: int,
        max_image_bytes: int | None = None,
        max_image_pixels: int | None = None,
        max_request_pixels: int | None = None,
        max_request_bytes: int | None = None,
    ) -> Limits:
        """Defaults: 1,024 times the model's input pixels per image (1 Mpx at 32x32, 51 Mpx at 224x224: a phone
        photo), within 1 Mpx..64 Mpx; half a byte per allowed pixel of encoded data, within 1..32 MiB; four
        images' worth of pixels per request; and a body of the largest batch, of floats or of images (at most 64 MiB)."""
        c, h, w = input_size
        pixels = max_image_pixels or min(max(1024 * h * w, MIN_PIXEL_LIMIT), MAX_PIXEL_LIMIT)
        image_bytes = max_image_bytes or min(max(pixels // 2, MIN_IMAGE_BYTES), MAX_IMAGE_BYTES)
        floats = max_batch * c * h * w * 4 + HTTP_HEADER_SLACK
        images = min(max_batch * (image_bytes + 4), MAX_IMAGE_REQUEST_BYTES) + HTTP_HEADER_SLACK
        limits = cls(image_bytes, pixels, max_request_pixels or 4 * pixels, max_request_bytes or max(floats, images))
        for name, value in vars(limits).items():
            if value < 1:
                raise ClientError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        return limits


def mark_client_error(message: str) -> str:
    """``message`` marked as the client's fault, so that the front sends it as one line (400 / INVALID_ARGUMENT)."""
    return f"{CLIENT_ERROR_OPEN}{' '.join(message.split())}{CLIENT_ERROR_CLOSE}"


def public_error(text: str) -> tuple[bool, str]:
    """(client's fault, one line for the client) of an error Triton returned: the marked line, else the first line
    with paths removed. Tracebacks never pass."""
    marked = re.search(re.escape(CLIENT_ERROR_OPEN) + r"(.*?)" + re.escape(CLIENT_ERROR_CLOSE), text, re.S)
    if marked:
        return True, marked.group(1)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("Traceback") or 'File "' in text:
        return False, ""
    return False, _PATH.sub("<path>", first)[:300]


def check_inputs(models: ServedModels, limits: Limits, model: str, inputs: Sequence[dict]) -> None:
    """Refuse a request that this server's models cannot take, before anything is allocated from what it declares.

    ``inputs``: one dict per input with ``name``, ``datatype``, ``shape`` and, where known, ``elements`` (the
    BYTES elements: the images, checked by ``check_images``) and ``shared_memory`` (the request names a
    shared-memory region).
    """
    if model == models.float_name:
        want = ("input", "FP32", None)
    elif model == models.image_name:
        want = ("image", "BYTES", (1,))
    else:
        raise ClientError(f"unknown model {model!r}; this server serves {models.float_name} and {models.image_name}")
    name, datatype, tail = want
    tail = tail or tuple(models.input_size)
    if len(inputs) != 1 or inputs[0].get("name") != name:
        got = ", ".join(repr(i.get("name")) for i in inputs) or "none"
        raise ClientError(f"{model} takes one input, {name!r}; got {got}")
    tensor = inputs[0]
    if tensor.get("shared_memory"):
        raise ClientError("shared-memory inputs are not served; send the data in the request")
    if tensor.get("datatype") != datatype:
        raise ClientError(f"input {name!r} must be {datatype}, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    expected = f"[n, {', '.join(map(str, tail))}] with 1 <= n <= {models.max_batch}"
    if (
        not isinstance(shape, (list, tuple))
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or tuple(shape[1:]) != tail
        or not 1 <= shape[0] <= models.max_batch
    ):
        shown = shape if isinstance(shape, (list, tuple)) and len(shape) <= 8 else "?"
        raise ClientError(f"input {name!r} has shape {shown}; {model} takes {expected}")
    if datatype == "BYTES" and tensor.get("elements") is not None:
        check_images(tensor["elements"], limits)


def _bytes_elements(raw: bytes | memoryview, count: int) -> list[memoryview]:
    """The elements of a serialized BYTES tensor (each: a 4-byte little-endian length, then the bytes)."""
    raw, elements, offset = memoryview(raw), [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise ClientError(f"the BYTES data holds fewer than the {count} elements its shape declares")
        (n,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + n])
        offset += 4 + n
    if offset != len(raw):
        raise ClientError(f"the BYTES data is {len(raw):,} bytes, not the {offset:,} its {count} elements declare")
    return elements


def check_images(images: Sequence[bytes | memoryview], limits: Limits) -> None:
    """Refuse, from the images' headers alone, what is over a limit: bytes and declared pixels per image, pixels per
    request (the decode budget), and anything that is not an image. No pixel is decoded."""
    from common.images import ImageError, declared_pixels

    total = 0
    for i, data in enumerate(images):
        name = f"image {i}"
        if len(data) > limits.max_image_bytes:
            raise ClientError(f"{name}: {len(data):,} bytes, over the {limits.max_image_bytes:,}-byte limit per image")
        try:
            pixels = declared_pixels(data, name)
        except ImageError as e:
            raise ClientError(str(e)) from None
        if pixels > limits.max_image_pixels:
            raise ClientError(f"{name}: declares {pixels:,} pixels, over this model's {limits.max_image_pixels:,}-pixel limit")
        total += pixels
        if total > limits.max_request_pixels:
            raise ClientError(
                f"{name}: the request's images declare {total:,} pixels up to here, over the {limits.max_request_pixels:,}-pixel "
                "budget per request; send fewer or smaller images per request"
            )


# ------------------------------------------------------------------------------------------------------------ backend
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


@dataclass(frozen=True)
class Backend:
    """Where the worker's Triton answers: an address per protocol, ``unix:/path`` or ``host:port``."""

    http: str
    grpc: str
    metrics: str

    def connection(self, which: str, timeout: float = FORWARD_TIMEOUT_S) -> http.client.HTTPConnection:
        address = getattr(self, which)
        if address.startswith("unix:"):
            return _UnixHTTPConnection(address[5:], timeout)
        host, port = address.rsplit(":", 1)
        return http.client.HTTPConnection(host, int(port), timeout=timeout)


class Front:
    """The public HTTP, gRPC and metrics listeners; ``attach``/``detach`` a worker's backend as it comes and goes."""

    def __init__(self, host: str, http_port: int, grpc_port: int, metrics_port: int, log=None):
        self.host, self.ports = host, (http_port, grpc_port, metrics_port)
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._state: tuple[ServedModels, Limits, Backend] | None = None
        self._grpc_channel = None
        self._lock = threading.Lock()
        self._faults = 0
        self._http = self._metrics = self._grpc = None

    # --- binding: every public port is taken here, atomically against a second serve, before anything starts
    def bind(self) -> None:
        """Bind the three public ports (SO_REUSEADDR as servers do, never SO_REUSEPORT); ``OSError`` names the port."""
        import grpc

        http_port, grpc_port, metrics_port = self.ports
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        servers = []
        try:
            for port, handler in ((http_port, _HttpHandler), (metrics_port, _MetricsHandler)):
                servers.append(_bind_http(self, family, port, handler))
            self._http, self._metrics = servers
            server = grpc.server(
                _executor(),
                handlers=[_grpc_front(self)],
                options=[
                    ("grpc.so_reuseport", 0),
                    ("grpc.max_receive_message_length", GRPC_MESSAGE_CEILING),
                    ("grpc.max_send_message_length", 64 << 20),
                ],
                maximum_concurrent_rpcs=256,
            )
            address = f"[{self.host}]:{grpc_port}" if family == socket.AF_INET6 else f"{self.host}:{grpc_port}"
            try:
                bound = server.add_insecure_port(address)
            except RuntimeError:
                bound = 0
            if bound != grpc_port:
                raise OSError(98, "Address already in use", f"port {grpc_port}")
            self._grpc = server
        except OSError as e:
            for s in servers:
                s.server_close()
            port = e.filename or ""
            raise PortBusy(port, e.strerror or str(e)) from None

    def start(self) -> None:
        for server in (self._http, self._metrics):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        self._grpc.start()

    def stop(self) -> None:
        for server in (self._http, self._metrics):
            if server is not None:
                server.shutdown()
                server.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=5).wait(6)
        self.detach()

    # --- the worker behind
    def attach(self, models: ServedModels, limits: Limits, backend: Backend) -> None:
        import grpc

        channel = grpc.insecure_channel(
            backend.grpc, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )
        with self._lock:
            old, self._grpc_channel, self._state = self._grpc_channel, channel, (models, limits, backend)
        if old is not None:
            old.close()

    def detach(self) -> None:
        with self._lock:
            old, self._grpc_channel, self._state = self._grpc_channel, None, None
        if old is not None:
            old.close()

    @property
    def state(self):
        return self._state

    def fault(self, where: str, text: str) -> str:
        """Log a server fault in full here; the client gets the reference."""
        with self._lock:
            self._faults += 1
            ref = f"fault {self._faults} at {time.strftime('%H:%M:%S')}"
        self._log(f"{ref} ({where}): {' | '.join(line for line in text.splitlines() if line.strip())[:4000]}")
        return f"internal server error ({ref} in the server's log); the request was not served"


class PortBusy(OSError):
    def __init__(self, port, reason: str):
        super().__init__(f"{port}: {reason}")
        self.port, self.reason = port, reason


def _executor():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=32, thread_name_prefix="grpc-front")


def _bind_http(front: Front, family: int, port: int, handler) -> ThreadingHTTPServer:
    class Server(ThreadingHTTPServer):
        address_family = family
        allow_reuse_address = True  # SO_REUSEADDR: a restart right after a crash binds; a live listener still refuses
        daemon_threads = True
        request_queue_size = 128

    try:
        server = Server((front.host, port), handler)
    except OSError as e:
        raise OSError(e.errno, e.strerror, f"port {port}") from None
    server.front = front
    return server


# -------------------------------------------------------------------------------------------------------------- HTTP
class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "s2mlpv2-serve"
    sys_version = ""
    timeout = 30  # a client that stops sending mid-request is dropped after this long
    backend_name = "http"

    def log_message(self, *args) -> None:  # the front's log carries faults only
        pass

    @property
    def front(self) -> Front:
        return self.server.front

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def _reply(self, status: int, message: str | None = None, body: bytes | None = None, headers=()) -> None:
        if body is None:
            body = json.dumps({"error": message}).encode()
            headers = [("Content-Type", "application/json")]
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self, status: int, message: str, drop: bool = False) -> None:
        self.close_connection = self.close_connection or drop
        self._reply(status, message)

    def _handle(self) -> None:
        try:
            self._route()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # a fault of the front itself: logged here, one line to the client
            self.close_connection = True
            try:
                self._reply(500, self.front.fault(f"HTTP {self.command} {self.path[:100]}", repr(e)))
            except OSError:
                pass

    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if _HTTP_DENIED.match(path):
            return self._refuse(403, f"{path} is not served: model control, shared memory, trace and logging are closed")
        length = self._body_length()
        if length is None:
            return
        state = self.front.state
        if state is None:
            self._discard(length)
            if path == "/v2/health/live":
                return self._reply(200, body=b"")
            return self._refuse(503, "the model server is starting or restarting; retry in a few seconds")
        models, limits, backend = state
        if length > limits.max_request_bytes:
            return self._refuse(
                413,
                f"the request body is {length:,} bytes, over this server's {limits.max_request_bytes:,}-byte limit",
                drop=True,
            )
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self.close_connection = True
            return
        infer = _HTTP_INFER.match(path)
        if infer and self.command == "POST":
            try:
                check_inputs(models, limits, infer.group(1), _http_inputs(self.headers, body))
            except ClientError as e:
                return self._refuse(400, str(e))
        self._forward(backend, body)

    def _body_length(self) -> int | None:
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "chunked bodies are not accepted; send Content-Length", drop=True)
            return None
        if self.headers.get("Content-Encoding", "identity").lower() != "identity":
            self._refuse(415, "compressed request bodies are not accepted; send the body uncompressed", drop=True)
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(400, "Content-Length is not a number of bytes", drop=True)
            return None
        return length

    def _discard(self, length: int) -> None:
        if length > 1 << 20:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    def _forward(self, backend: Backend, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "inference-header-content-length")}
        headers["Content-Length"] = str(len(body))
        try:
            conn = backend.connection(self.backend_name)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            return self._refuse(503, "the model server is restarting; retry in a few seconds")
        keep = [(k, v) for k, v in response.getheaders() if k.lower() in ("content-type", "inference-header-content-length")]
        if response.status < 400:
            return self._reply(response.status, body=data, headers=keep)
        try:
            text = json.loads(data).get("error", "")
        except (ValueError, AttributeError):
            text = data.decode(errors="replace")
        client, line = public_error(str(text))
        if client:
            return self._reply(400, line)
        if response.status < 500 and line:
            return self._reply(response.status, line)
        return self._reply(500, self.front.fault(f"HTTP {self.path[:100]} -> {response.status}", str(text)))


class _MetricsHandler(_HttpHandler):
    backend_name = "metrics"

    def _route(self) -> None:
        if self.command != "GET" or urlsplit(self.path).path != "/metrics":
            return self._refuse(404, "this port serves GET /metrics only")
        state = self.front.state
        if state is None:
            return self._refuse(503, "the model server is starting or restarting; retry in a few seconds")
        self._forward(state[2], b"")


def _http_inputs(headers, body: bytes) -> list[dict]:
    """The inputs an HTTP inference request declares: its JSON header, and each BYTES element's size where binary."""
    try:
        header_length = int(headers.get("Inference-Header-Content-Length", len(body)))
    except ValueError:
        raise ClientError("Inference-Header-Content-Length is not a number") from None
    if not 0 <= header_length <= len(body):
        raise ClientError(f"Inference-Header-Content-Length {header_length} is beyond the {len(body)}-byte body")
    try:
        request = json.loads(body[:header_length])
    except (ValueError, UnicodeDecodeError):
        raise ClientError("the request is not valid JSON (KServe v2 inference request)") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ClientError('the request has no "inputs" list (KServe v2 inference request)')
    inputs, offset = [], header_length
    for item in request["inputs"]:
        if not isinstance(item, dict):
            raise ClientError('each entry of "inputs" must be an object with name, datatype, shape and data')
        parameters = item.get("parameters") if isinstance(item.get("parameters"), dict) else {}
        entry = {
            "name": item.get("name"),
            "datatype": item.get("datatype"),
            "shape": item.get("shape"),
            "shared_memory": "shared_memory_region" in parameters,
        }
        inputs.append(entry)
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or not 0 <= size <= len(body) - offset:
                raise ClientError(f"input {item.get('name')!r}: binary_data_size {size} is beyond the request body")
            if entry["datatype"] == "BYTES" and isinstance(entry["shape"], list) and entry["shape"]:
                count = entry["shape"][0] if isinstance(entry["shape"][0], int) and 0 < entry["shape"][0] <= 4096 else 0
                entry["elements"] = _bytes_elements(memoryview(body)[offset : offset + size], count) if count else []
            offset += size
        elif entry["datatype"] == "BYTES" and isinstance(item.get("data"), list):
            entry["elements"] = [x.encode() if isinstance(x, str) else b"" for x in _flatten(item["data"])]
    return inputs


def _flatten(data) -> list:
    out = []
    for x in data:
        out.extend(_flatten(x) if isinstance(x, list) else [x])
    return out


# -------------------------------------------------------------------------------------------------------------- gRPC
def _grpc_front(front: Front):
    """A generic gRPC handler: every KServe v2 method is forwarded as bytes, ``ModelInfer`` after ``check_inputs``."""
    import grpc

    class GrpcFront(grpc.GenericRpcHandler):
        def service(self, details):
            return _grpc_service(front, details)

    return GrpcFront()


def _grpc_service(front: Front, details):
    import grpc

    method = details.method
    if not method.startswith(_GRPC_SERVICE):
        return None
    name = method[len(_GRPC_SERVICE) :]
    if name in _GRPC_DENIED:

        def deny(request, context):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{name} is not served: model control, shared memory, trace and logging are closed",
            )

        return grpc.unary_unary_rpc_method_handler(deny)
    if name == "ModelStreamInfer":

        def refuse(requests, context):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "streaming inference is not served; use ModelInfer")

        return grpc.stream_stream_rpc_method_handler(refuse)

    def forward(request: bytes, context):
        return _grpc_forward(front, method, name, request, context)

    return grpc.unary_unary_rpc_method_handler(forward)


def _grpc_forward(front: Front, method: str, name: str, request: bytes, context) -> bytes:
    import grpc
    from tritonclient.grpc import service_pb2

    state, channel = front.state, front._grpc_channel
    if state is None or channel is None:
        if name == "ServerLive":
            return service_pb2.ServerLiveResponse(live=True).SerializeToString()
        if name == "ServerReady":
            return service_pb2.ServerReadyResponse(ready=False).SerializeToString()
        if name == "ModelReady":
            return service_pb2.ModelReadyResponse(ready=False).SerializeToString()
        context.abort(grpc.StatusCode.UNAVAILABLE, "the model server is starting or restarting; retry in a few seconds")
    models, limits, _ = state
    if len(request) > limits.max_request_bytes:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is {len(request):,} bytes, over this server's {limits.max_request_bytes:,}-byte limit",
        )
    if name == "ModelInfer":
        try:
            check_inputs(models, limits, *_grpc_inputs(request))
        except ClientError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    remaining = context.time_remaining()
    timeout = min(remaining, FORWARD_TIMEOUT_S) if remaining is not None else FORWARD_TIMEOUT_S
    try:
        return channel.unary_unary(method)(request, timeout=timeout)
    except grpc.RpcError as e:
        code, text = e.code(), e.details() or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and front.state is not state:
        context.abort(grpc.StatusCode.UNAVAILABLE, "the model server is restarting; retry in a few seconds")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        context.abort(code, "the request took longer than its deadline")
    client, line = public_error(text)
    if client:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, line)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE) and line:
        context.abort(code, line)
    context.abort(grpc.StatusCode.INTERNAL, front.fault(f"gRPC {name} -> {code.name}", text))


def _grpc_inputs(raw: bytes) -> tuple[str, list[dict]]:
    """(model, inputs) of a serialized ``ModelInferRequest``, for ``check_inputs``."""
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2

    try:
        request = service_pb2.ModelInferRequest.FromString(raw)
    except DecodeError:
        raise ClientError("the request is not a ModelInferRequest") from None
    inputs = []
    for i, tensor in enumerate(request.inputs):
        entry = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "shared_memory": "shared_memory_region" in tensor.parameters,
        }
        if tensor.datatype == "BYTES":
            count = tensor.shape[0] if tensor.shape and 0 < tensor.shape[0] <= 4096 else 0
            if i < len(request.raw_input_contents):
                entry["elements"] = _bytes_elements(request.raw_input_contents[i], count) if count else []
            else:
                entry["elements"] = list(tensor.contents.bytes_contents)
        inputs.append(entry)
    return request.model_name, inputs
