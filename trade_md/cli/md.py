"""``trade-md md``: reference Langevin MD at one temperature (:func:`trade_md.md.run_md`), with a summary table.

``trade-md md --system alanine-dipeptide --temperature 600 --out data/ala2_600K`` runs ``--replicas`` independent
trajectories, pools their frames into a dataset and prints the frame count, the mean energies and the basin
convergence of each backbone φ (warnings included; they are printed, not raised).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from trade_md.cli.common import add_system_arguments, system_from_args
from trade_md.convergence import ConvergenceWarning
from trade_md.errors import InputError
from trade_md.formats.dataset import Dataset
from trade_md.md import DEFAULT_NS, run_md
from trade_md.progress import show_progress
from trade_md.systems import builtin_config

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``trade-md md``."""
    parser = subparsers.add_parser(
        "md", help="reference Langevin MD at one temperature (boundary data)",
        description="Langevin MD (LangevinMiddle, friction 1/ps) of independent replicas, pooled into a dataset "
                    "with a convergence report of the backbone φ basins.")
    add_system_arguments(parser)
    parser.add_argument("--temperature", type=float, help="K (default: the built-in system's reference temperature)")
    parser.add_argument("--ns", type=float, default=DEFAULT_NS,
                        help=f"total simulated time over all replicas in ns (default {DEFAULT_NS:g})")
    parser.add_argument("--out", required=True, help="output directory (new, or an interrupted one with --resume)")
    parser.add_argument("--replicas", type=int, help="independent runs in parallel (default: one per CPU core)")
    parser.add_argument("--seed", type=int, help="random seed (default: random, recorded in run.json)")
    parser.add_argument("--timestep", type=float, default=1.0,
                        help="fs (default 1; up to 2 with --hydrogen-mass 4 or --constraints HBonds)")
    parser.add_argument("--hydrogen-mass", type=float, metavar="AMU",
                        help="hydrogen mass in the dynamics, taken from the bonded atom (default: the force field's); "
                             "4 allows --timestep 2 without constraints")
    parser.add_argument("--friction", type=float, default=1.0, help="1/ps (default 1)")
    parser.add_argument("--frame-interval", type=float, default=1.0, help="ps between saved frames (default 1)")
    parser.add_argument("--equilibration", type=float, default=100.0, help="ps per replica before frames (default 100)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform or auto (fastest, measured)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_md_command, command="md")


def _md_command(args: argparse.Namespace) -> int:
    system = system_from_args(args)
    temperature = args.temperature
    if temperature is None:
        if not args.system:
            raise InputError("--temperature is required for a system that is not built in")
        temperature = builtin_config(args.system)["reference_temperature"]
    show_progress(not args.no_progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # printed in the summary, once
        dataset = run_md(system, temperature, args.out, ns=args.ns, replicas=args.replicas, seed=args.seed,
                         timestep_fs=args.timestep, hydrogen_mass_amu=args.hydrogen_mass, friction_per_ps=args.friction,
                         frame_interval_ps=args.frame_interval, equilibration_ps=args.equilibration,
                         platform=args.platform, resume=args.resume, progress=not args.no_progress)
    print(_summary(args.out, dataset))
    return 0


def _summary(out: str, dataset: Dataset) -> str:
    meta = dataset.metadata
    lines = [
        f"wrote {out}: {meta['n_frames']} frames from {meta['replicas']} runs x "
        f"{meta['frames_per_replica'] * meta['frame_interval_ps'] / 1000:g} ns at {meta['temperature']:g} K "
        f"on {meta['platform']} (seed {meta['seed']})",
        f"mean potential energy {meta['mean_potential_energy']:.2f} kJ/mol; kinetic temperature "
        f"{meta['kinetic_temperature']:.1f} K",
    ]
    for report in meta["convergence"]["dihedrals"]:
        error, block, across = (_format_error(report[key]) for key in
                                ("standard_error", "block_standard_error", "across_runs_standard_error"))
        lines.append(
            f"φ of {report['label']}: population(φ>0) = {report['population_phi_positive']:.4f} ± {error} "
            f"(block SE {block}, across runs {across}); entries into φ>0: {report['entries_phi_positive']} "
            f"(per run {report['entries_phi_positive_per_run']}), into φ<0: {report['entries_phi_negative']}")
    lines += [f"WARNING: {line}" for line in meta["convergence"]["warnings"]]
    return "\n".join(lines)


def _format_error(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
