"""Building blocks of S2-MLPv2: spatial shifts, split attention, the mixer and the block.

Tokens are channels-last ``(B, H, W, C)`` everywhere in this module. The functions here are
the single definition of each op: the eager model, the ONNX export and the TensorRT plugin's
reference all call them (see ``pipeline.export`` for how the shift is lowered to a custom
node).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp

from .shift import EXPORT_FORMS, OFFSETS, SHIFT_PATTERNS, check_shift_shape

__all__ = [
    "SHIFT_PATTERNS",
    "spatial_shift",
    "spatial_shift1",
    "spatial_shift2",
    "shift_reference",
    "shift_per_quarter",
    "shift_rows",
    "shift_gather",
    "shift_pair",
    "EXPORT_FORMS",
    "SplitAttention",
    "S2MLPv2Mixer",
    "S2MLPv2ExportMixer",
    "S2MLPv2Block",
    "PatchEmbed",
    "Downsample",
]

# Start offsets (along D1, D2) into the edge-padded tensor for each direction. Taking an
# H x W window at offset (0, 1) yields y[:, i] = x[:, i-1] with row 0 kept, and so on: edge
# padding is what gives the border rule (the row without a source keeps its own value).
_OFFSETS = OFFSETS


def _check_shift_input(x: torch.Tensor, pattern: int) -> None:
    check_shift_shape(tuple(x.shape), pattern)


def shift_reference(x: torch.Tensor, pattern: int) -> torch.Tensor:
    """Out-of-place spatial shift: edge pad by one on D1 and D2, then crop each channel quarter.

    This is the formulation the model runs in eager PyTorch. It never writes into its input.
    """
    _check_shift_input(x, pattern)
    _, d1, d2, c = x.shape
    q = c // 4
    padded = F.pad(x, (0, 0, 1, 1, 1, 1), mode="replicate")
    parts = []
    for i, direction in enumerate(SHIFT_PATTERNS[pattern]):
        o1, o2 = _OFFSETS[direction]
        parts.append(padded[:, o1 : o1 + d1, o2 : o2 + d2, i * q : (i + 1) * q])
    return torch.cat(parts, dim=-1)


@torch.library.custom_op("s2mlpv2::spatial_shift", mutates_args=())
def spatial_shift_op(x: torch.Tensor, pattern: int) -> torch.Tensor:
    """The shift as one opaque op: the plugin-form export traces it as one ``SpatialShift`` node (``engines.shift_node``)."""
    return shift_reference(x, pattern)


@spatial_shift_op.register_fake
def _(x: torch.Tensor, pattern: int) -> torch.Tensor:
    return torch.empty_like(x)


def shift_per_quarter(x: torch.Tensor, pattern: int) -> torch.Tensor:
    """The same shift as :func:`shift_reference`, each channel quarter edge-padded on its own.

    The values are identical (both only copy). This is the form ``torch.compile`` traces:
    Inductor in torch 2.11 fails on channel slices of the one padded tensor ("The argument
    '((-144)) + 144' is not comparable"), and compiles this one.
    """
    _check_shift_input(x, pattern)
    _, d1, d2, _ = x.shape
    parts = []
    for part, direction in zip(x.chunk(4, dim=-1), SHIFT_PATTERNS[pattern]):
        o1, o2 = _OFFSETS[direction]
        parts.append(F.pad(part, (0, 0, 1, 1, 1, 1), mode="replicate")[:, o1 : o1 + d1, o2 : o2 + d2])
    return torch.cat(parts, dim=-1)


def shift_rows(d1: int, d2: int, pattern: int, groups: int = 4, first: int = 0) -> torch.Tensor:
    """Source row of each output row, for a ``(B, D1, D2, groups * q)`` tensor viewed as ``(B, D1 * D2 * groups, q)``.

    Output row ``(i, j, k)`` of the four quarters ``first .. first + 3`` reads row
    ``(i', j', first + k)``, where ``(i', j')`` is ``(i, j)`` moved against quarter k's
    direction and clamped to the grid: the clamp is the border rule, as the edge pad is in
    :func:`shift_reference`. Pattern 0 moves nothing (rows ``first .. first + 3`` in place).
    """
    if pattern not in (0, *SHIFT_PATTERNS):
        raise ValueError(f"shift pattern must be 0, 1 or 2, got {pattern!r}")
    i = torch.arange(d1)[:, None].expand(d1, d2)
    j = torch.arange(d2)[None, :].expand(d1, d2)
    moves = {"+d1": (-1, 0), "-d1": (1, 0), "+d2": (0, -1), "-d2": (0, 1), None: (0, 0)}
    rows = []
    for k, direction in enumerate(SHIFT_PATTERNS.get(pattern, (None,) * 4)):
        m1, m2 = moves[direction]
        src_i, src_j = (i + m1).clamp(0, d1 - 1), (j + m2).clamp(0, d2 - 1)
        rows.append((src_i * d2 + src_j) * groups + first + k)
    return torch.stack(rows, dim=-1).reshape(-1)


def shift_gather(x: torch.Tensor, pattern: int) -> torch.Tensor:
    """The same shift as :func:`shift_reference` as one gather over rows of C/4 channels.

    ``(B, D1, D2, C)`` is viewed as ``(B, D1 * D2 * 4, C/4)`` (no copy) and one ``index_select``
    with the constant :func:`shift_rows` writes the output in a single pass. The standard-ops
    ONNX export traces this form: ``Reshape -> Gather -> Reshape``.
    """
    _check_shift_input(x, pattern)
    return _gather_quarters(x, pattern, groups=4, first=0)


def _gather_quarters(y: torch.Tensor, pattern: int, groups: int, first: int) -> torch.Tensor:
    """Quarters ``first .. first + 3`` of ``y`` ``(B, D1, D2, groups * q)``, moved by ``pattern``, as ``(B, D1, D2, 4q)``."""
    b, d1, d2, c = y.shape
    rows = y.reshape(b, d1 * d2 * groups, c // groups)  # a view when y is contiguous
    moved = rows.index_select(1, shift_rows(d1, d2, pattern, groups, first).to(y.device))
    return moved.reshape(b, d1, d2, 4 * (c // groups))


def shift_pair(y: torch.Tensor, form: str = "eager") -> list[torch.Tensor]:
    """The mixer's two shifted branches from the ``(B, H, W, 2c)`` part of its expansion: ``[SS1(y1), SS2(y2)]``.

    ``form`` ``"onnx"`` (the standard-ops export): each branch is one gather straight from ``y``,
    viewed as rows of c/4 channels: no Split, and each shift is a single pass. ``"plugin"``: one
    ``s2mlpv2::spatial_shift`` op per branch. ``"eager"``: ``chunk`` and :func:`spatial_shift`.
    All only copy, so the values are identical.
    """
    if form == "onnx":
        if y.dim() != 4 or y.shape[-1] % 8 != 0:
            raise ValueError(f"shift_pair expects a (B, H, W, 2c) tensor with c divisible by 4, got {tuple(y.shape)}")
        return [_gather_quarters(y, pattern, groups=8, first=4 * k) for k, pattern in enumerate((1, 2))]
    y1, y2 = y.chunk(2, dim=-1)
    if form == "plugin":
        for part, pattern in ((y1, 1), (y2, 2)):
            _check_shift_input(part, pattern)
        return [torch.ops.s2mlpv2.spatial_shift(y1, 1), torch.ops.s2mlpv2.spatial_shift(y2, 2)]
    return [spatial_shift1(y1), spatial_shift2(y2)]


def _compiling() -> bool:
    """Traced by torch.compile, not by an exporter (which traces the lowering it set, or the eager form)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is None or not compiler.is_compiling():
        return False
    return not getattr(compiler, "is_exporting", lambda: False)()


def spatial_shift(x: torch.Tensor, pattern: int) -> torch.Tensor:
    """Shift the four channel quarters of ``x`` by one token (pattern 1 = SS1, 2 = SS2)."""
    if _compiling():
        return shift_per_quarter(x, pattern)
    return shift_reference(x, pattern)


def spatial_shift1(x: torch.Tensor) -> torch.Tensor:
    """SS1: quarters move +1 along D1, -1 along D1, +1 along D2, -1 along D2."""
    return spatial_shift(x, 1)


def spatial_shift2(x: torch.Tensor) -> torch.Tensor:
    """SS2: quarters move +1 along D2, -1 along D2, +1 along D1, -1 along D1."""
    return spatial_shift(x, 2)


class SplitAttention(nn.Module):
    """Fuses K branches with per-channel softmax weights computed from their pooled sum.

    ``reweight`` is ViP's ``Mlp(c, c/4, K*c)``. Its output is read channel-major, as
    ``(B, c, K)``, which is the layout of ViP's ``reshape(B, C, K)`` and so of existing
    checkpoints. The softmax runs over K.

    The branches stay separate tensors rather than one stacked ``(B, H, W, K, C)`` tensor: the
    pooled sum is the sum of each branch's pool, and the output is ``sum_k w_k * x_k``. The
    math is ViP's; the exported graph skips the stacking copy and the reduction over K, which
    measured about 5 % faster in ONNX Runtime on the CPU.
    """

    def __init__(self, dim: int, num_branches: int = 3, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "sum"):
            raise ValueError(f"split attention pool must be 'mean' or 'sum', got {pool!r}")
        self.dim = dim
        self.num_branches = num_branches
        self.pool = pool
        self.reweight = Mlp(dim, dim // 4, dim * num_branches)

    def branch_weights(self, branches: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Softmax weights ``(B, K, C)`` for K branches of shape ``(B, H, W, C)``; they sum to 1 over K.

        ``offsets`` (K vectors of C) are per-channel constants the branches still lack: the
        weights are then those of the branches ``x_k + offsets[k]``, found without adding them.
        """
        if len(branches) != self.num_branches:
            raise ValueError(f"split attention was built for {self.num_branches} branches, got {len(branches)}")
        pools = [x.mean(dim=(1, 2)) if self.pool == "mean" else x.sum(dim=(1, 2)) for x in branches]
        pooled = pools[0]
        for p in pools[1:]:
            pooled = pooled + p
        if offsets is not None:
            offset = offsets[0]
            for o in offsets[1:]:
                offset = offset + o
            tokens = 1 if self.pool == "mean" else branches[0].shape[1] * branches[0].shape[2]
            pooled = pooled + offset * tokens
        hat = self.reweight(pooled)  # (B, C*K), channel-major
        return hat.reshape(pooled.shape[0], self.dim, self.num_branches).transpose(1, 2).softmax(dim=1)

    def forward(self, branches: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fuse(branches, self.branch_weights(branches))

    @staticmethod
    def fuse(branches: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """``sum_k w_k * x_k`` for branches ``(B, H, W, C)`` and weights ``(B, K, C)``."""
        out = branches[0] * weights[:, 0, None, None, :]
        for k in range(1, len(branches)):
            out = out + branches[k] * weights[:, k, None, None, :]
        return out


class S2MLPv2Mixer(nn.Module):
    """Token mixer: expand c -> 3c, shift two thirds (SS1, SS2), fuse the three, project back."""

    def __init__(self, dim: int, fusion: str = "split_attention", pool: str = "mean") -> None:
        super().__init__()
        if fusion not in ("split_attention", "sum"):
            raise ValueError(f"fusion must be 'split_attention' or 'sum', got {fusion!r}")
        self.dim = dim
        self.mlp_c = nn.Linear(dim, dim * 3)
        self.reweight = SplitAttention(dim, 3, pool) if fusion == "split_attention" else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1, y2, y3 = self.mlp_c(x).chunk(3, dim=-1)
        return self._fuse_and_project([spatial_shift1(y1), spatial_shift2(y2), y3])

    def _fuse_and_project(self, branches: list[torch.Tensor]) -> torch.Tensor:
        fused = (branches[0] + branches[1] + branches[2]) / 3 if self.reweight is None else self.reweight(branches)
        return self.proj(fused)


class S2MLPv2ExportMixer(S2MLPv2Mixer):
    """The mixer in an export form (``EXPORT_FORMS``), sharing the eager mixer's parameters: what the ONNX export traces.

    ``pipeline.export`` swaps every mixer of a copy of the model for one of these
    (:meth:`from_mixer`); the form is chosen there, once, and never read from global state.
    """

    def __init__(self, dim: int, form: str, fusion: str = "split_attention", pool: str = "mean") -> None:
        if form not in EXPORT_FORMS:
            raise ValueError(f"export form must be one of {', '.join(EXPORT_FORMS)}, got {form!r}")
        super().__init__(dim, fusion, pool)
        self.form = form

    @classmethod
    def from_mixer(cls, mixer: S2MLPv2Mixer, form: str) -> S2MLPv2ExportMixer:
        """A mixer of ``form`` over the same ``mlp_c``, split attention and ``proj`` modules as ``mixer``."""
        fusion = "sum" if mixer.reweight is None else "split_attention"
        pool = "mean" if mixer.reweight is None else mixer.reweight.pool
        export = cls(mixer.dim, form, fusion, pool)
        export.mlp_c, export.reweight, export.proj = mixer.mlp_c, mixer.reweight, mixer.proj
        return export.train(mixer.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same math as :meth:`S2MLPv2Mixer.forward`, with less memory traffic.

        * ``mlp_c`` runs as two GEMMs: one writes the two thirds that are shifted (gathered from
          it by :func:`shift_pair`), the other writes the third branch, which is used in place
          and so needs no copy at all.
        * With split attention, ``mlp_c``'s bias is added to ``(B, C)`` vectors rather than to the
          ``(B, H, W, 3c)`` expansion. A shift only copies, so each branch is ``x_k + b_k`` with
          ``x_k`` a branch of the bias-free expansion. The attention weights see the bias
          through ``offsets``, and ``proj(sum_k w_k (x_k + b_k))`` is ``W_proj sum_k w_k x_k``
          plus ``proj(sum_k w_k b_k)``, one bias per image.

        Together they remove two of the mixer's elementwise passes over the expansion (about
        4 % of Small/7's fp32 time in ONNX Runtime on the CPU). Only the rounding differs.
        """
        c, weight, bias = self.dim, self.mlp_c.weight, self.mlp_c.bias
        if self.reweight is None:  # plain sum fusion keeps the bias in the GEMMs
            shifted = shift_pair(F.linear(x, weight[: 2 * c], bias[: 2 * c]), self.form)
            return self._fuse_and_project([*shifted, F.linear(x, weight[2 * c :], bias[2 * c :])])
        branches = [*shift_pair(F.linear(x, weight[: 2 * c]), self.form), F.linear(x, weight[2 * c :])]
        biases = bias.chunk(3)
        weights = self.reweight.branch_weights(branches, offsets=biases)  # (B, K, C)
        fused = self.reweight.fuse(branches, weights)
        carried = weights[:, 0] * biases[0]  # sum_k w_k b_k, (B, C)
        for k in range(1, len(biases)):
            carried = carried + weights[:, k] * biases[k]
        w_proj = self.proj.weight.t()  # one (C, C) constant in the graph, shared by both products
        per_image_bias = carried @ w_proj + self.proj.bias  # (B, C)
        return fused @ w_proj + per_image_bias[:, None, None, :]


class S2MLPv2Block(nn.Module):
    """Pre-norm block with two residuals: ``y = x + Mixer(LN(x))``, ``z = y + MLP(LN(y))``."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 3.0,
        drop_path: float = 0.0,
        fusion: str = "split_attention",
        pool: str = "mean",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = S2MLPv2Mixer(dim, fusion=fusion, pool=pool)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: a plain strided ``Conv2d``, NCHW in, NHWC out."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Downsample(nn.Module):
    """Stage transition: ``Conv2d(k=2, s=2)`` between widths, NHWC in and out (ViP's)."""

    def __init__(self, in_dim: int, out_dim: int, patch_size: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
