"""Checkpoints: safetensors weights plus a JSON model card.

A checkpoint ``name.safetensors`` is written with its card twice: inside the safetensors
header (so a lone file is self-describing) and as ``name.json`` beside it (so people can read
it). The card holds the model config, the preprocessing, the class names and how the weights
were made. Calibration and evaluation read preprocessing from here and never re-declare it.

Users' own files load too: plain PyTorch state dicts (``.pt``/``.pth``/``.bin``, possibly
wrapped in ``{"state_dict": ...}`` or ``{"model": ...}`` and prefixed with ``module.``) and
ViP-style key layouts. Pickles are opened with ``torch.load(weights_only=True)`` only, which
refuses any object that is not a tensor or a plain container: code hidden in a pickle never runs.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from common.fileio import atomic_path, atomic_write_json

from .card import _METADATA_KEY, CheckpointError, ModelCard, _short, card_path_for, read_card
from .s2mlpv2 import S2MLPv2, S2MLPv2Config, get_variant, list_models

__all__ = ["CheckpointError", "ModelCard", "save_checkpoint", "load_checkpoint", "read_card", "card_path_for"]

_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def save_checkpoint(model: S2MLPv2, path: str | os.PathLike, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (.safetensors) and its card ``path.json``, each atomically. Returns the weights path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoints are written as .safetensors; got {path.name!r}")
    card = ModelCard(model.config, dict(provenance or {}))
    card_dict = card.to_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(card_dict)})
    atomic_write_json(card_path_for(path), card_dict)
    return path


def load_checkpoint(
    path: str | os.PathLike, model_name: str | None = None, map_location: str = "cpu", **overrides: Any
) -> S2MLPv2:
    """Load a checkpoint into a new model in eval mode.

    The variant comes from ``model_name`` if given, else the card, else it is recognised from
    the tensor shapes. On a key or shape mismatch the error lists the first mismatches and
    names the variant the file seems to be for.
    """
    path = Path(path)
    card = read_card(path)
    state = _read_state_dict(path, map_location)
    state = _normalise_keys(state)

    if model_name is not None:
        config = get_variant(model_name)
        if card is not None and card.config.name == model_name:
            config = card.config
    elif card is not None:
        config = card.config
    else:
        config = _guess_variant(state)
        if config is None:
            raise CheckpointError(
                f"{path} has no model card and its tensors match no registered variant; "
                f"pass the model name (one of {', '.join(list_models())})"
            )
    head = state.get("head.weight")
    if card is None and head is not None and head.dim() == 2 and head.shape[0] != config.num_classes:
        config = config.replace(num_classes=head.shape[0], class_names=None)
    if overrides:
        config = config.replace(**overrides)

    model = S2MLPv2(config)
    _check_fit(path, model, state, config.name, has_card=card is not None)
    model.load_state_dict(state, strict=True)
    if card is not None:
        model.card = card  # type: ignore[attr-defined]
    return model.eval()


# --------------------------------------------------------------------------- internals


def _read_state_dict(path: Path, map_location: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=map_location)
        except Exception as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({_short(e)}); it may be truncated or corrupt: re-copy or re-save it"
            ) from None
    if path.suffix not in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"unsupported checkpoint type {path.suffix!r} for {path}; use .safetensors or a PyTorch state dict "
            f"({', '.join(_PICKLE_SUFFIXES)})"
        )
    try:
        with warnings.catch_warnings():
            # torch's note on a foreign pickle's protocol; the refusal below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:
        msg = str(e)
        refusal = re.search(r"Unsupported (?:global|operand)[^\n]*", msg)  # the weights-only unpickler's reason
        if "Unsupported global" in msg or (refusal and _imports_callables(path)):
            raise CheckpointError(
                f"{path} holds Python objects other than tensors, which could run code when unpickled; refused. "
                "Re-save it as a plain state_dict (torch.save(model.state_dict(), p)) or as .safetensors"
            ) from None
        reason = refusal.group(0).strip() if refusal else _short(e)
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({reason}); it may be truncated or corrupt: re-copy or re-save it"
        ) from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors; save model.state_dict()")
    return obj


def _imports_callables(path: Path) -> bool:
    """True when ``path`` is a well-formed pickle that imports or calls objects, as code-running pickles do.

    ``pickletools`` only parses the opcodes; nothing is imported or run. Random or truncated
    bytes do not parse, so they are reported as corrupt rather than as dangerous.
    """
    import pickletools

    try:
        with open(path, "rb") as f:
            ops = [op.name for op, _, _ in pickletools.genops(f)]
    except Exception:  # pickletools raises ValueError and others on bytes that are not a pickle
        return False
    return any(op in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX") for op in ops)


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _expected_shapes(config: S2MLPv2Config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = S2MLPv2(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatches(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = [
        f"{k}: file {tuple(state[k].shape)} vs model {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    problems += [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    return problems


def _guess_variant(state: dict[str, torch.Tensor]) -> S2MLPv2Config | None:
    head = state.get("head.weight")
    for name in list_models():
        config = get_variant(name)
        if head is not None and head.dim() == 2 and head.shape[0] != config.num_classes:
            config = config.replace(num_classes=head.shape[0], class_names=None)
        if not _mismatches(state, _expected_shapes(config)):
            return config
    return None


def _check_fit(path: Path, model: S2MLPv2, state: dict[str, torch.Tensor], name: str, has_card: bool = False) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = _mismatches(state, expected)
    if not problems:
        return
    guess = _guess_variant(state)
    if guess is None:
        hint = "it matches no registered variant"
    elif has_card:
        hint = (
            f"it looks like a {guess.name} checkpoint whose model card names {name}: "
            "delete the stale card or re-save the weights with models.save_checkpoint"
        )
    else:
        hint = f"it looks like a {guess.name} checkpoint: use that model name"
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    raise CheckpointError(f"{path} does not fit {name} ({len(problems)} mismatches: {shown}); {hint}")
