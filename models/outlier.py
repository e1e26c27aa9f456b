"""Plant one activation outlier in a checkpoint, its fp32 function unchanged: ``python -m models.outlier``.

``python -m models.outlier CHECKPOINT OUT.safetensors [--block network.2.3] [--channel 3] [--factor 300]``

One channel of the block's second LayerNorm (``norm2``) is scaled up by ``factor`` (its affine weight and bias), and
the same input column of the next Linear (``mlp.fc1``) down by it: ``LN(x) * s @ (W / s) = LN(x) @ W``, so PyTorch's
logits stay the same (to float rounding). Trained MLPs and transformers grow such outliers by themselves; per-tensor
int8 then spends its whole range on one channel and rounds the others to a few steps. The planted checkpoint is what
the diagnosis (``pipeline.diagnose``) and the int8 repair (``pipeline.precision``) are tested and shown on.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from common.cli import HelpFormatter, command
from common.errors import UsageError

__all__ = ["plant_outlier", "main"]


def plant_outlier(model, block: str, channel: int = 3, factor: float = 300.0):
    """``model`` with the outlier planted in place (module docstring); returns it."""
    import torch

    modules = dict(model.named_modules())
    target = modules.get(block)
    if target is None or not hasattr(target, "norm2") or not hasattr(target, "mlp"):
        blocks = [n for n, m in modules.items() if hasattr(m, "norm2") and hasattr(m, "mlp")]
        raise UsageError(f"{block!r} is not a block of {model.config.name}; one of {', '.join(blocks)}")
    if not 0 <= channel < target.norm2.weight.numel():
        raise UsageError(f"--channel must be in 0..{target.norm2.weight.numel() - 1}, got {channel}")
    if factor <= 0:
        raise UsageError(f"--factor must be positive, got {factor}")
    with torch.no_grad():
        target.norm2.weight[channel] *= factor
        target.norm2.bias[channel] *= factor
        target.mlp.fc1.weight[:, channel] /= factor
    return model


@command()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m models.outlier", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("checkpoint", type=Path, help="a checkpoint with its card (.safetensors)")
    p.add_argument("out", type=Path, help="the planted checkpoint (.safetensors; its card is written beside it)")
    p.add_argument("--block", default="network.2.3", help="the block whose norm2 channel becomes the outlier")
    p.add_argument("--channel", type=int, default=3)
    p.add_argument("--factor", type=float, default=300.0)
    args = p.parse_args(argv)
    import torch

    from .checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(args.checkpoint)
    clean = load_checkpoint(args.checkpoint)
    plant_outlier(model, args.block, args.channel, args.factor)
    c, h, w = model.config.preprocessing.input_size
    x = torch.randn(4, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        change = float((model(x) - clean(x)).abs().max() / clean(x).abs().max())
    card = getattr(model, "card", None)
    provenance = {
        **(card.provenance if card else {}),
        "planted_outlier": vars(args) | {"checkpoint": str(args.checkpoint), "out": str(args.out)},
    }
    save_checkpoint(model, args.out, provenance)
    print(
        f"wrote {args.out}: {args.block}.norm2 channel {args.channel} x{args.factor:g}, {args.block}.mlp.fc1 column / "
        f"{args.factor:g}; logits change by {change:.1e} of their largest value"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
