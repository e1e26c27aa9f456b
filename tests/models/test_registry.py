import subprocess
import sys

import pytest
import timm
import torch

import models
from models.s2mlpv2 import S2MLPv2Config, register_variant
from tests.conftest import ROOT

PAPER_VARIANTS = ["s2mlpv2_small7", "s2mlpv2_medium7", "s2mlpv2_small14", "s2mlpv2_small7_sum"]


def test_every_named_variant_is_registered():
    names = models.list_models()
    for name in PAPER_VARIANTS + ["s2mlpv2_cifar10", "s2mlpv2_tiny_test"]:
        assert name in names


def test_registering_a_duplicate_name_is_an_error():
    config = models.get_variant("s2mlpv2_tiny_test")
    with pytest.raises(ValueError, match="already registered"):
        register_variant(config)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="s2mlpv2_small7"):
        models.create_model("s2mlpv2_huge")


def test_overrides_replace_config_fields():
    model = models.create_model("s2mlpv2_tiny_test", num_classes=7)
    assert model.head.out_features == 7
    with pytest.raises(TypeError, match="unknown config fields"):
        models.create_model("s2mlpv2_tiny_test", depth=3)


def test_configs_registry_and_cards_load_without_torch():
    code = (
        "import sys, models; names = models.list_models(); card = models.read_card(models.SHIPPED_CHECKPOINT); "
        "print(card.config.name, len(names), 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.split() == ["s2mlpv2_cifar10", str(len(models.list_models())), "False"], proc.stderr


def test_timm_creates_registered_variants():
    model = timm.create_model("s2mlpv2_tiny_test", num_classes=4)
    assert isinstance(model, models.S2MLPv2)
    assert model.head.out_features == 4
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("s2mlpv2_tiny_test", pretrained=True)


def test_forward_features_and_head_compose_to_forward():
    torch.manual_seed(0)
    model = models.create_model("s2mlpv2_tiny_test").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 4, 4, 32)  # patch 4 -> 8x8, transition -> 4x4, width 32
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)


def test_cifar_variant_carries_its_preprocessing_and_classes():
    config = models.get_variant("s2mlpv2_cifar10")
    assert config.preprocessing.input_size == (3, 32, 32)
    assert config.preprocessing.crop_pct == 1.0
    assert len(config.class_names) == config.num_classes == 10


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(layers=(), embed_dims=(), transitions=()), "should not be empty"),
        (dict(layers=(1,), embed_dims=(6,), transitions=(False,)), "divisible by 4"),
        (dict(layers=(1, 1), embed_dims=(8,), transitions=(False,)), "one entry per stage"),
    ],
)
def test_bad_configs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S2MLPv2Config(name="bad", patch_size=4, **kwargs)
