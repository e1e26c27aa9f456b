"""Stopping ``deployment.serve``: SIGTERM under load and Ctrl-C end it with status 0 in under 30 s, requests in flight
answered, and no ``tritonserver`` left behind. Each test starts its own server and stops it by process id."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from common.processes import alive, children_named
from tests.deployment.serving import good_load, require_pytriton
from tests.failures import Shared

pytestmark = pytest.mark.slow  # a real tritonserver starts and stops: tens of seconds

FLOAT = "s2mlpv2_tiny_test_fp32"


@pytest.fixture
def server(shared: Shared):
    require_pytriton()
    from deployment.loadtest import start_server, stop_server

    srv = start_server(shared.build)
    try:
        yield srv
    finally:
        stop_server(srv)  # only if the test did not stop it


def _stop_and_wait(server, sig) -> tuple[int, float, list[int]]:
    tritonservers = children_named(server.proc.pid, "tritonserver")
    t0 = time.monotonic()
    server.proc.send_signal(sig)
    status = server.proc.wait(timeout=60)
    return status, time.monotonic() - t0, tritonservers


def test_sigterm_during_load_finishes_requests_in_flight_and_exits_0(server, shared: Shared):
    from deployment.deployed import DeployedModel

    model = DeployedModel.open(shared.build)
    x = np.stack([model.preprocess(p) for p in sorted(shared.images.rglob("*.png"))[:4]])
    with good_load(server.grpc_url, FLOAT, x, clients=4, limit=2000, seconds=90) as load:
        time.sleep(1.0)
        signal_at = time.monotonic()
        status, seconds, tritonservers = _stop_and_wait(server, signal.SIGTERM)
    assert status == 0, server.proc.stderr.read()
    assert seconds < 30
    assert tritonservers and not any(alive(pid) for pid in tritonservers)
    # every request that had been under way for a moment when the signal came was answered
    before = [error for started, error in load.outcomes if started < signal_at - 0.05]
    assert len(before) >= 4 and not [e for e in before if e is not None], [e for e in before if e][:3]
    assert "stopping: requests in flight finish first" in server.proc.stderr.read()


def test_ctrl_c_exits_0_and_leaves_no_tritonserver(server):
    status, seconds, tritonservers = _stop_and_wait(server, signal.SIGINT)
    assert status == 0 and seconds < 30
    assert tritonservers and not any(alive(pid) for pid in tritonservers)


def _ready(server) -> bool:
    from deployment.probe_serve import http_request

    return http_request(server.http_port, "GET", "/v2/health/ready", timeout=5)[0] == 200


def test_a_killed_tritonserver_is_restarted_and_readiness_is_false_meanwhile(server):
    (pid,) = children_named(server.proc.pid, "tritonserver")
    os.kill(pid, signal.SIGKILL)
    deadline, seen_down = time.monotonic() + 90, False
    while time.monotonic() < deadline:
        up = _ready(server)
        seen_down = seen_down or not up
        if seen_down and up:
            break
        time.sleep(0.1)
    assert seen_down and _ready(server), server.proc.stderr
    assert children_named(server.proc.pid, "tritonserver") and pid not in children_named(server.proc.pid, "tritonserver")
    assert server.proc.poll() is None


def test_sigkill_of_serve_leaves_no_process_and_no_temporary_folder(server):
    import tempfile
    from pathlib import Path

    from common.processes import command_line, command_name, descendants

    below = descendants(server.proc.pid)
    stubs = {p for p in below if command_name(p).startswith("triton_python")}
    folders = {Path(command_line(p)[1].decode()).parent.parent for p in stubs}
    run_dirs = set(Path(tempfile.gettempdir()).glob(f"s2mlpv2-serve-{server.proc.pid}-*"))
    assert folders and run_dirs
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and (any(alive(p) for p in below) or any(f.exists() for f in folders | run_dirs)):
        time.sleep(0.2)
    assert not [p for p in below if alive(p)]
    assert not [f for f in folders | run_dirs if f.exists()]
