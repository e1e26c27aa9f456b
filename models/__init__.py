"""The S2-MLPv2 model family: registry, model, checkpoints.

``import models`` is light: configs, the registry and model cards need no torch
(``models.config``, ``models.card``). The first use of a name that needs torch
(``models.create_model``, ``models.load_checkpoint``, ``models.S2MLPv2``, ...) imports
``models.s2mlpv2``, which also registers every variant with timm, so ``timm.create_model(name)``
works afterwards.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .config import Preprocessing, S2MLPv2Config, get_variant, list_models

# The trained checkpoint the package ships: s2mlpv2_cifar10, 80 % top-1 on 5,000 held-out CIFAR-10 images.
SHIPPED_CHECKPOINT = Path(__file__).parent / "weights" / "s2mlpv2_cifar10.safetensors"

# Names imported on first use, and the module that defines each: those that need torch, and the card's (so that
# ``python -m models.card`` runs a module not yet imported).
_LAZY = {
    "CheckpointError": ".card",
    "read_card": ".card",
    "S2MLPv2": ".s2mlpv2",
    "create_model": ".s2mlpv2",
    "load_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
}

__all__ = [
    "S2MLPv2",
    "S2MLPv2Config",
    "Preprocessing",
    "CheckpointError",
    "create_model",
    "get_variant",
    "list_models",
    "load_checkpoint",
    "read_card",
    "save_checkpoint",
    "SHIPPED_CHECKPOINT",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
