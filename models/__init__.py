"""The S2-MLPv2 model family: registry, model, checkpoints.

``import models`` also registers every variant with timm, so ``timm.create_model(name)``
works afterwards.
"""

from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint
from .s2mlpv2 import Preprocessing, S2MLPv2, S2MLPv2Config, create_model, get_variant, list_models

# The trained checkpoint the package ships: s2mlpv2_cifar10, 80 % top-1 on 5,000 held-out CIFAR-10 images.
SHIPPED_CHECKPOINT = Path(__file__).parent / "weights" / "s2mlpv2_cifar10.safetensors"

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


def _register_with_timm() -> None:
    from timm.models import register_model
    from timm.models._registry import is_model

    for name in list_models():
        if is_model(name):
            continue

        def _factory(pretrained: bool = False, _name: str = name, **kwargs):
            if pretrained:
                raise ValueError(
                    f"no pretrained weights are published for {_name}; load your own with models.load_checkpoint(path)"
                )
            for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kwargs.pop(key, None)
            return create_model(_name, **kwargs)

        _factory.__name__ = name
        _factory.__module__ = __name__
        register_model(_factory)


_register_with_timm()
