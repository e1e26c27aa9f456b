from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from pipeline.benchmark import gemm_ceilings, time_fn
from pipeline.export import ExportSettings, export_onnx
from pipeline.manifest import Manifest
from tests.failures import FP32_BUILD, TINY, Case, Fails, Shared, assert_fails_cleanly, files_under, run_case, truncated


def test_time_fn_runs_warmup_plus_at_least_iters():
    calls = []
    times = time_fn(lambda: calls.append(1), warmup=2, iters=5)
    assert len(calls) >= 7 and len(times) >= 5 and (times >= 0).all()


def test_gemm_ceilings_are_in_a_plausible_range_for_a_cpu():
    c = gemm_ceilings(256, iters=3)
    # one to a few cores of any CPU from the last decade: a unit slip (ms for s, n^2 for n^3) lands far outside
    assert 1 < c["fp32"] < 20_000 and 1 < c["int8"] < 100_000
    assert 0.2 < c["int8"] / c["fp32"] < 50  # integer GEMMs are neither free nor hopeless


@pytest.mark.slow
def test_cli_writes_json_markdown_and_plot(tmp_path, run_cli):
    torch.manual_seed(0)
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(models.create_model("s2mlpv2_tiny_test").eval(), onnx_path, ExportSettings())
    out = tmp_path / "bench.json"
    run_cli(
        "pipeline.benchmark",
        "--model",
        "s2mlpv2_tiny_test",
        "--onnx",
        onnx_path,
        "--batches",
        "1",
        "2",
        "--iters",
        "3",
        "--min-seconds",
        "0",
        "--gemm-size",
        "128",
        "--profile",
        "--rounds",
        "2",
        "--out",
        out,
        check=True,
    )
    result = json.loads(out.read_text())
    backends = {r["backend"] for r in result["rows"]}
    assert backends == {"torch eager fp32", "onnxruntime fp32 (tiny.onnx)"}
    assert {r["batch"] for r in result["rows"]} == {1, 2}
    for r in result["rows"]:
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["images_per_s"] > 0
        assert np.isfinite(r["speedup_vs_eager"])
        # two rounds: the reported p50 and fraction are the medians of the rounds' own
        assert len(r["p50_ms_by_round"]) == 2 and r["iters"] >= 6
        assert r["p50_ms"] == np.median(r["p50_ms_by_round"])
        assert r["fraction_of_ceiling"] == np.median(r["fraction_of_ceiling_by_round"])
        ceiling = max(c["int8" if r["precision"] == "int8" else "fp32"] for c in result["ceilings_gflops_by_round"])
        assert np.isclose(r["fraction_of_ceiling_best"], r["gflops"] * r["p50_ms"] / min(r["p50_ms_by_round"]) / ceiling)
    assert len(result["ceilings_gflops_by_round"]) == 2
    assert result["provenance"]["threads"] >= 1 and "onnxruntime" in result["provenance"]["versions"]
    # one profile per artifact and batch: op times add up, GEMM-class kernels are found and bounded
    assert [(p["artifact"], p["batch"]) for p in result["profiles"]] == [("tiny.onnx", 1), ("tiny.onnx", 2)]
    for prof in result["profiles"]:
        assert abs(sum(o["ms"] for o in prof["ops"]) - prof["kernel_ms"]) < 1e-6
        assert {"MatMul", "LayerNormalization"} <= {o["op"] for o in prof["ops"]}
        assert 0 < prof["gemm_ms"] < prof["kernel_ms"] and prof["gemm_gflops"] > 0
        # each mixer's two shifted branches are one Gather each; the third is a GEMM's output, used in place
        # (ORT turns split attention's weight Gathers into a Split)
        assert sum(o["nodes"] for o in prof["ops"] if o["op"] == "Gather") == 2 * sum(
            models.get_variant("s2mlpv2_tiny_test").layers
        )
        assert {o["op"] for o in prof["ops"]}.isdisjoint({"Pad", "Concat"})
    assert out.with_suffix(".md").read_text().startswith("# Benchmark")
    assert "2 rounds, each measuring the ceilings and then every row" in out.with_suffix(".md").read_text()
    assert "## Profile: tiny.onnx (fp32) on onnxruntime, batch 2 (ONNX Runtime profiler)" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_cli_missing_artifact_is_one_line_error(tmp_path, capsys):
    argv = ["--model", "s2mlpv2_tiny_test", "--onnx", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "b.json")]
    status = importlib.import_module("pipeline.benchmark").main(argv)
    assert_fails_cleanly(status, capsys.readouterr().err, Fails("artifact not found", "nope.onnx"))


