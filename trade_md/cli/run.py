"""``trade-md run``: the whole alanine-dipeptide study, stage by stage (:mod:`trade_md.recipe`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trade_md.progress import show_progress
from trade_md.recipe import run_pipeline

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``trade-md run``."""
    parser = subparsers.add_parser(
        "run", help="the main job: MD at 600 K -> TRADE over 280-1050 K -> evaluation -> report (alanine dipeptide)",
        description="Run the whole alanine-dipeptide study in --out, stage by stage (each stage is also its own "
                    "subcommand: md, train, evaluate). The default is the real result (40,000 TRADE steps: about a day "
                    "on a laptop CPU; use --device cuda on a GPU machine); --quick gives a first look in about a "
                    "minute.")
    parser.add_argument("--quick", action="store_true", help="tiny preset: 0.2 ns MD, small flow, 100 steps")
    parser.add_argument("--out", default="runs/main", help="run directory (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="skip complete stages and continue an interrupted one")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device of the training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_main, command="run")


def _say(line: str) -> None:
    print(line, flush=True)


def _main(args: argparse.Namespace) -> int:
    show_progress(not args.no_progress)
    summary = run_pipeline(args.out, quick=args.quick, resume=args.resume, device=args.device,
                           progress=not args.no_progress, say=_say)
    sys.stdout.flush()
    print(f"report: {summary}")
    return 0
