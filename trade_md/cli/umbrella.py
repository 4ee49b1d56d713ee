"""``trade-md umbrella``: umbrella sampling along φ with MBAR (:mod:`trade_md.umbrella`,
:mod:`trade_md.analysis.umbrella`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trade_md.analysis.umbrella import analyse_umbrella, write_summary
from trade_md.cli.common import add_system_arguments, system_from_args
from trade_md.errors import InputError
from trade_md.formats.umbrella import UmbrellaSettings, read_run_record, recorded_settings
from trade_md.progress import show_progress
from trade_md.systems import MolecularSystem
from trade_md.thermo import parse_temperatures
from trade_md.umbrella import run_umbrella

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trade-md umbrella``."""
    parser = subparsers.add_parser(
        "umbrella", help="umbrella sampling along φ with MBAR: ΔF(φ>0 vs φ<0) and F(φ) without barrier crossings",
        description="Umbrella sampling along the backbone φ (molecules with one φ and ψ, as alanine dipeptide): "
                    "windows evenly spread over the circle, Langevin MD in each with neighbour swaps, MBAR to "
                    "unbias. Writes OUT/summary.json with ΔF, P(φ>0), <U> and F(φ) per temperature, and "
                    "OUT/profile.png.",
    )
    add_system_arguments(parser)
    parser.add_argument("--temperatures", help="K, one value or a comma list, e.g. 300,450 (default 300)")
    parser.add_argument("--windows", type=int, default=36, help="windows over 360° (default %(default)s)")
    parser.add_argument("--width-deg", type=float, default=6.0,
                        help="bias standard deviation in degrees; κ = k_B T / width² (default %(default)s)")
    parser.add_argument("--ns-per-window", type=float, default=0.5, help="production per window, ns (default %(default)s)")
    parser.add_argument("--equilibration-ps", type=float, default=100.0,
                        help="per window, after minimising with the bias, ps (default %(default)s)")
    parser.add_argument("--exchange-every-ps", type=float, default=1.0,
                        help="neighbouring windows attempt a configuration swap this often, ps; 0: independent "
                             "windows (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Langevin noise and swaps (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, one temperature each (default %(default)s)")
    parser.add_argument("--platform", help="OpenMM platform: Reference, CPU, CUDA, OpenCL or auto (fastest of a short timing) "
                             "(default Reference; with --resume the run's)")
    parser.add_argument("--block-ps", type=float, default=25.0,
                        help="bootstrap block length, ps of one window (default %(default)s)")
    parser.add_argument("--stride-ps", type=float, default=1.0,
                        help="analyse every frame this far apart, ps (default %(default)s)")
    parser.add_argument("--discard-ps", type=float, default=0.0,
                        help="with --analyse: production dropped from the start of each window, ps (default %(default)s)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out with its recorded settings (other run options are ignored)")
    parser.add_argument("--analyse", action="store_true", help="only (re)analyse the finished run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_command, command="umbrella")


def _command(args: argparse.Namespace) -> int:
    show_progress(not args.no_progress)
    out = Path(args.out)
    if args.analyse:
        summary = analyse_umbrella(out, block_ps=args.block_ps, stride_ps=args.stride_ps, discard_ps=args.discard_ps)
        write_summary(out, summary)
    else:
        given_system = any(getattr(args, name, None) for name in ("system", "pdb", "prmtop"))
        command = " ".join(["trade-md"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("trade-md") else None
        if args.resume:  # the run's own settings, system and platform; a given system must match it
            record = read_run_record(out)
            settings = recorded_settings(record)
            system = system_from_args(args) if given_system else MolecularSystem.deserialize(record["system"])
            platform = args.platform or record.get("platform", "Reference")
        else:
            if not given_system:
                raise InputError("no system given; add --system alanine-dipeptide (or --pdb/--prmtop), or --resume")
            temperatures = tuple(parse_temperatures(args.temperatures or "300").tolist())
            settings = UmbrellaSettings(temperatures=temperatures, n_windows=args.windows, width_deg=args.width_deg,
                                        ns_per_window=args.ns_per_window, equilibration_ps=args.equilibration_ps,
                                        exchange_every_ps=args.exchange_every_ps, seed=args.seed)
            system, platform = system_from_args(args), args.platform or "Reference"
        summary = run_umbrella(system, settings, out, workers=args.workers, platform=platform, resume=args.resume,
                               progress=not args.no_progress, command=command, block_ps=args.block_ps,
                               stride_ps=args.stride_ps)
    for message in summary["warnings"]:
        print(f"trade-md umbrella: WARNING: {message}", file=sys.stderr)
    print(f"{'T/K':>7} {'dF/kT':>7} {'+-':>5} {'P(phi>0)':>9} {'<U> kJ/mol':>11} {'+-':>5}")
    for r in summary["per_temperature"]:
        print(f"{r['temperature']:7.1f} {r['delta_f_kT']:7.3f} {r['delta_f_sem_kT']:5.3f} {r['p_phi_positive']:9.4f} "
              f"{r['mean_energy']:11.2f} {r['mean_energy_sem']:5.2f}")
    return 0
