"""``trade-md export``: a trained model without its training state, with its card (:mod:`trade_md.recipe.card`)."""

from __future__ import annotations

import argparse
from typing import Any

from trade_md.recipe.card import export_model

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``trade-md export``."""
    parser = subparsers.add_parser(
        "export", help="write a trained model (weights, config, system; no optimiser state) with its card",
        description="Copies the model of a `trade-md run` or `trade-md train` directory into OUT as checkpoint.pt "
                    "without optimiser or RNG state; from a `trade-md run` directory also card.json and README.md "
                    "(how it was made, cost, ESS and ΔF per temperature). OUT works wherever a run directory does "
                    "(`trade-md sample --model OUT`, init_from); systems/<name>/model/ is a built-in system's "
                    "shipped model.")
    parser.add_argument("run", help="run directory (trade-md run or trade-md train)")
    parser.add_argument("--out", required=True, help="directory to write checkpoint.pt, card.json and README.md into")
    parser.add_argument("--command-line", metavar="TEXT",
                        help="how the run was made, for the card (default: rebuilt from the run's options)")
    parser.set_defaults(func=_main, command="export")


def _main(args: argparse.Namespace) -> int:
    card = export_model(args.run, args.out, command=args.command_line)
    measured = f", card with {len(card['per_temperature'])} temperatures" if card["per_temperature"] else ""
    print(f"wrote {args.out}/checkpoint.pt: {card['parameters']:,} parameters, {card['size_bytes'] / 1e6:.1f} MB"
          f"{measured}")
    return 0
