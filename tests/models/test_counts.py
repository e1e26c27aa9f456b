"""The README's models table, the one place the parameter and MAC counts are written, against the code."""

import re

import pytest
import torch

from models import create_model, list_models
from models.s2mlpv2 import count_macs
from tests.conftest import ROOT


def readme_models() -> dict[str, dict[str, str]]:
    """The README's models table: ``{name: {column: cell}}``."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## The models", 1)[1].split("\n\n", 2)[1]
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    return {row[0].strip("`"): dict(zip(header, row)) for row in rows}


def count(model) -> tuple[float, float]:
    """(parameters, multiply-adds for one image at the model's input size)."""
    return sum(p.numel() for p in model.parameters()), count_macs(model)


def _number(cell: str, unit: str) -> float | None:
    match = re.fullmatch(rf"([\d.]+) {unit}", cell)
    return float(match.group(1)) if match else None


def test_the_table_lists_every_registered_variant():
    assert sorted(readme_models()) == list_models()


@pytest.mark.parametrize("name", sorted(readme_models()))
def test_the_readme_counts_are_the_code_s(name):
    row = readme_models()[name]
    model = create_model(name).eval()
    params, macs = count(model)
    assert int(row["input"]) == model.config.preprocessing.input_size[1]
    # written to two decimals, so they must agree to the last digit shown
    assert _number(row["params"], "M") == pytest.approx(params / 1e6, abs=0.005), f"{name}: {params / 1e6:.3f} M params"
    if _number(row["MACs"], "G") is not None:
        assert _number(row["MACs"], "G") == pytest.approx(macs / 1e9, abs=0.005), f"{name}: {macs / 1e9:.3f} GMACs"


@pytest.mark.parametrize("name,paper_params", [("s2mlpv2_small7", 25), ("s2mlpv2_medium7", 55)])
def test_the_paper_s_sizes_hold(name, paper_params):
    # the paper's abstract: Small/7 25 M, Medium/7 55 M parameters
    assert round(float(readme_models()[name]["params"].split()[0])) == paper_params


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
