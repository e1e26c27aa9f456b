"""``python -m pipeline.serve`` against a real ``tritonserver`` on 127.0.0.1: answers, and faults under concurrent load.

One server for the module (PyTriton runs one server per machine at a time reliably, so every
serving test module starts its own and stops it, by process id, before the next module runs).
Each fault is sent while good requests run in the background: the fault gets a Triton error that
names the problem, every good request succeeds, and the server stays ready.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from common.processes import alive, children_named, free_ports, tree_rss_mb
from deployment.probe_serve import descendants
from tests.deployment.serving import good_load, infer_images, infer_logits, require_pytriton
from tests.failures import Case, Fails, Shared, run_case

pytestmark = pytest.mark.slow  # a real tritonserver starts and stops: tens of seconds


@pytest.fixture(scope="module")
def server(shared: Shared):
    require_pytriton()
    from deployment.loadtest import start_server, stop_server

    srv = start_server(shared.build)
    tritonservers = children_named(srv.proc.pid, "tritonserver")
    try:
        yield srv
    finally:
        status = stop_server(srv)
    assert status == 0, srv.proc.stderr.read()
    assert tritonservers and not any(alive(pid) for pid in tritonservers)


@pytest.fixture(scope="module")
def model(shared: Shared):
    from deployment.deployed import DeployedModel

    return DeployedModel.open(shared.build)


@pytest.fixture(scope="module")
def batch(model, shared: Shared) -> np.ndarray:
    return np.stack([model.preprocess(p) for p in sorted(shared.images.rglob("*.png"))[:4]])


FLOAT, IMAGES = "s2mlpv2_tiny_test_fp32", "s2mlpv2_tiny_test_fp32_classify"


def _triton_error(call) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as error:
        call()
    return str(error.value)


def _ready(server) -> bool:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.is_server_ready() and client.is_model_ready(FLOAT) and client.is_model_ready(IMAGES)


def test_ready_line_names_both_models_and_the_runner(server):
    line = next(line for line in server.stdout if line.startswith("ready:"))
    assert FLOAT in line and IMAGES in line and f"http://127.0.0.1:{server.http_port}" in line
    assert "onnxruntime on CPU" in line and "dynamic batching up to 4" in line


def test_the_server_s_logits_equal_the_python_api_s(server, model, batch):
    np.testing.assert_array_equal(infer_logits(server.grpc_url, FLOAT, batch), model.logits(batch))


def test_the_image_model_decodes_on_the_server_and_answers_like_predict(server, model, shared: Shared):
    paths = sorted(shared.images.rglob("*.png"))[:3]
    result = infer_images(server.grpc_url, IMAGES, [p.read_bytes() for p in paths])
    want = model.predict(paths, top_k=5)
    assert result.as_numpy("labels").tolist() == [[c.label.encode() for c in p.top] for p in want]
    assert result.as_numpy("indices").tolist() == [[c.index for c in p.top] for p in want]
    np.testing.assert_allclose(result.as_numpy("probabilities"), [[c.probability for c in p.top] for p in want], rtol=1e-5)


def test_the_server_library_path_starts_with_this_interpreter_s_libpython(server):
    import sysconfig

    (pid,) = children_named(server.proc.pid, "tritonserver")
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
    assert environ["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")


@pytest.mark.parametrize(
    "fault,problem",
    [
        (
            lambda url, x: infer_logits(url, FLOAT, x.astype(np.float64), "FP64"),
            r"input 'input' must be FP32, got 'FP64'",
        ),
        (
            lambda url, x: infer_logits(url, FLOAT, x[:, :, :16]),
            r"input 'input' has shape \[4, 3, 16, 32\]; s2mlpv2_tiny_test_fp32 takes \[n, 3, 32, 32\] with 1 <= n <= 4",
        ),
        (lambda url, x: infer_logits(url, FLOAT, np.concatenate([x, x[:1]])), r"has shape \[5, 3, 32, 32\].*1 <= n <= 4"),
        (lambda url, x: infer_images(url, IMAGES, [b"\xff\xd8 not really a jpeg"]), r"image 0: not a readable image"),
        (lambda url, x: infer_images(url, IMAGES, [b""]), r"image 0: empty \(0 bytes\)"),
    ],
    ids=["wrong-dtype", "wrong-shape", "batch-over-the-maximum", "undecodable-image", "empty-image"],
)
def test_a_bad_request_gets_an_error_naming_it_while_good_requests_succeed(fault, problem, server, batch):
    import re

    with good_load(server.grpc_url, FLOAT, batch[:1]) as load:
        message = _triton_error(lambda: fault(server.grpc_url, batch))
    assert re.search(problem, message), message
    assert load.outcomes and not load.errors, load.errors[:3]
    assert _ready(server)


def _post(server, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        conn.request("POST", f"/v2/models/{FLOAT}/infer", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "body,status,problem",
    [
        (b"", 400, r"the request is not valid JSON"),
        (b'{"inputs": [{"name": "input", "shape": [1, 3', 400, r"the request is not valid JSON"),
        (b'{"inputs": 7}', 400, r"the request has no .{1,2}inputs.{1,2} list"),
    ],
    ids=["empty-body", "malformed-json", "inputs-not-a-list"],
)
def test_an_empty_or_malformed_http_body_is_refused(body, status, problem, server, batch):
    import re

    # the front parses the request before Triton does: every malformed body is the client's 400
    with good_load(server.grpc_url, FLOAT, batch[:1]) as load:
        got, text = _post(server, body, {"Content-Type": "application/json"})
    assert got == status and re.search(problem, text), (got, text)
    assert load.outcomes and not load.errors, load.errors[:3]
    assert _ready(server)


def test_a_client_that_disconnects_mid_request_leaves_the_server_serving(server, batch):
    # 5: the tiny test variant's classes
    request = (
        f"POST /v2/models/{FLOAT}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode() + b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.1, 0.2'
    with good_load(server.grpc_url, FLOAT, batch[:1]) as load:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
                s.sendall(request)  # a tenth of the promised body, then the connection is gone
    assert load.outcomes and not load.errors, load.errors[:3]
    assert _ready(server)
    assert infer_logits(server.grpc_url, FLOAT, batch).shape == (4, 5)


def test_a_port_in_use_is_one_line_before_anything_starts(server, shared: Shared, tmp_path, capsys):
    from deployment.serve import main

    grpc, metrics = free_ports(2)
    status = main(
        [str(shared.build), "--http-port", str(server.http_port), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert f"port {server.http_port} on 127.0.0.1 is not free" in err and "pass --http-port with a free port" in err
    assert len(children_named(server.proc.pid, "tritonserver")) == 1  # nothing else was started


def test_an_interpreter_without_a_shared_libpython_is_one_line(monkeypatch, capsys):
    import sysconfig

    from deployment import serve

    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: 0 if name == "Py_ENABLE_SHARED" else real(name))
    with pytest.raises(serve.ServeError) as error:
        serve.python_library_dir()
    from tests.failures import assert_api_error_is_one_clean_line

    assert_api_error_is_one_clean_line(error.value, Fails("has no shared libpython", "built with --enable-shared"), capsys)


def test_the_load_test_reports_every_level_against_a_running_server(server, shared: Shared, run_cli, tmp_path):
    out = tmp_path / "load.md"
    proc = run_cli(
        "pipeline.loadtest",
        shared.build,
        "--url",
        server.grpc_url,
        "--concurrency",
        "1",
        "2",
        "--requests",
        "12",
        "--seconds",
        "60",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    report = out.read_text()
    assert "| as running | 1 | 12 | 0 |" in report and "| as running | 2 | 12 | 0 |" in report
    assert out.with_suffix(".png").stat().st_size > 0 and '"total_errors": 0' in out.with_suffix(".json").read_text()
    assert "2 clients give" in report
    # what the server did, from Triton's own statistics: every request executed, each in some batch
    levels = json.loads(out.with_suffix(".json").read_text())["levels"]
    for level in levels:
        assert level["dynamic_batching"] is True  # the fixture's server batches dynamically
        assert level["avg_batch"] >= 1.0 and sum(int(b) * n for b, n in level["batch_histogram"].items()) == 12
        assert 0 <= level["queue_ms"] < level["p50_ms"] and 0 < level["compute_ms"] < level["p99_ms"]
    assert levels[0]["batch_histogram"] == {"1": 12}  # one client: nothing to batch with


def free_port_flags() -> list[str]:

    http, grpc, metrics = free_ports(3)
    return ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]


CLEAN_FAILURES = [
    Case(
        "loadtest-elsewhere",
        "pipeline.loadtest",
        lambda tmp, s: [str(s.build), "--url", "192.0.2.7:8001", "--out", str(tmp / "out" / "l.md")],
        Fails("192.0.2.7 is not a loopback address", "127.0.0.1 or localhost only"),
    ),
    Case(
        "serve-no-model",
        "pipeline.serve",
        lambda tmp, s: [str(tmp / "nowhere"), *free_port_flags()],
        Fails("nowhere does not exist", "give a build directory"),
    ),
    Case(
        "serve-same-ports",
        "pipeline.serve",
        lambda tmp, s: [str(s.build), "--http-port", "9", "--grpc-port", "9"],
        Fails("must differ", "must differ"),
    ),
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)


# --- a hostile client: each probe of docs/SERVING.md's table, against the real tritonserver behind the front
def _grpc_infer_raw(server, model: str, name: str, datatype: str, shape: list[int], raw: bytes):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    with grpc.insecure_channel(server.grpc_url) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def _binary_images(images: list[bytes]) -> tuple[bytes, dict]:
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in images)
    header = (
        f'{{"inputs": [{{"name": "image", "shape": [{len(images)}, 1], "datatype": "BYTES", '
        f'"parameters": {{"binary_data_size": {len(raw)}}}}}]}}'
    ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def _assert_one_clean_line(text: str) -> None:
    assert "Traceback" not in text and "\n" not in text.strip() and not re.search(r"/(tmp|usr|root|home|work)/", text), text


@pytest.mark.parametrize("n", [2**40, 2**32 + 1], ids=["2**40", "2**32+1"])
def test_a_shape_declaring_a_huge_batch_is_refused_over_http_and_grpc_and_the_server_stays_up(n, server):
    import grpc

    body = json.dumps({"inputs": [{"name": "input", "shape": [n, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}]}).encode()
    status, text = _post(server, body, {"Content-Type": "application/json"})
    assert status == 400 and f"has shape [{n}, 3, 32, 32]" in text, (status, text)
    code, details = _grpc_infer_raw(server, FLOAT, "input", "FP32", [n, 3, 32, 32], bytes(3072 * 4))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1 <= n <= 4" in details, (code, details)
    assert _ready(server)


def test_no_access_token_in_any_process_arguments_and_triton_is_in_its_own_network_namespace(server):
    (pid,) = children_named(server.proc.pid, "tritonserver")
    for p in [server.proc.pid, *descendants(server.proc.pid)]:
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
            assert "restricted" not in args and "token" not in args, args
    # nothing outside serve's worker can connect to Triton's own ports
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_model_control_without_the_secret_is_403_and_permission_denied(server):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    body = json.dumps({"parameters": {"config": "{}", "file:1/model.py": "print('owned')"}}).encode()
    for path in ("/v2/repository/models/intruder/load", f"/v2/repository/models/{FLOAT}/unload", "/v2/repository/index"):
        status, text = _request(server, "POST", path, body)
        assert status == 403 and "is not served" in text, (path, status, text)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name=FLOAT), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as denied:
            stub.SystemSharedMemoryRegister(service_pb2.SystemSharedMemoryRegisterRequest(name="x", key="/x", byte_size=8))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _ready(server)


def test_an_image_that_is_not_an_image_is_one_clean_400_line(server):
    body, headers = _binary_images([b"hello"])
    status, text = _request(server, "POST", f"/v2/models/{IMAGES}/infer", body, headers)
    assert status == 400 and json.loads(text)["error"] == "image 0: not a readable image"
    _assert_one_clean_line(text)


def test_a_body_over_the_limit_is_413_before_it_is_read(server):
    # Content-Length of 200 MB and a few bytes sent: the answer comes without the body
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(f"POST /v2/models/{IMAGES}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n{{".encode())
        chunks = []
        while chunk := s.recv(4096):  # the server closes after its answer; headers and body may come apart
            chunks.append(chunk)
        answer = b"".join(chunks).decode()
    assert answer.startswith("HTTP/1.1 413") and "over this server's" in answer, answer


@pytest.mark.parametrize(
    "headers,status,problem",
    [
        ({"Content-Encoding": "gzip"}, 415, "compressed request bodies are not accepted"),
        ({"Transfer-Encoding": "chunked"}, 411, "chunked bodies are not accepted"),
    ],
    ids=["gzip", "chunked"],
)
def test_a_compressed_or_chunked_body_is_refused(headers, status, problem, server):
    got, text = _request(server, "POST", f"/v2/models/{FLOAT}/infer", b"{}", headers)
    assert got == status and problem in text, (got, text)


def test_images_over_the_per_image_limits_are_refused_naming_the_image(server):
    from PIL import Image

    big = io.BytesIO()
    Image.new("RGB", (2048, 1024), (200, 10, 10)).save(big, "PNG")  # 2 Mpx declared: over the 32x32 model's 1 Mpx
    body, headers = _binary_images([_png(32), big.getvalue()])
    status, text = _request(server, "POST", f"/v2/models/{IMAGES}/infer", body, headers)
    assert status == 400 and "image 1: declares 2,097,152 pixels, over this model's 1,048,576-pixel limit" in text, text
    body, headers = _binary_images([_png(32), b"\x00" * (2 << 20)])
    status, text = _request(server, "POST", f"/v2/models/{IMAGES}/infer", body, headers)
    assert status == 400 and "image 1: 2,097,152 bytes, over the 1,048,576-byte limit per image" in text, text
    body, headers = _binary_images([_png(32)] * 5)
    status, text = _request(server, "POST", f"/v2/models/{IMAGES}/infer", body, headers)
    assert status == 400 and "has shape [5, 1]" in text and "1 <= n <= 4" in text, text


def test_memory_stays_flat_under_repeated_undecodable_images(server):

    body, headers = _binary_images([b"junk" * 250_000] * 4)  # the largest undecodable request the limits allow
    _request(server, "POST", f"/v2/models/{IMAGES}/infer", body, headers)  # shared memory grows to its size once
    before = tree_rss_mb(server.proc.pid)
    for _ in range(10):
        status, _ = _request(server, "POST", f"/v2/models/{IMAGES}/infer", body, headers)
        assert status == 400
    assert tree_rss_mb(server.proc.pid) - before < 50


def test_stdout_carries_only_the_ready_line(server):
    assert [line for line in server.stdout if line.strip()] == [next(x for x in server.stdout if x.startswith("ready:"))]


def _png(side: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, str]:
    from deployment.probe_serve import http_request

    return http_request(server.http_port, method, path, body, headers, timeout=30)


def test_the_ready_line_says_the_package_passed_its_check(server):
    ready = next(line for line in server.stdout if line.startswith("ready:"))
    assert "checked: 16 sample images pass the fp32 gates" in ready, ready


def test_a_build_that_fails_its_check_is_not_served_one_line_exit_1(shared: Shared, tmp_path, run_cli):
    require_pytriton()
    import shutil

    build = Path(shutil.copytree(shared.build, tmp_path / "build", ignore=shutil.ignore_patterns(".lock")))
    with open(build / "model.ort.onnx", "ab") as f:
        f.write(b"\0")  # the served artifact is not what was built
    http, grpc, metrics = free_ports(3)
    ports = ["--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics]
    proc = run_cli("pipeline.serve", build, *ports, timeout=120)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: the package check failed: 1 file(s) differ from the build: model.ort.onnx: changed"), line
