"""``trade-md run``: the recipe, from a molecule and MD at one temperature to a transferable generator in a stated
budget (:mod:`trade_md.recipe`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trade_md.cli.common import add_system_arguments, add_threads_argument, system_from_args
from trade_md.progress import show_progress
from trade_md.recipe import DEFAULT_BUDGET_MINUTES, QUICK_BUDGET_MINUTES, TRANSFERS, RunOptions, run_recipe
from trade_md.recipe.options import load_overrides, parse_temperature_list

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``trade-md run``."""
    parser = subparsers.add_parser(
        "run", help="the recipe: MD at T0 -> boundary -> transfer -> self-check -> evaluation -> report, in a budget",
        description="From a molecule to a temperature-transferable generator in one command: MD at T0 (extended "
                    "while its basins are not converged), a boundary fit at T0, the transfer over the trained range, "
                    "a self-check (ESS, tail shape, log Z(T)) and, with a reference, the evaluation against it; "
                    "then a report with the cost of each stage. Sizes and step counts follow from the number of "
                    "atoms and --budget (trade_md.recipe.budget). Each stage resumes with --resume.")
    add_system_arguments(parser)
    parser.add_argument("--t0", type=float, help="K, the temperature of the data (default: the built-in system's "
                                                 "reference temperature, else 600, or that of --boundary-data)")
    parser.add_argument("--temperatures", type=parse_temperature_list,
                        help="evaluated temperatures, K (default 300,450,600,800,1000; trained over [0.93 x lowest, "
                             "1.05 x highest])")
    parser.add_argument("--budget", type=float, metavar="MINUTES",
                        help=f"wall time of the whole job (default {DEFAULT_BUDGET_MINUTES:g} min, with --quick "
                             f"{QUICK_BUDGET_MINUTES:g}); may change on --resume")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="torch device of training and sampling (default cpu)")
    parser.add_argument("--reference", metavar="PATH",
                        help="replica-exchange or umbrella summary (or `trade-md reference` directory) for ΔF, JS, ⟨U⟩ "
                             "and log Z comparisons (default: the built-in system's shipped one, if any)")
    parser.add_argument("--transfer", choices=tuple(TRANSFERS),
                        help="transfer objectives from the frozen boundary (default tilt+kl; trade: the paper's "
                             "derivative residual; none: the boundary with its thermal scaling layer)")
    parser.add_argument("--boundary-data", metavar="DIR",
                        help="train on this dataset at T0 instead of running MD (e.g. `trade-md remd-data`; the report "
                             "says it came from several temperatures and counts its MD)")
    parser.add_argument("--boundary-from", metavar="RUN",
                        help="share the MD and boundary stages of an earlier run (an ablation of --transfer at equal "
                             "budget from one boundary); its molecule, T0, temperatures and reference apply unless "
                             "given")
    parser.add_argument("--seed", type=int, help="random seed of MD, models and samples (default 0)")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML overriding the rule: sections md, boundary, transfer (TrainConfig keys), check "
                             "(trade_md.recipe.options)")
    parser.add_argument("--quick", action="store_true", default=None,
                        help="a first look in a minute or two (small flow, short MD and training)")
    add_threads_argument(parser)
    parser.add_argument("--out", default="runs/main", help="run directory (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="skip complete stages and continue an interrupted one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_main, command="run")


def _say(line: str) -> None:
    print(line, flush=True)


def _main(args: argparse.Namespace) -> int:
    show_progress(not args.no_progress)
    given = any(getattr(args, name) for name in ("system", "pdb", "prmtop"))
    system = system_from_args(args) if given else None
    options = RunOptions(
        t0=args.t0, temperatures=args.temperatures, budget=args.budget, device=args.device, reference=args.reference,
        quick=args.quick, transfer=args.transfer, boundary_data=args.boundary_data,
        boundary_from=args.boundary_from, seed=args.seed,
        overrides=None if args.config is None else load_overrides(args.config), config_file=args.config)
    summary = run_recipe(args.out, system=system, options=options, resume=args.resume,
                         progress=not args.no_progress, say=_say, threads=args.threads)
    sys.stdout.flush()
    print(f"report: {summary}")
    return 0
