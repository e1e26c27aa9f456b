"""pipeline.ir_hint: the int8 IR's float-part hint, chosen by fidelity on held-out images and then by speed."""

from __future__ import annotations

import numpy as np
import pytest

from engines.openvino import available, cpu_facts, hint_candidates, read_ir_sidecar
from pipeline.ir_hint import MAX_KL_RATIO, MIN_SPEEDUP, HintMeasurement, choose, measure_hints, record
from tests.conftest import missing


def _m(hint: str, kl: float, b1: float, b8: float, passed: bool = True) -> HintMeasurement:
    return HintMeasurement(hint, kl, 0.999, 1.0, passed, "cosine_min 0.999 >= 0.99", {1: b1, 8: b8})


F32 = _m("f32", kl=1e-5, b1=10.0, b8=60.0)


@pytest.mark.parametrize(
    "sixteen,chosen,why",
    [
        (_m("bf16", kl=1.1e-5, b1=8.0, b8=50.0), "bf16", "within 25% of f32's KL and faster"),
        (_m("bf16", kl=1.1e-5, b1=8.0, b8=59.0), "f32", "not 5% faster at every batch"),  # 1.02x at batch 8
        (_m("bf16", kl=1.3e-5, b1=5.0, b8=30.0), "f32", "adds 30% to the KL (at most 25%)"),
        (_m("bf16", kl=0.9e-5, b1=5.0, b8=30.0, passed=False), "f32", "fails the held-out check"),
    ],
)
def test_sixteen_bit_float_parts_must_pass_stay_close_to_f32_and_be_faster(sixteen, chosen, why):
    hint, reason = choose([sixteen, F32])
    assert hint == chosen and why in reason
    speedup = f"{F32.p50_ms[1] / sixteen.p50_ms[1]:.2f}x at batch 1, {F32.p50_ms[8] / sixteen.p50_ms[8]:.2f}x at batch 8"
    assert reason.startswith(f"bf16 {speedup} against f32, mean KL {sixteen.kl_mean:.2e} against f32's 1.00e-05")


def test_the_rule_is_what_the_docstring_says():
    assert (MIN_SPEEDUP, MAX_KL_RATIO) == (1.05, 1.25)
    edge = _m("bf16", kl=1e-5 * MAX_KL_RATIO, b1=10.0 / MIN_SPEEDUP, b8=60.0 / MIN_SPEEDUP)
    assert choose([edge, F32])[0] == "bf16"


def test_one_candidate_is_taken_as_it_is():
    assert choose([F32]) == ("f32", "the only hint this CPU offers")


def test_the_record_keeps_every_measurement_and_the_rule():
    hint, reason = choose([_m("bf16", 2e-5, 9.0, 50.0), F32])
    kept = record([_m("bf16", 2e-5, 9.0, 50.0), F32], hint, reason, "64 held-out calibration images")
    assert kept["chosen"] == "f32" and kept["images"] == "64 held-out calibration images"
    assert kept["rule"] == {"min_speedup": 1.05, "max_kl_ratio": 1.25}
    assert [m["hint"] for m in kept["measured"]] == ["bf16", "f32"] and kept["measured"][1]["p50_ms"] == {"1": 10.0, "8": 60.0}


def test_int8_candidates_are_the_cpus_16_bit_float_and_f32():
    assert hint_candidates("int8", ("BF16", "FP32", "INT8")) == ("bf16", "f32")
    assert hint_candidates("int8", ("FP16", "FP32", "INT8")) == ("f16", "f32")
    assert hint_candidates("int8", ("FP32", "INT8")) == ("f32",)
    assert hint_candidates("fp16", ("BF16", "FP32", "INT8")) == ("bf16",)
    assert hint_candidates("fp32", ("BF16", "FP32", "INT8")) == ("f32",)


def test_measuring_builds_and_runs_every_candidate_on_the_tiny_int8_graph(graphs, tmp_path):
    if not available():
        missing("needs OpenVINO: `pip install openvino` (a default dependency)", "openvino")
    int8, fp32 = graphs.get("tiny", precision="int8"), graphs.get("tiny")
    candidates = hint_candidates("int8", cpu_facts()[1])
    images = np.random.default_rng(0).standard_normal((12, 3, 32, 32)).astype(np.float32)
    measured = measure_hints(int8, fp32, "int8", candidates, images, False, (1, 4), seconds=0.02)
    assert [m.hint for m in measured] == list(candidates)
    for m in measured:
        assert 0 <= m.kl_mean < 1 and 0 < m.cosine_min <= 1 + 1e-6 and set(m.p50_ms) == {1, 4}
        assert all(ms > 0 for ms in m.p50_ms.values())
    assert not list(int8.parent.glob(".ir-hints-*")), "the candidates' IRs are removed"
    hint, reason = choose(measured)
    from engines.openvino import build_ir

    built = build_ir(int8, tmp_path / "model.xml", "int8", hint=hint, hint_choice=record(measured, hint, reason, "12 images"))
    sidecar = read_ir_sidecar(built.xml)
    assert sidecar.requested_hint == hint and sidecar.hint_choice["chosen"] == hint and sidecar.computes == "int8"


def test_a_hint_the_cpu_does_not_offer_is_refused_in_one_line(graphs, tmp_path):
    if not available():
        missing("needs OpenVINO: `pip install openvino` (a default dependency)", "openvino")
    from engines.openvino import IRError, build_ir

    with pytest.raises(IRError, match=r"hint 'f64' is not one this .* offers for int8 \(.*f32\)"):
        build_ir(graphs.get("tiny", precision="int8"), tmp_path / "model.xml", "int8", hint="f64")
    assert not list(tmp_path.iterdir())
