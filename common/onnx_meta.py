"""The project's ONNX metadata keys, and the one place that reads them (and loads a graph with a clear error).

An exported graph carries, in ``metadata_props``: ``s2mlpv2.card`` (the model card as JSON),
``s2mlpv2.model`` (the variant), ``s2mlpv2.shift_impl`` (``onnx`` or ``plugin``); a converted
graph adds ``s2mlpv2.precision`` (``fp16`` or ``int8``; absent means fp32), and an int8 graph ``s2mlpv2.repairs`` (a
JSON list of ``"MODULE: repair"``, empty where none was needed).
"""

from __future__ import annotations

import os

from .errors import S2MLPv2Error

__all__ = [
    "OPSET",
    "CARD_KEY",
    "MODEL_KEY",
    "SHIFT_IMPL_KEY",
    "PRECISION_KEY",
    "REPAIRS_KEY",
    "load_onnx",
    "read_metadata",
    "write_metadata",
    "graph_precision",
]

OPSET = 20  # the opset the export writes, and the least it accepts (native Gelu and LayerNormalization)
CARD_KEY = "s2mlpv2.card"
MODEL_KEY = "s2mlpv2.model"
SHIFT_IMPL_KEY = "s2mlpv2.shift_impl"
PRECISION_KEY = "s2mlpv2.precision"
REPAIRS_KEY = "s2mlpv2.repairs"


def load_onnx(path: str | os.PathLike, error: type[S2MLPv2Error] = S2MLPv2Error, load_external_data: bool = False):
    """``onnx.load(path)``, or ``error`` with one line when the file is not a readable ONNX graph (truncated, foreign)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # protobuf's DecodeError and friends
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise error(f"{path} is not a readable ONNX file ({reason}); re-run the export stage") from None


def read_metadata(model) -> dict[str, str]:
    """An ONNX ``ModelProto``'s ``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model, props: dict[str, str]) -> None:
    """Replace the ``metadata_props`` of ``model`` with ``props``."""
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


def graph_precision(model) -> str:
    """``fp32``, ``fp16`` or ``int8``: what the precision stage recorded in the graph."""
    return read_metadata(model).get(PRECISION_KEY, "fp32")
