"""``trade-md train``: maximum likelihood at T0 (``--mode nll``) or TRADE over a temperature range (``trade``).

Settings come from ``--config`` (a recipe YAML, nested with ``base:`` inheritance, see :mod:`trade_md.config`; a
flat file of the layout before the restructure still works); the flags override it. Under ``torchrun`` the same
command trains data-parallel, and rank 0 alone prints::

    trade-md train --mode nll --data data/ala2_600K --temperature 600 --out runs/nll600
    trade-md train --mode trade --config systems/alanine_dipeptide/trade.yaml --out runs/trade
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from trade_md.cli.common import add_threads_argument
from trade_md.config import TrainConfig, deep_merge, load_recipe
from trade_md.errors import InputError
from trade_md.formats.checkpoint import CHECKPOINT_NAME
from trade_md.progress import show_progress
from trade_md.train import train

__all__ = ["config_from_args", "register"]


def register(subparsers: Any) -> None:
    """Add ``trade-md train``."""
    parser = subparsers.add_parser(
        "train", help="train the generator: maximum likelihood at T0 (nll) or TRADE over a temperature range",
        description="Train a temperature-conditioned generator on a `trade-md md` dataset. Settings come from "
                    "--config (a recipe YAML, see trade_md.config.TrainConfig; `base:` inherits from another "
                    "recipe); the flags override it.")
    parser.add_argument("--mode", choices=("nll", "trade"), help="training mode (default: the config's, else nll)")
    parser.add_argument("--config", help="recipe YAML (nested, or the flat layout of older versions)")
    parser.add_argument("--data", help="directory of a `trade-md md` dataset at T0")
    parser.add_argument("--temperature", type=float, help="T0 in K (default: the dataset's temperature)")
    parser.add_argument("--out", help="run directory for checkpoint.pt and summary.json")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--steps", type=int, help="total optimiser steps")
    parser.add_argument("--init-from", metavar="RUN_OR_SYSTEM",
                        help="start from these weights: a run directory, or a built-in system's shipped generator "
                             "by name (e.g. alanine-dipeptide); same system, T0 and flow settings")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="torch device")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_main, command="train")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config of a `trade-md train` command: the --config file (or defaults) overridden by the flags."""
    values = load_recipe(args.config) if args.config else {}
    overrides = _given({"mode": args.mode, "out": args.out, "seed": args.seed, "device": args.device,
                        "init_from": args.init_from,
                        "data": {"path": args.data}, "temperatures": {"reference": args.temperature},
                        "schedule": {"steps": args.steps},
                        "monitor": {"progress": False if args.no_progress else None}})
    config = TrainConfig.from_dict(deep_merge(values, overrides), source=args.config or "command line")
    if config.out is None:
        raise InputError("no run directory: pass --out DIR (or set out: in the config file)")
    if config.data.path is None:
        raise InputError("no data: pass --data DIR of a `trade-md md` dataset at T0 (or set data.path in the config)")
    return config


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the options that were not given (None) and the sections left empty."""
    given = {key: _given(value) if isinstance(value, dict) else value for key, value in values.items()}
    return {key: value for key, value in given.items() if value is not None and value != {}}


def _main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    torch.set_num_threads(args.threads)
    show_progress(config.monitor.progress)
    run = train(config, resume=args.resume)
    if not run.is_main:
        return 0
    summary = run.summary
    last = summary["last"]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith(("val", "ess", "boundary", "trade")))
    per_step = summary["seconds_per_step"]
    print(f"wrote {run.out / CHECKPOINT_NAME}: {summary['step']} steps ({summary['skipped_steps']} skipped), "
          f"{'no new steps' if per_step is None else f'{per_step * 1000:.1f} ms/step'}, "
          f"{summary.get('energy_evaluations_all_ranks', summary['energy_evaluations'])} energy evaluations; "
          f"{shown}")
    return 0
