import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import models
from models.layers import (
    S2MLPv2ExportMixer,
    S2MLPv2Mixer,
    SplitAttention,
    shift_gather,
    shift_pair,
    shift_per_quarter,
    spatial_shift1,
    spatial_shift2,
)

# (move along D1, move along D2) for each channel quarter, straight from the paper's definition (docs/ARCHITECTURE.md).
MOVES = {1: [(1, 0), (-1, 0), (0, 1), (0, -1)], 2: [(0, 1), (0, -1), (1, 0), (-1, 0)]}


def naive_shift(x: torch.Tensor, pattern: int) -> torch.Tensor:
    """Index-by-index definition: y[i, j] = x[i - m1, j - m2]; without a source, keep x[i, j]."""
    _, h, w, c = x.shape
    q = c // 4
    y = x.clone()
    for g, (m1, m2) in enumerate(MOVES[pattern]):
        for i in range(h):
            for j in range(w):
                si, sj = i - m1, j - m2
                if 0 <= si < h and 0 <= sj < w:
                    y[:, i, j, g * q : (g + 1) * q] = x[:, si, sj, g * q : (g + 1) * q]
    return y


shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 4).map(lambda k: 4 * k))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_shifts_match_index_by_index_reference(shape, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(spatial_shift1(x), naive_shift(x, 1))
    assert torch.equal(spatial_shift2(x), naive_shift(x, 2))
    assert torch.equal(shift_per_quarter(x, 1), naive_shift(x, 1))
    assert torch.equal(shift_per_quarter(x, 2), naive_shift(x, 2))
    assert torch.equal(shift_gather(x, 1), naive_shift(x, 1))
    assert torch.equal(shift_gather(x, 2), naive_shift(x, 2))


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_export_form_of_the_mixer_branches_matches_chunk_and_shift(shape, seed):
    b, h, w, c = shape
    y = torch.randn(b, h, w, 2 * c, generator=torch.Generator().manual_seed(seed))
    y1, y2 = y.chunk(2, dim=-1)
    want = [naive_shift(y1, 1), naive_shift(y2, 2)]
    for form in ("onnx", "plugin", "eager"):  # onnx: one gather per branch straight from y, as the standard-ops export traces it
        branches = shift_pair(y, form)
        assert len(branches) == 2
        assert all(torch.equal(a, e) for a, e in zip(branches, want)), form


def test_torch_compile_traces_the_per_quarter_shift_and_matches_eager():
    model = models.create_model("s2mlpv2_tiny_test").eval()
    pads_per_graph = []

    def count_pads(gm, example_inputs):  # a dynamo backend that only inspects the traced graph
        pads_per_graph.append(sum(n.op == "call_function" and "pad" in str(n.target) for n in gm.graph.nodes))
        return gm.forward

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(torch.compile(model, backend=count_pads)(x), model(x))
    shifts = 2 * sum(model.config.layers)
    assert sum(pads_per_graph) == 4 * shifts  # one pad per quarter, not one per shift


@pytest.mark.parametrize("h,w", [(1, 1), (1, 2), (2, 1), (2, 2), (1, 5), (5, 1)])
def test_shift_handles_tiny_spatial_sizes(h, w):
    x = torch.randn(2, h, w, 8)
    assert torch.equal(spatial_shift1(x), naive_shift(x, 1))
    assert torch.equal(spatial_shift2(x), naive_shift(x, 2))


def test_border_row_keeps_its_own_value():
    x = torch.arange(1, 4 * 4 * 4 + 1, dtype=torch.float32).reshape(1, 4, 4, 4)
    y = spatial_shift1(x)
    # quarter 0 moves +1 along D1: row 0 has no source and keeps its value; row 1 takes row 0.
    assert torch.equal(y[0, 0, :, 0], x[0, 0, :, 0])
    assert torch.equal(y[0, 1, :, 0], x[0, 0, :, 0])
    # quarter 1 moves -1 along D1: the last row keeps its value.
    assert torch.equal(y[0, 3, :, 1], x[0, 3, :, 1])
    assert torch.equal(y[0, 2, :, 1], x[0, 3, :, 1])
    # x has no zeros, so any zero in y would be a zero-filled border
    assert not (y == 0).any()


def test_shift_does_not_modify_its_input():
    x = torch.randn(2, 5, 5, 8)
    before = x.clone()
    spatial_shift1(x)
    spatial_shift2(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("channels", [1, 2, 3, 5, 6, 10])
def test_shift_rejects_channels_not_divisible_by_4(channels):
    with pytest.raises(ValueError, match="divisible by 4"):
        spatial_shift1(torch.randn(1, 3, 3, channels))


def test_shift_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, D1, D2, C\)"):
        spatial_shift2(torch.randn(3, 3, 8))


def test_split_attention_weights_sum_to_one():
    torch.manual_seed(0)
    attn = SplitAttention(dim=8).eval()
    branches = list(torch.randn(3, 2, 3, 4, 8))
    weights = attn.branch_weights(branches)
    assert weights.shape == (2, 3, 8)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 8))


