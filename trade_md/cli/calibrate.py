"""``trade-md calibrate``: basin calibration of a trained generator (:func:`trade_md.basins.calibrate`).

``trade-md calibrate --model runs/x`` estimates each basin feature's Boltzmann share on a temperature grid (default:
8 nodes log-spaced over the trained range), writes ``runs/x/basin_calibration.json`` and prints one line per node.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.basins import CALIBRATION_FILE, calibrate, features_for
from trade_md.progress import show_progress
from trade_md.sampler import Sampler

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``trade-md calibrate``."""
    parser = subparsers.add_parser(
        "calibrate", help="correct a trained generator's basin masses at every temperature",
        description="Estimate, with the generator's own importance weights, the Boltzmann share of every basin "
                    "feature (cis peptide bonds, phi > 0) on a temperature grid, and write the log-odds that tilt "
                    "q(x | T) to those shares. `trade-md sample --calibrated` then draws from the tilted proposal "
                    "(exact weights either way).",
    )
    parser.add_argument("--model", required=True, help="run directory written by `trade-md train`")
    parser.add_argument("--temperatures", type=float, nargs="+", default=None,
                        help="grid in K (default: 8 nodes log-spaced over the trained range)")
    parser.add_argument("--n", type=int, default=50000, help="samples per grid temperature (default %(default)s)")
    parser.add_argument("--max-ratio", type=float, default=20.0,
                        help="largest factor by which a feature's odds may change (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--out", default=None, help=f"output JSON (default: MODEL/{CALIBRATION_FILE})")
    parser.add_argument("--workers", type=int, default=1, help="energy worker processes (default %(default)s)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform for energies (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, command="calibrate")


def run(args: argparse.Namespace) -> int:
    """Calibrate, save the calibration and print its per-node summary."""
    show_progress(not args.no_progress)
    with Sampler.from_checkpoint(args.model, n_workers=args.workers, platform=args.platform) as sampler:
        low, high = sampler.temperature_range
        grid = args.temperatures or np.geomspace(low, high, 8 if high > low else 1).tolist()
        calibration = calibrate(sampler, features_for(sampler.system), grid, args.n, max_ratio=args.max_ratio,
                                seed=args.seed)
    out = calibration.save(args.out or Path(args.model) / CALIBRATION_FILE)
    print("\n".join(calibration.describe()))
    print(f"{calibration.energy_evaluations} energy evaluations -> {out}")
    return 0
