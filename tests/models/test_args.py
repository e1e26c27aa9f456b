import argparse

import pytest
import torch

from models.args import ModelArgs, load_model


def _parse(group: ModelArgs, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    group.add_to_parser(parser)
    return parser.parse_args(list(argv))


def test_default_group_takes_either_option_and_defaults_the_variant():
    args = _parse(ModelArgs())
    assert (args.model, args.checkpoint) == ("s2mlpv2_small7", None)
    args = _parse(ModelArgs(), "--model", "s2mlpv2_tiny_test", "--checkpoint", "w.safetensors")
    assert args.model == "s2mlpv2_tiny_test" and str(args.checkpoint) == "w.safetensors"


def test_exclusive_group_refuses_both(capsys):
    with pytest.raises(SystemExit):  # argparse reports "not allowed with" and exits 2
        _parse(ModelArgs(exclusive=True), "--model", "s2mlpv2_tiny_test", "--checkpoint", "w.safetensors")
    assert "not allowed with" in capsys.readouterr().err
    assert _parse(ModelArgs(exclusive=True)).model == "s2mlpv2_small7"  # neither: the default variant


def test_one_required_group_asks_for_exactly_one(capsys):
    group = ModelArgs(model_default=None, exclusive=True, one_required=True)
    with pytest.raises(SystemExit):
        _parse(group)
    assert "one of the arguments --model --checkpoint is required" in capsys.readouterr().err
    assert _parse(group, "--model", "s2mlpv2_tiny_test").model == "s2mlpv2_tiny_test"


def test_checkpoint_required_group_has_no_model_option():
    args = _parse(ModelArgs(checkpoint_required=True), "--checkpoint", "w.safetensors")
    assert not hasattr(args, "model")
    with pytest.raises(SystemExit):
        _parse(ModelArgs(checkpoint_required=True))


def test_random_weights_are_seeded_and_announced(capsys):
    a = load_model(None, "s2mlpv2_tiny_test", "the reference")
    b = load_model(None, "s2mlpv2_tiny_test")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    err = capsys.readouterr().err
    assert "the reference is s2mlpv2_tiny_test with RANDOM weights" in err and not a.training
