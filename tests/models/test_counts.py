"""Parameter and MAC counts against the paper's numbers (docs/ARCHITECTURE.md)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import create_model

EXPECTED = {
    # name: (params, MACs at 1x3x224x224); MACs count a multiply-add once
    "s2mlpv2_small7": (25.13e6, 6.92e9),
    "s2mlpv2_medium7": (55.30e6, 16.33e9),
    "s2mlpv2_small14": (29.91e6, 6.87e9),
    "s2mlpv2_small7_sum": (22.90e6, 6.92e9),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_params_and_macs_match_paper(name):
    params, macs = EXPECTED[name]
    model = create_model(name).eval()
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 224, 224))
    n_macs = counter.get_total_flops() / 2  # FlopCounterMode counts 2 per multiply-add
    assert abs(n_params - params) / params < 0.005, f"{name}: {n_params / 1e6:.2f} M params"
    assert abs(n_macs - macs) / macs < 0.005, f"{name}: {n_macs / 1e9:.3f} GMACs"


def test_split_attention_hidden_width_is_a_quarter():
    block = create_model("s2mlpv2_small7").network[0][0]
    assert block.attn.reweight.reweight.fc1.out_features == 192 // 4
    assert block.attn.reweight.reweight.fc2.out_features == 192 * 3


def test_drop_path_rises_linearly_to_the_configured_rate():
    model = create_model("s2mlpv2_small7")
    blocks = [b for stage in model.network if isinstance(stage, torch.nn.Sequential) for b in stage]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks]
    assert len(rates) == 18
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.1)
    assert all(b > a for a, b in zip(rates, rates[1:]))
