"""``python -m pipeline.serve`` against a real ``tritonserver`` on 127.0.0.1: answers, and faults under concurrent load.

One server for the module (PyTriton runs one server per machine at a time reliably, so every
serving test module starts its own and stops it, by process id, before the next module runs).
Each fault is sent while good requests run in the background: the fault gets a Triton error that
names the problem, every good request succeeds, and the server stays ready.
"""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.failures import Case, Fails, Shared, run_case
from tests.pipeline.serving import alive, children_named, good_load, infer_images, infer_logits, require_pytriton

pytestmark = pytest.mark.slow  # a real tritonserver starts and stops: tens of seconds


@pytest.fixture(scope="module")
def server(shared: Shared):
    require_pytriton()
    from pipeline.loadtest import start_server, stop_server

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
    from pipeline.deployed import DeployedModel

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
            r"data-type is 'FP64', but model .* expects 'FP32'",
        ),
        (
            lambda url, x: infer_logits(url, FLOAT, x[:, :, :16]),
            r"unexpected shape for input 'input'.*Expected \[-1,3,32,32\], got \[4,3,16,32\]",
        ),
        (lambda url, x: infer_logits(url, FLOAT, np.concatenate([x, x[:1]])), r"batch-size must be <= 4"),
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
        (b"", 400, r"input byte size mismatch .* got 0"),
        (b'{"inputs": [{"name": "input", "shape": [1, 3', 500, r"failed to parse the request JSON buffer"),
    ],
    ids=["empty-body", "malformed-json"],
)
def test_an_empty_or_malformed_http_body_is_refused(body, status, problem, server, batch):
    import re

    # Triton's own answers: an empty body is read as raw binary input of the wrong size (400); a
    # JSON body it cannot parse is a 500 with the parser's message
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
    from pipeline.loadtest import free_ports
    from pipeline.serve import main

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

    from pipeline import serve

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


def free_port_flags() -> list[str]:
    from pipeline.loadtest import free_ports

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
