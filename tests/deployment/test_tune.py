"""``pipeline.tune``: the choice rule on measured points, and a real search on the tiny build, recorded and used."""

from __future__ import annotations

import json
import shutil

import pytest

from deployment.tune import Point, choose, pareto
from deployment.tuned import ServingChoice
from tests.failures import Shared


def _point(label: str, throughput: list[float], p99: list[float], **settings) -> Point:
    return Point(ServingChoice(**settings), label, throughput, p99)


def test_a_challenger_wins_only_beyond_the_spread_between_repeats():
    default = _point("defaults", [100.0, 110.0], [20.0, 22.0])
    close = _point("queue delay 500 us", [105.0, 115.0], [21.0, 23.0], queue_delay_us=500)
    chosen, why = choose([default, close], budget_ms=50)
    assert chosen is default and "within the spread" in why
    clear = _point("2 instances", [130.0, 135.0], [25.0, 24.0], instances=2)
    chosen, why = choose([default, close, clear], budget_ms=50)
    assert chosen is clear and "beats their better one" in why


def test_the_budget_excludes_points_and_the_front_keeps_the_undominated():
    default = _point("defaults", [100.0, 101.0], [20.0, 21.0])
    fast_but_slow_tail = _point("queue delay 2000 us", [200.0, 201.0], [80.0, 85.0], queue_delay_us=2000)
    dominated = _point("queue delay 0 us", [90.0, 91.0], [30.0, 31.0], queue_delay_us=0)
    chosen, _ = choose([default, fast_but_slow_tail, dominated], budget_ms=50)
    assert chosen is default
    assert pareto([default, fast_but_slow_tail, dominated]) == [default, fast_but_slow_tail]
    nothing, why = choose([_point("defaults", [1.0, 1.0], [99.0, 99.0])], budget_ms=50)
    assert "no configuration kept p99 within 50 ms" in why and nothing.label == "defaults"


@pytest.mark.slow
def test_tune_measures_twice_records_the_choice_and_serve_and_triton_repo_use_it(shared: Shared, run_cli, tmp_path):
    from tests.deployment.serving import require_pytriton

    require_pytriton()
    build = shutil.copytree(shared.build, tmp_path / "build", ignore=shutil.ignore_patterns(".lock"))
    out = tmp_path / "tune.md"
    proc = run_cli(
        "pipeline.tune",
        build,
        "--p99-ms",
        "5000",
        "--concurrency",
        "2",
        "--minutes",
        "0.4",
        "--requests",
        "10",
        "--seconds",
        "5",
        "--out",
        out,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["points"][0]["label"] == "defaults"
    assert all(len(p["throughput_by_repeat"]) == 2 and len(p["p99_ms_by_repeat"]) == 2 for p in report["points"])
    assert all(q is not None and q >= 0 for p in report["points"] for q in p["queue_ms_by_repeat"])  # what the server did
    level = report["points"][0]["levels_by_repeat"][0][0]
    assert level["concurrency"] == 2 and level["dynamic_batching"] is True and level["batch_histogram"]
    assert {"avg_batch", "queue_ms", "compute_ms", "p99_ms"} <= set(level)
    assert report["skipped"] and "Skipped for time (--minutes 0.4)" in out.read_text()  # bounded in time, and says so
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    recorded = ServingChoice.read(build)
    assert recorded is not None and recorded.settings() == report["chosen_settings"]
    # the Triton repository carries the choice
    from deployment.triton_repo import read_config, write_package_repository

    recorded_delay = ServingChoice(queue_delay_us=777, preferred_batch=(2,), instances=2)
    recorded_delay.write(build)
    ((folder, _),) = write_package_repository(tmp_path / "repo", build)
    config = read_config((folder / "config.pbtxt").read_text())
    assert config["dynamic_batching"] == {"preferred_batch_size": [2], "max_queue_delay_microseconds": 777}
    assert config["instance_group"][0]["count"] == 2
    # and serve takes it by default, saying so on its ready line
    from deployment.loadtest import start_server, stop_server

    server = start_server(build)
    try:
        ready = next(line for line in server.stdout if line.startswith("ready:"))
    finally:
        assert stop_server(server) == 0
    assert "queue delay 777 us" in ready and "2 model instances" in ready and "tuned by pipeline.tune (serving.json" in ready


def test_a_configuration_whose_server_does_not_start_is_tried_again_then_reported(shared: Shared, monkeypatch):
    import deployment.tune as tune_module
    from deployment.loadtest import LoadTestError

    attempts: dict[str, int] = {}

    def measure(build, label, choice, concurrency, requests, seconds):
        attempts[label] = attempts.get(label, 0) + 1
        if label == "queue delay 0 us":
            raise LoadTestError("the server exited with status 2: the Triton server did not start")
        if label == "queue delay 500 us" and attempts[label] == 1:
            raise LoadTestError("a start that timed out once")
        return _point(label, [100.0, 101.0], [10.0, 11.0], **choice.settings())

    monkeypatch.setattr(tune_module, "measure", measure)
    report = tune_module.tune(shared.build, 50.0, [2], 5.0, 10, 1.0, say=lambda _: None)
    assert attempts["queue delay 0 us"] == 2 and attempts["queue delay 500 us"] == 2
    assert [f["label"] for f in report["failed"]] == ["queue delay 0 us"]
    assert "queue delay 500 us" in [p["label"] for p in report["points"]]
    assert "the server did not start (twice)" in tune_module._markdown(report, "cmd")
