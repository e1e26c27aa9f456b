from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.ort import OnnxRuntimeRunner, make_session, session_with_outputs
from pipeline.equalize import MIN_RELATIVE_SCALE, equalize_gelu_inputs, gelu_gemms
from pipeline.precision import quantize_int8


@pytest.fixture(scope="module")
def tiny(graphs):
    """(standard graph, 32 preprocessed images): the session's tiny export (``graphs``)."""
    return graphs.get("tiny"), graphs.images("tiny", 32)


def _gelu_mlp(path, k: int = 32, n: int = 16, seed: int = 0):
    """input (B, 4, K) -> Gelu -> MatMul (K x N) -> Add bias -> output: the shape of an MLP's second GEMM."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("Gelu", ["x"], ["g"], name="gelu"),
            helper.make_node("MatMul", ["g", "w"], ["h"], name="fc2"),
            helper.make_node("Add", ["h", "b"], ["y"], name="fc2_bias"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, n])],
        [
            numpy_helper.from_array((rng.standard_normal((k, n)) * 0.2).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), str(path))
    # channels of very different ranges, as a Gelu's are
    return (rng.standard_normal((64, 4, k)) * np.linspace(0.2, 4.0, k)).astype(np.float32)


def test_equalized_fp32_graph_computes_the_same_logits(tiny, tmp_path):
    path, images = tiny
    model = onnx.load(str(path))
    equalized = equalize_gelu_inputs(model, images)
    assert len(equalized) == 2  # one MLP per block, two blocks
    onnx.save(model, str(tmp_path / "equalized.onnx"))
    ref, got = OnnxRuntimeRunner(path)(images), OnnxRuntimeRunner(tmp_path / "equalized.onnx")(images)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_equalized_channels_share_one_symmetric_range(tiny):
    path, images = tiny
    model = onnx.load(str(path))
    equalized = equalize_gelu_inputs(model, images)
    tensors = [n.input[0] for n in model.graph.node if n.name in {e.gemm for e in equalized}]
    session = session_with_outputs(model, tensors)
    for e, out in zip(equalized, session.run(tensors, {session.get_inputs()[0].name: images})):
        rows = out.reshape(-1, out.shape[-1])
        lo, hi = rows.min(0), rows.max(0)
        bound = max(-lo.min(), hi.max())
        stretched = e.scale > MIN_RELATIVE_SCALE
        # every channel is centred and spans the same range, the widest one's: one int8 step fits all
        np.testing.assert_allclose(hi[stretched], bound, rtol=1e-4)
        np.testing.assert_allclose(lo[stretched], -bound, rtol=1e-4)


def test_gemms_kept_in_fp32_are_not_equalized(tiny):
    path, _ = tiny
    model = onnx.load(str(path))
    names = [m.name for m, *_ in gelu_gemms(model)]
    assert len(names) == 2 and [m.name for m, *_ in gelu_gemms(model, exclude=names[:1])] == names[1:]


def test_int8_bias_meets_the_weights_the_graph_dequantizes(tmp_path):
    # A bias folded from the fp32 weights would multiply each weight's rounding by the centre.
    src, out = tmp_path / "mlp.onnx", tmp_path / "mlp-int8.onnx"
    x = _gelu_mlp(src)
    assert quantize_int8(src, out, x, "max") == (["fc2"], [])
    model = onnx.load(str(out))
    fc2 = next(n for n in model.graph.node if n.name == "fc2")
    producer = {o: n for n in model.graph.node for o in n.output}
    weight_dq, activation_dq = producer[fc2.input[1]], producer[fc2.input[0]]
    # read the weight the graph dequantizes through ONNX Runtime, then let fc2 read its input unrounded
    weight = session_with_outputs(model, [weight_dq.output[0]]).run([weight_dq.output[0]], {"x": x[:1]})[0]
    fc2.input[0] = producer[activation_dq.input[0]].input[0]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(src)).graph.initializer}
    g = session_with_outputs(onnx.load(str(src)), ["g"]).run(["g"], {"x": x})[0].astype(np.float64)
    expected = g @ (weight * inits["fc2_input_inverse_scale"][:, None]) + original["b"]
    # ONNX Runtime's extended optimizations would run the bypassed GEMM as MatMulNBits, which rounds its input again
    got = make_session(model, optimization="basic").run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def _planted_graph(tiny, tmp_path, factor: float):
    """The tiny export with one LayerNorm output channel scaled up by ``factor`` and its GEMMs' input rows down."""
    from pipeline.equalize import layernorm_gemms, own_initializer

    path, images = tiny
    model = onnx.load(str(path))
    norm, gemms = layernorm_gemms(model)[-1]
    for index in (1, 2):
        own_initializer(model, norm, index)  # every LayerNorm of the random-init model shares one scale
    for g in gemms:
        own_initializer(model, g, 1)
    inits = {t.name: t for t in model.graph.initializer}
    for name in norm.input[1:3]:
        v = numpy_helper.to_array(inits[name]).copy()
        v[3] *= factor
        inits[name].CopyFrom(numpy_helper.from_array(v, name))
    for g in gemms:
        w = numpy_helper.to_array(inits[g.input[1]]).copy()
        w[3] /= factor
        inits[g.input[1]].CopyFrom(numpy_helper.from_array(w, g.input[1]))
    planted = tmp_path / f"planted-{factor:g}.onnx"
    onnx.save(model, str(planted))
    return planted, images, norm.name


def test_a_layernorm_outlier_is_smoothed_into_the_weights_and_the_function_stays(tiny, tmp_path):
    from pipeline.equalize import OUTLIER_RATIO, smooth_layernorm_outliers

    planted, images, norm = _planted_graph(tiny, tmp_path, 300.0)
    model = onnx.load(str(planted))
    smoothed = smooth_layernorm_outliers(model, images)
    assert [s.norm for s in smoothed] == [norm] and smoothed[0].outlier_ratio > OUTLIER_RATIO
    onnx.save(model, str(tmp_path / "smoothed.onnx"))
    ref, got = OnnxRuntimeRunner(planted)(images), OnnxRuntimeRunner(tmp_path / "smoothed.onnx")(images)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # the outlier channel's range is now within a few times the median channel's
    (out,) = session_with_outputs(model, [norm_out := next(n.output[0] for n in model.graph.node if n.name == norm)]).run(
        [norm_out], {"input": images}
    )
    amax = np.abs(out.reshape(-1, out.shape[-1])).max(0)
    assert amax.max() / np.median(amax) < OUTLIER_RATIO


def test_a_model_without_an_outlier_is_left_exactly_as_it_was(tiny):
    from pipeline.equalize import smooth_layernorm_outliers

    path, images = tiny
    model = onnx.load(str(path))
    before = model.SerializeToString()
    assert smooth_layernorm_outliers(model, images) == [] and model.SerializeToString() == before
