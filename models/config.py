"""The S2-MLPv2 family as data: configs, preprocessing and the variant registry, importable without torch.

``models.s2mlpv2`` builds the networks from these; commands that only need a variant's name,
input size or preprocessing (``build_engine.py`` deciding whether anything must be rebuilt)
read them here without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.errors import UsageError

__all__ = [
    "S2MLPv2Config",
    "Preprocessing",
    "register_variant",
    "get_variant",
    "list_models",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_CLASSES",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input. It travels with the weights (the model card)."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        # A zero std or crop divides by zero: every input would be Inf or NaN.
        if not all(s > 0 for s in self.std):
            raise ValueError(f"preprocessing std must be positive, got {tuple(self.std)}")
        if not self.crop_pct > 0:
            raise ValueError(f"preprocessing crop_pct must be positive, got {self.crop_pct}")
        if len(self.input_size) != 3 or not all(int(d) > 0 for d in self.input_size):
            raise ValueError(f"preprocessing input_size must be (C, H, W) with positive sizes, got {tuple(self.input_size)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
        )


@dataclass(frozen=True)
class S2MLPv2Config:
    """One S2-MLPv2 variant. ``layers``/``embed_dims``/``transitions`` are ViP's stage lists."""

    name: str
    patch_size: int
    layers: tuple[int, ...]
    embed_dims: tuple[int, ...]
    transitions: tuple[bool, ...]
    mlp_ratio: float = 3.0
    fusion: str = "split_attention"  # or "sum": the paper's ablation, a plain branch average
    pool: str = "mean"  # split attention pooling; "sum" is the paper's eq. 2, fp16-unsafe
    drop_path_rate: float = 0.1
    num_classes: int = 1000
    in_chans: int = 3
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.layers)
        if n == 0:
            raise ValueError("layers should not be empty")
        if len(self.embed_dims) != n or len(self.transitions) != n:
            raise ValueError(
                f"layers, embed_dims and transitions need one entry per stage; got {n}, "
                f"{len(self.embed_dims)} and {len(self.transitions)}"
            )
        bad = [d for d in self.embed_dims if d % 4]
        if bad:
            raise ValueError(f"every embed_dim must be divisible by 4 (the shift splits channels in 4); got {bad}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for num_classes={self.num_classes}")

    @property
    def depth(self) -> int:
        return sum(self.layers)

    def replace(self, **overrides: Any) -> S2MLPv2Config:
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> S2MLPv2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        d = dict(d)
        for key in ("layers", "embed_dims", "transitions"):
            d[key] = tuple(d[key])
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        if "preprocessing" in d:
            d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        return cls(**d)


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, S2MLPv2Config] = {}


def register_variant(config: S2MLPv2Config) -> S2MLPv2Config:
    if config.name in _REGISTRY:
        raise ValueError(f"model variant {config.name!r} is already registered")
    _REGISTRY[config.name] = config
    return config


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_variant(name: str) -> S2MLPv2Config:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


_SMALL7 = S2MLPv2Config(
    name="s2mlpv2_small7",
    patch_size=7,
    layers=(4, 3, 8, 3),
    embed_dims=(192, 384, 384, 384),
    transitions=(True, False, False, False),
)
register_variant(_SMALL7)
register_variant(
    S2MLPv2Config(
        name="s2mlpv2_medium7",
        patch_size=7,
        layers=(4, 3, 14, 3),
        embed_dims=(256, 256, 512, 512),
        transitions=(False, True, False, False),
        preprocessing=Preprocessing(crop_pct=0.9),
    )
)
register_variant(
    S2MLPv2Config(
        name="s2mlpv2_small14",
        patch_size=14,
        layers=(4, 3, 8, 3),
        embed_dims=(384, 384, 384, 384),
        transitions=(False, False, False, False),
    )
)
register_variant(_SMALL7.replace(name="s2mlpv2_small7_sum", fusion="sum"))
# CIFAR-10: 32x32 input, patch 2 -> 16x16 tokens, then 8x8 after the transition.
register_variant(
    S2MLPv2Config(
        name="s2mlpv2_cifar10",
        patch_size=2,
        layers=(2, 6),
        embed_dims=(96, 192),
        transitions=(True, False),
        num_classes=10,
        preprocessing=Preprocessing(
            input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=1.0, interpolation="bicubic"
        ),
        class_names=CIFAR10_CLASSES,
    )
)
# For unit tests: a few thousand parameters, both a transition and the split attention path.
register_variant(
    S2MLPv2Config(
        name="s2mlpv2_tiny_test",
        patch_size=4,
        layers=(1, 1),
        embed_dims=(16, 32),
        transitions=(True, False),
        num_classes=5,
        preprocessing=Preprocessing(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear"),
    )
)
