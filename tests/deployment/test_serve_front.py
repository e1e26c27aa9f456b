"""The serve front's checks and limits, without a server: what is refused, with which line, and what passes."""

from __future__ import annotations

import inspect
import io

import pytest

from deployment.serve_front import ClientError, Limits, ServedModels, check_inputs, mark_client_error, public_error

MODELS = ServedModels("m_fp32", "m_fp32_classify", (3, 32, 32), 8, 5)
LIMITS = Limits.for_model((3, 32, 32), 8)


def _png(w: int, h: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (w, h)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png(32, 32)


def test_limits_scale_with_the_model_input():
    small, large = Limits.for_model((3, 32, 32), 8), Limits.for_model((3, 224, 224), 32)
    assert small.max_image_pixels == 1 << 20 and small.max_image_bytes == 1 << 20
    assert large.max_image_pixels == 1024 * 224 * 224  # a 51 Mpx phone photo fits
    assert large.max_request_bytes >= 32 * 3 * 224 * 224 * 4  # the largest float batch fits
    assert Limits.for_model((3, 32, 32), 8, max_image_pixels=5).max_image_pixels == 5


@pytest.mark.parametrize(
    "model,inputs,problem",
    [
        ("other", [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}], "unknown model 'other'"),
        ("m_fp32", [{"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32]}], "takes one input, 'input'; got 'x'"),
        ("m_fp32", [{"name": "input", "datatype": "FP16", "shape": [1, 3, 32, 32]}], "must be FP32, got 'FP16'"),
        ("m_fp32", [{"name": "input", "datatype": "FP32", "shape": [2**40, 3, 32, 32]}], "1 <= n <= 8"),
        ("m_fp32", [{"name": "input", "datatype": "FP32", "shape": [0, 3, 32, 32]}], "1 <= n <= 8"),
        ("m_fp32", [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32]}], "takes [n, 3, 32, 32]"),
        ("m_fp32", [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32.0]}], "takes [n, 3, 32, 32]"),
        ("m_fp32", [{"name": "input", "datatype": "FP32", "shape": "x"}], "takes [n, 3, 32, 32]"),
        ("m_fp32", [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "shared_memory": True}], "shared-memory"),
        ("m_fp32_classify", [{"name": "image", "datatype": "BYTES", "shape": [9, 1]}], "1 <= n <= 8"),
        (
            "m_fp32_classify",
            [{"name": "image", "datatype": "BYTES", "shape": [2, 1], "elements": [PNG, bytes(2 << 20)]}],
            "image 1: 2,097,152 bytes",
        ),
        (
            "m_fp32_classify",
            [{"name": "image", "datatype": "BYTES", "shape": [2, 1], "elements": [PNG, b"hello"]}],
            "image 1: not a readable image",
        ),
    ],
)
def test_check_inputs_refuses_with_one_line_naming_the_problem(model, inputs, problem):
    with pytest.raises(ClientError) as refused:
        check_inputs(MODELS, LIMITS, model, inputs)
    assert problem in str(refused.value) and "\n" not in str(refused.value)


def test_check_inputs_passes_what_the_models_take():
    check_inputs(MODELS, LIMITS, "m_fp32", [{"name": "input", "datatype": "FP32", "shape": [8, 3, 32, 32]}])
    check_inputs(MODELS, LIMITS, "m_fp32_classify", [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "elements": [PNG]}])


def test_public_error_passes_a_marked_client_line_and_never_a_traceback_or_path():
    traceback = 'Traceback (most recent call last):\n  File "/srv/x/model.py", line 3\nClientError: ' + mark_client_error(
        "image 2: bad"
    )
    assert public_error(traceback) == (True, "image 2: bad")
    assert public_error('Traceback (most recent call last):\n  File "/srv/x.py"\nKeyError: 1') == (False, "")
    assert public_error("failed to open /tmp/folderAbc/1/model.py: no") == (False, "failed to open <path>: no")


def test_the_decode_budget_refuses_before_any_pixel_is_decoded(monkeypatch):
    import common.images
    from deployment.serve_worker import _decode_within_budget

    decoded = []
    monkeypatch.setattr(common.images, "decode_rgb", lambda data, name, limit: decoded.append(name))
    budget = Limits(
        max_image_bytes=1 << 20, max_image_pixels=1000 * 1000, max_request_pixels=2_500_000, max_request_bytes=1 << 30
    )
    with pytest.raises(ClientError, match="image 2: the request's images declare 3,000,000 pixels"):
        _decode_within_budget([_png(1000, 1000)] * 3, budget)
    with pytest.raises(ClientError, match="image 0: declares 1,001,000 pixels, over this model's 1,000,000-pixel limit"):
        _decode_within_budget([_png(1000, 1001)], budget)
    assert decoded == []
    _decode_within_budget([_png(1000, 1000)] * 2, budget)
    assert decoded == ["image 0", "image 1"]


def test_pytritons_instance_race_is_recognised_and_nothing_else():
    communication = pytest.importorskip("pytriton.proxy.communication", reason="NVIDIA PyTriton is not installed")
    from deployment.serve_worker import instances_raced

    # the one-second wait the worker starts Triton again for; if PyTriton waits longer or renames it, look again
    wait = inspect.signature(communication.get_config_from_handshake_server).parameters["timeout_s"]
    assert wait.default == 1.0
    # what a model that lost the race looked like: Triton's load error with the stub's traceback
    lost = (
        "[400] load failed for model 's2mlpv2_tiny_test_fp32_classify': version 1 is at UNAVAILABLE state: Internal: "
        'TritonModelException: Model initialize error: Traceback (most recent call last): File "/tmp/folderr8Y9w1/1/'
        'model.py", line 425, in initialize inference_handler_config = get_config_from_handshake_server(handshake_socket)'
    )
    assert instances_raced(lost)
    assert instances_raced("TimeoutError: Timeout occurred while waiting for config file /tmp/x/m-config.sock")
    assert not instances_raced("[400] load failed for model 'm': version 1 is at UNAVAILABLE state: Internal: ImportError")
    assert not instances_raced("Triton Inference Server exited with failure: address already in use")
