"""``trade-md sample``: weighted samples of a trained generator at one temperature (:mod:`trade_md.sampler`).

``trade-md sample --model runs/x --temperature 450 --n 10000 --out samples/x450`` (or ``--system
alanine-dipeptide`` for the shipped generator) writes ``samples.dcd`` +
``topology.pdb`` (mdtraj-readable) and ``samples.npz`` and prints the Kish ESS and the weights' tail shape.
:func:`parse_mixture` also reads ``trade-md evaluate --mixture-ratio``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trade_md.analysis.metrics import PARETO_K_UNRELIABLE
from trade_md.annealing import Annealing
from trade_md.errors import InputError
from trade_md.progress import show_progress
from trade_md.sampler import Sampler, write_samples
from trade_md.systems import pretrained_model

__all__ = ["ACCEPTANCE_RANGE", "parse_mixture", "register"]

ACCEPTANCE_RANGE = (0.1, 0.95)
"""Annealing acceptance rates outside this range get a hint to change the step size."""


def register(subparsers: Any) -> None:
    """Add ``trade-md sample``."""
    parser = subparsers.add_parser(
        "sample", help="draw weighted samples from a trained generator",
        description="Draw samples at one temperature and write samples.dcd + topology.pdb (mdtraj-readable) and "
                    "samples.npz (energies_kj_per_mol, log_q, normalised log_weights, wrong_chirality).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="run directory written by `trade-md train` or `trade-md run`")
    source.add_argument("--system", metavar="NAME",
                        help="the generator shipped with this built-in system (e.g. alanine-dipeptide)")
    parser.add_argument("--temperature", type=float, required=True, help="temperature in K")
    parser.add_argument("--n", type=int, default=10000, help="number of samples (default %(default)s)")
    parser.add_argument("--out", help="output directory (default samples/<T>K, e.g. samples/350K)")
    parser.add_argument("--seed", type=int, help="random seed of the draw (default: a fresh one each time)")
    parser.add_argument("--batch-size", type=int, default=4096, help="samples per batch (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="energy worker processes (default %(default)s)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform for energies (default %(default)s)")
    parser.add_argument("--mixture", action="append", default=[], metavar="T:FRACTION",
                        help="defensive mixture component: this fraction of the samples from the generator at T K "
                             "(repeatable; e.g. --mixture 700:0.2 for a 600 K target); exact weights either way")
    parser.add_argument("--calibrated", action="store_true",
                        help="draw from the basin-calibrated proposal (MODEL/basin_calibration.json, made by "
                             "`trade-md calibrate`): rare basins at their estimated Boltzmann share")
    parser.add_argument("--anneal", metavar="LEVELS:STEPS:STEP_SIZE",
                        help="annealed importance sampling: move each draw through LEVELS densities towards the "
                             "Boltzmann one, STEPS Metropolis steps each of STEP_SIZE x each coordinate's range "
                             "(e.g. 10:2:0.03, 19 energies per sample); exact weights, fewer heavy ones")
    parser.add_argument("--strict-range", action="store_true",
                        help="refuse temperatures outside the trained range instead of warning")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, command="sample")


def parse_mixture(items: Sequence[str], option: str = "--mixture") -> list[tuple[float, float]]:
    """Command-line mixture components ``["700:0.2", ...]`` → ``[(700.0, 0.2), ...]`` (temperatures in K, or
    ratios to the target temperature for ``--mixture-ratio``); a clear error naming ``option`` otherwise."""
    components = []
    for item in items:
        try:
            value, fraction = (float(part) for part in item.split(":"))
        except ValueError:
            raise InputError(f"{option} takes two numbers as A:FRACTION (e.g. 700:0.2), got {item!r}") from None
        components.append((value, fraction))
    return components


def run(args: argparse.Namespace) -> int:
    """Draw the samples, write them and print the summary (hints and warnings on stderr)."""
    show_progress(not args.no_progress)
    if args.out is None:
        args.out = f"samples/{args.temperature:g}K"
    if args.seed is not None:
        torch.manual_seed(args.seed)
    mixture = parse_mixture(args.mixture)
    annealing = None if args.anneal is None else Annealing.parse(args.anneal)
    model = args.model if args.model is not None else pretrained_model(args.system)
    with Sampler.from_checkpoint(model, n_workers=args.workers, platform=args.platform,
                                 calibrated=args.calibrated,
                                 out_of_range="error" if args.strict_range else "warn") as sampler:
        if sampler.topology is None:
            samples = sampler.sample(args.n, args.temperature, batch_size=args.batch_size, mixture=mixture,
                                     annealing=annealing)
            samples.save(args.out)
            summary = {"n": args.n, "temperature_k": samples.temperature, "ess": samples.ess,
                       "pareto_k": samples.pareto_k, "out": args.out,
                       "acceptance": None if samples.acceptance is None else samples.acceptance.tolist()}
        else:
            summary = write_samples(sampler, args.n, args.temperature, args.out, batch_size=args.batch_size,
                                    mixture=mixture, annealing=annealing)
    proposal = " from the basin-calibrated proposal" if args.calibrated else ""
    if annealing is not None:
        proposal = f" by {annealing.describe()}"
    print(f"{summary['n']} samples at {summary['temperature_k']:g} K{proposal}, Kish ESS {100 * summary['ess']:.1f} %, "
          f"tail k {summary['pareto_k']:.2f} -> {summary['out']}")
    if summary["acceptance"]:
        rates = np.asarray(summary["acceptance"])
        print(f"annealing acceptance per level: {' '.join(f'{rate:.2f}' for rate in rates)}")
        if np.nanmin(rates) < ACCEPTANCE_RANGE[0] or np.nanmax(rates) > ACCEPTANCE_RANGE[1]:
            print(f"hint: acceptance rates outside {ACCEPTANCE_RANGE[0]}-{ACCEPTANCE_RANGE[1]} waste energy "
                  "evaluations; a smaller STEP_SIZE raises them, a larger one lowers them", file=sys.stderr)
    if summary["pareto_k"] > PARETO_K_UNRELIABLE:
        print(f"warning: the weights' tail shape k = {summary['pareto_k']:.2f} exceeds {PARETO_K_UNRELIABLE}: a few "
              "samples can dominate any estimate and this ESS is unreliable; draw more samples or improve the model",
              file=sys.stderr)
    return 0