def test_cli_rejects_zero_rounds(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error
        importlib.import_module("pipeline.benchmark").main(["--rounds", "0", "--out", str(tmp_path / "b.json")])
    assert exit_.value.code == 2 and "--rounds must be at least 1, got 0" in capsys.readouterr().err.splitlines()[-1]
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- bad input, through the tools


CLEAN_FAILURES = [
    Case(
        "onnx-truncated-benchmark",
        "pipeline.benchmark",
        lambda tmp, s: [
            "--model",
            TINY,
            "--onnx",
            str(truncated(s.onnx, tmp / "t.onnx")),
            "--threads",
            "1",
            "--out",
            str(tmp / "out" / "b.json"),
        ],
        Fails("not a readable ONNX file", "re-run the export stage"),
    ),
]


@pytest.mark.parametrize("case", CLEAN_FAILURES, ids=[c.id for c in CLEAN_FAILURES])
def test_bad_input_fails_cleanly(case: Case, shared: Shared, tmp_path: Path, capsys):
    run_case(case, shared, tmp_path, capsys)


@pytest.mark.parametrize("where", ["_measure", "_plot"])
def test_interrupt_inside_the_benchmark_is_one_line(shared: Shared, tmp_path: Path, capsys, monkeypatch, where: str):
    """Where the signal lands in a stage is up to timing; the subprocess test above cannot choose, this one does."""
    import pipeline.benchmark

    out = shutil.copytree(shared.build, tmp_path / "out", ignore=shutil.ignore_patterns(".lock"))
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        (out / name).unlink()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.benchmark, where, interrupted)
    before = files_under(out)
    status = importlib.import_module("build_engine").main([*FP32_BUILD, "--out", str(out)])
    assert_fails_cleanly(
        status, capsys.readouterr().err, Fails("interrupted", "run the same command again to continue", status=130)
    )
    assert list(Manifest(out).stages) == ["export", "build", "verify", "sample"]
    assert files_under(out) - {".lock"} == before  # the lock file stays; its lock does not


def test_rows_of_a_plugin_form_graph_say_their_shift_is_a_stand_in(graphs, tmp_path):
    from pipeline.benchmark import BenchmarkSettings, benchmark

    settings = BenchmarkSettings(batches=(1,), warmup=0, iters=1, min_seconds=0, gemm_size=64, eager=False)
    standard, plugin = graphs.get("tiny"), graphs.get("tiny", "plugin")
    result = benchmark(graphs.model("tiny"), tmp_path / "b.json", settings, [plugin], reference_onnx=standard)
    notes = {r["backend"].split("(")[1].rstrip(")"): r["note"] for r in result["rows"]}
    assert "Python stand-in" in notes[plugin.name] and notes[standard.name] is None


# ----------------------------------------------------------------------------- --compare


def _report(path: Path, rows: dict[tuple[str, int], list[float]]) -> Path:
    import json

    path.write_text(
        json.dumps(
            {
                "rows": [
                    {"backend": b, "batch": n, "p50_ms": 10 / float(np.median(f)), "p50_ms_by_round": [10 / x for x in f]}
                    for (b, n), f in rows.items()
                ]
            }
        )
    )
    return path


def test_compare_says_faster_slower_or_same_by_the_rounds_spread(tmp_path, capsys):
    main = importlib.import_module("pipeline.benchmark").main
    old = _report(
        tmp_path / "old.json",
        {("ort int8", 1): [0.30, 0.31, 0.29, 0.30], ("ov int8", 1): [0.40, 0.41, 0.39, 0.40], ("noisy", 8): [0.2, 0.3, 0.25]},
    )
    new = _report(
        tmp_path / "new.json",
        {("ort int8", 1): [0.36, 0.37, 0.35, 0.36], ("ov int8", 1): [0.40, 0.40, 0.41, 0.39], ("noisy", 8): [0.22, 0.31, 0.24]},
    )
    assert main(["--compare", str(old), str(new)]) == 0
    table = capsys.readouterr().out
    assert "| ort int8 | 1 |" in table and table.split("| ort int8 | 1 |")[1].split("\n")[0].endswith("| faster |")
    assert table.split("| ov int8 | 1 |")[1].split("\n")[0].endswith("| same |")
    assert table.split("| noisy | 8 |")[1].split("\n")[0].endswith("| same |")  # a 5 % change inside a 40 % spread
    # the other way round, the int8 row is slower beyond the noise: exit 1
    assert main(["--compare", str(new), str(old)]) == 1
    assert "1 row(s) slower beyond the noise" in capsys.readouterr().out


def test_compare_needs_rounds_to_judge_and_refuses_a_foreign_file(tmp_path, capsys):
    main = importlib.import_module("pipeline.benchmark").main
    one = _report(tmp_path / "one.json", {("ort", 1): [0.3]})
    two = _report(tmp_path / "two.json", {("ort", 1): [0.1]})
    assert main(["--compare", str(one), str(two)]) == 0  # one round: not judged, never a false alarm
    assert "not judged" in capsys.readouterr().out
    (tmp_path / "junk.json").write_text("[1, 2]")
    status = main(["--compare", str(one), str(tmp_path / "junk.json")])
    assert_fails_cleanly(
        status, capsys.readouterr().err, Fails("is not a report of python -m pipeline.benchmark", "give the .json")
    )
