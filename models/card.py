"""Read or annotate a checkpoint's model card.

``python -m models.card show CKPT`` prints the card.
``python -m models.card set CKPT KEY VALUE.json`` stores a JSON file's content under
``provenance[KEY]`` (e.g. a measured speed table or a validation result) and rewrites the
checkpoint with the same weights.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from common.cli import report_error
from common.errors import EXPECTED_ERRORS

from .checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.card", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the card")
    show.add_argument("checkpoint", type=Path)
    put = sub.add_parser("set", help="store a JSON file under provenance[KEY]")
    put.add_argument("checkpoint", type=Path)
    put.add_argument("key")
    put.add_argument("value", type=Path, help="JSON file")
    args = p.parse_args(argv)
    try:
        if args.command == "show":
            card = read_card(args.checkpoint)
            if card is None:
                raise CheckpointError(f"{args.checkpoint} has no model card")
            print(json.dumps(card.to_dict(), indent=2))
            return 0
        model = load_checkpoint(args.checkpoint)
        provenance = dict(model.card.provenance) if hasattr(model, "card") else {}
        try:
            provenance[args.key] = json.loads(args.value.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{args.value} is not JSON ({e}); give a JSON file") from None
        save_checkpoint(model, args.checkpoint, provenance)
    except EXPECTED_ERRORS as e:
        return report_error(e)
    print(f"stored {args.value} as provenance[{args.key!r}] in {args.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
