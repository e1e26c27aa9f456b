"""Command-line argument groups for the model, declared once (in the manner of Polygraphy's argument groups).

``ModelArgs(...).add_to_parser(parser)`` adds ``--model`` and ``--checkpoint``;
``ModelArgs.load(args, role)`` turns them into a model. :func:`load_model` is the one place a
command loads a model, and the one place that warns when the weights are random.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import list_models

if TYPE_CHECKING:  # torch waits until a model is loaded
    from .s2mlpv2 import S2MLPv2

__all__ = ["ModelArgs", "load_model", "warn_random_weights"]


def warn_random_weights(model_name: str, role: str = "the model") -> None:
    """The one warning, on stderr, that ``role`` has random weights and its accuracy numbers mean nothing."""
    print(
        f"WARNING: no --checkpoint: {role} is {model_name} with RANDOM weights (seed 0); accuracy numbers mean nothing",
        file=sys.stderr,
        flush=True,
    )


def load_model(checkpoint: str | os.PathLike | None, model_name: str, role: str = "the model", warn: bool = True) -> S2MLPv2:
    """The checkpoint's model, or ``model_name`` with seed-0 random weights (and, with ``warn``, the warning)."""
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        return load_checkpoint(checkpoint)
    if warn:
        warn_random_weights(model_name, role)
    import torch

    from .s2mlpv2 import create_model

    torch.manual_seed(0)
    return create_model(model_name).eval()


@dataclass(frozen=True)
class ModelArgs:
    """``--model`` and ``--checkpoint``: either a checkpoint (its card names the variant) or a variant with random weights."""

    model_default: str | None = "s2mlpv2_small7"
    exclusive: bool = False  # at most one of the two may be given
    one_required: bool = False  # with ``exclusive``: exactly one must be given
    checkpoint_required: bool = False
    model_help: str = "variant with RANDOM weights when no --checkpoint is given (a checkpoint's card names its own)"
    checkpoint_help: str = "weights: .safetensors (with its card) or a PyTorch state dict"

    def add_to_parser(self, parser: argparse.ArgumentParser, title: str = "model") -> None:
        group = parser.add_argument_group(title)
        target = group.add_mutually_exclusive_group(required=self.one_required) if self.exclusive else group
        if not self.checkpoint_required:
            target.add_argument("--model", choices=list_models(), default=self.model_default, help=self.model_help)
        target.add_argument("--checkpoint", type=Path, required=self.checkpoint_required, help=self.checkpoint_help)

    def load(self, args: argparse.Namespace, role: str = "the model") -> S2MLPv2:
        return load_model(args.checkpoint, getattr(args, "model", None) or self.model_default, role)
