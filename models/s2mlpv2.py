"""S2-MLPv2: Improved Spatial-Shift MLP Architecture for Vision.

Yu, Li, Cai, Sun, Li. arXiv 2108.01072. The macro structure is Vision Permutator's
(Hou et al., ``houqb/VisionPermutator``): a patch embedding, stages of blocks with a strided
convolution between widths, then LayerNorm, mean over tokens and a linear head. Module names
follow ViP's, so ViP-style state dicts (``patch_embed``, ``network.N``, ``norm``, ``head``)
load without renaming.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from .config import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    S2MLPv2Config,
    get_variant,
    list_models,
    register_variant,
)
from .layers import Downsample, PatchEmbed, S2MLPv2Block

__all__ = [
    "S2MLPv2Config",
    "Preprocessing",
    "S2MLPv2",
    "register_variant",
    "get_variant",
    "list_models",
    "create_model",
    "count_macs",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_CLASSES",
]


class S2MLPv2(nn.Module):
    def __init__(self, config: S2MLPv2Config) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.num_features = config.embed_dims[-1]
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dims[0])

        network: list[nn.Module] = []
        block_idx = 0
        for i, (n_blocks, dim) in enumerate(zip(config.layers, config.embed_dims)):
            blocks = []
            for _ in range(n_blocks):
                # DropPath rises linearly over all blocks, from 0 to drop_path_rate.
                dpr = config.drop_path_rate * block_idx / max(config.depth - 1, 1)
                blocks.append(S2MLPv2Block(dim, config.mlp_ratio, dpr, config.fusion, config.pool))
                block_idx += 1
            network.append(nn.Sequential(*blocks))
            if i + 1 < len(config.layers) and (config.transitions[i] or dim != config.embed_dims[i + 1]):
                network.append(Downsample(dim, config.embed_dims[i + 1]))
        self.network = nn.ModuleList(network)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # timm's model API
    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        p = self.config.preprocessing
        return {
            "input_size": p.input_size,
            "mean": p.mean,
            "std": p.std,
            "crop_pct": p.crop_pct,
            "interpolation": p.interpolation,
            "num_classes": self.num_classes,
        }

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> normalised tokens ``(B, h, w, C)``."""
        x = self.patch_embed(x)
        for stage in self.network:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def count_macs(model: S2MLPv2) -> float:
    """Multiply-adds of the GEMMs and convolutions for one image at the model's input size (FlopCounterMode counts 2 each)."""
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w = model.config.preprocessing.input_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c, h, w))
    return counter.get_total_flops() / 2


def _init_weights(m: nn.Module) -> None:
    # ViP's initialisation.
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def create_model(name: str, **overrides: Any) -> S2MLPv2:
    """Build a registered variant; keyword overrides replace config fields (e.g. ``num_classes=10``)."""
    config = get_variant(name)
    if overrides:
        known = {f.name for f in dataclasses.fields(S2MLPv2Config)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"create_model got unknown config fields {unknown}; known: {sorted(known)}")
        if "num_classes" in overrides and "class_names" not in overrides and config.class_names is not None:
            overrides["class_names"] = None
        config = config.replace(**overrides)
    return S2MLPv2(config)


def _register_with_timm() -> None:
    """Every variant in timm's registry, so ``timm.create_model(name)`` builds it (no pretrained weights exist)."""
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
        _factory.__module__ = "models"
        register_model(_factory)


_register_with_timm()
