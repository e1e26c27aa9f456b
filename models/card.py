"""Model cards: what a checkpoint says about itself (config, preprocessing, class names), read without torch.

A checkpoint ``name.safetensors`` carries its card inside the safetensors header and as
``name.json`` beside it; :func:`read_card` reads either, and refuses the two when they disagree.
``models.checkpoint`` loads the weights.

``python -m models.card show CKPT`` prints the card.
``python -m models.card set CKPT KEY VALUE.json`` stores a JSON file's content under
``provenance[KEY]`` (e.g. a measured speed table or a validation result) and rewrites the
checkpoint with the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cli import command
from common.errors import S2MLPv2Error

from .config import Preprocessing, S2MLPv2Config

__all__ = ["CheckpointError", "ModelCard", "read_card", "write_card", "card_path_for", "CARD_FORMAT"]

CARD_FORMAT = "s2mlpv2-card/1"
_METADATA_KEY = "s2mlpv2_card"


class CheckpointError(S2MLPv2Error, ValueError):
    """A checkpoint could not be read or does not fit the model; the message says why and what to do."""


@dataclass
class ModelCard:
    config: S2MLPv2Config
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.config.preprocessing

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.config.class_names

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config.to_dict()
        preprocessing = cfg.pop("preprocessing")
        class_names = cfg.pop("class_names")
        return {
            "format": CARD_FORMAT,
            "model": self.config.name,
            "config": cfg,
            "preprocessing": preprocessing,
            "class_names": list(class_names) if class_names is not None else None,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "card") -> ModelCard:
        try:
            if d.get("format") != CARD_FORMAT:
                raise ValueError(f"format is {d.get('format')!r}, expected {CARD_FORMAT!r}")
            cfg = dict(d["config"])
            cfg["preprocessing"] = d["preprocessing"]
            cfg["class_names"] = d.get("class_names")
            return cls(S2MLPv2Config.from_dict(cfg), dict(d.get("provenance") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{source} is not a valid S2-MLPv2 model card ({e}); re-save it with models.save_checkpoint"
            ) from None


def card_path_for(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def read_card(path: str | os.PathLike) -> ModelCard | None:
    """The card of a checkpoint: the JSON beside it, else the one inside the safetensors header."""
    path = Path(path)
    _check_file(path)
    sidecar = card_path_for(path)
    embedded = _embedded_card(path) if path.suffix == ".safetensors" else None
    if sidecar.is_file() and sidecar != path:
        try:
            sidecar_dict = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"model card {sidecar} is not valid JSON ({e}); fix or delete it") from None
        card = ModelCard.from_dict(sidecar_dict, str(sidecar))
        if embedded is not None and embedded.config != card.config:
            raise CheckpointError(
                f"model card {sidecar} disagrees with the card inside {path.name} "
                f"({embedded.config.name} vs {card.config.name} config); delete the stale JSON or re-save the checkpoint"
            )
        return card
    return embedded


def write_card(path: str | os.PathLike, card: ModelCard) -> None:
    """Store ``card`` in a safetensors checkpoint's header and in the JSON beside it, without loading a tensor.

    The header is rewritten in place of the old one (a safetensors file is an 8-byte little-endian
    header length, the JSON header, then the tensors' bytes, whose offsets count from the end of the
    header, so they do not move). Both files are replaced atomically.
    """
    import shutil
    import struct

    from common.fileio import atomic_path, atomic_write_json

    path = Path(path)
    _check_file(path)
    card_dict = card.to_dict()
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_short(e)}); re-copy or re-save it") from None
    header.setdefault("__metadata__", {})[_METADATA_KEY] = json.dumps(card_dict)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads its header with spaces to an 8-byte boundary
    with atomic_path(path) as tmp, open(tmp, "wb") as out, open(path, "rb") as src:
        out.write(struct.pack("<Q", len(raw)) + raw)
        src.seek(8 + length)
        shutil.copyfileobj(src, out)
    atomic_write_json(card_path_for(path), card_dict)


# --------------------------------------------------------------------------- internals


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; check the path (a .safetensors file or a PyTorch state dict)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file; give the weights file itself")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); re-copy or re-save it")


def _embedded_card(path: Path) -> ModelCard | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # the header only: no torch
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({_short(e)}); it may be truncated or corrupt: re-copy or re-save it"
        ) from None
    raw = metadata.get(_METADATA_KEY)
    if raw is None:
        return None
    try:
        return ModelCard.from_dict(json.loads(raw), f"the card inside {path.name}")
    except json.JSONDecodeError as e:
        raise CheckpointError(f"the card inside {path} is not valid JSON ({e}); re-save the checkpoint") from None


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text[:160] + ("…" if len(text) > 160 else "")


@command()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.card", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the card")
    show.add_argument("checkpoint", type=Path)
    put = sub.add_parser("set", help="store a JSON file under provenance[KEY] (the header is rewritten; no torch)")
    put.add_argument("checkpoint", type=Path)
    put.add_argument("key")
    put.add_argument("value", type=Path, help="JSON file")
    args = p.parse_args(argv)
    if args.command == "show":
        card = read_card(args.checkpoint)
        if card is None:
            raise CheckpointError(f"{args.checkpoint} has no model card")
        print(json.dumps(card.to_dict(), indent=2))
        return 0
    card = read_card(args.checkpoint)
    if card is None:
        raise CheckpointError(f"{args.checkpoint} has no model card; save it with models.save_checkpoint first")
    try:
        value = json.loads(args.value.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{args.value} is not JSON ({e}); give a JSON file") from None
    write_card(args.checkpoint, ModelCard(card.config, {**card.provenance, args.key: value}))
    print(f"stored {args.value} as provenance[{args.key!r}] in {args.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