def test_split_attention_matches_hand_computation():
    torch.manual_seed(0)
    c, k = 8, 3
    attn = SplitAttention(dim=c).eval()
    x1, x2, x3 = (torch.randn(1, 2, 3, c) for _ in range(k))
    out = attn([x1, x2, x3])

    a = (x1 + x2 + x3).mean(dim=(1, 2))  # (1, c)
    fc1, fc2 = attn.reweight.fc1, attn.reweight.fc2
    hidden = torch.nn.functional.gelu(a @ fc1.weight.T + fc1.bias)
    hat = (hidden @ fc2.weight.T + fc2.bias).reshape(1, c, k)  # channel-major, as ViP
    w = torch.softmax(hat, dim=2)
    expected = w[:, None, None, :, 0] * x1 + w[:, None, None, :, 1] * x2 + w[:, None, None, :, 2] * x3
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_split_attention_sum_pool_is_the_mean_times_token_count():
    torch.manual_seed(0)
    sum_attn = SplitAttention(8, pool="sum").eval()
    stacked = torch.randn(1, 2, 2, 3, 8)
    pooled_sum = stacked.sum(dim=(1, 2)).sum(dim=1)  # eq. 2 as printed: a sum over 2x2 tokens
    torch.testing.assert_close(pooled_sum, 4 * stacked.mean(dim=(1, 2)).sum(dim=1))
    hat = sum_attn.reweight(pooled_sum).reshape(1, 8, 3).transpose(1, 2)
    torch.testing.assert_close(sum_attn.branch_weights(list(stacked.unbind(dim=3))), hat.softmax(dim=1))
    with pytest.raises(ValueError, match="pool"):
        SplitAttention(8, pool="max")
    with pytest.raises(ValueError, match="3 branches, got 2"):
        sum_attn.branch_weights(list(stacked.unbind(dim=3))[:2])


def test_sum_fusion_mixer_averages_branches():
    torch.manual_seed(0)
    mixer = S2MLPv2Mixer(8, fusion="sum").eval()
    x = torch.randn(1, 3, 3, 8)
    x1, x2, x3 = mixer.mlp_c(x).chunk(3, dim=-1)
    expected = mixer.proj((spatial_shift1(x1) + spatial_shift2(x2) + x3) / 3)
    torch.testing.assert_close(mixer(x), expected)


@pytest.mark.parametrize("form", ["onnx", "plugin"])
@pytest.mark.parametrize(("fusion", "pool"), [("split_attention", "mean"), ("split_attention", "sum"), ("sum", "mean")])
def test_export_form_of_the_mixer_matches_eager(fusion, pool, form):
    # two GEMMs instead of one, and (with split attention) mlp_c's bias added per image after pooling
    torch.manual_seed(0)
    mixer = S2MLPv2Mixer(16, fusion=fusion, pool=pool).eval()
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 0.5)  # non-zero biases, so that moving mlp_c's bias is tested
        x = torch.randn(2, 5, 3, 16)
        eager = mixer(x)
        exported = S2MLPv2ExportMixer.from_mixer(mixer, form)(x)
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())
    assert not torch.equal(mixer.mlp_c.bias, torch.zeros_like(mixer.mlp_c.bias))
