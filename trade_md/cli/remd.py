"""``trade-md remd``, ``reference``, ``reference-combine`` and ``remd-data``: parallel tempering, its MBAR reference,
the combination of independent runs' references, and boundary datasets from its frames."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trade_md.analysis.remd import analyse_reference, export_frames
from trade_md.cli.common import add_system_arguments, system_from_args
from trade_md.cli.mpi import mpi_command
from trade_md.errors import InputError
from trade_md.formats.files import read_json, write_json_atomic
from trade_md.formats.reference import combine_summaries
from trade_md.formats.remd import read_record, read_storage
from trade_md.convergence import ConvergenceWarning
from trade_md.progress import show_progress
from trade_md.remd import DEFAULT_LADDER, INTEGRATORS, RemdSettings, resume_remd, run_remd
from trade_md.remd_data import export_dataset
from trade_md.thermo import parse_temperatures

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trade-md remd``, ``trade-md reference``, ``trade-md reference-combine`` and ``trade-md remd-data``."""
    remd = subparsers.add_parser(
        "remd", help="parallel tempering (openmmtools) with NetCDF storage and resume",
        description="Parallel tempering of a molecule over a temperature ladder. Under MPI "
                    "(`mpirun -n K trade-md remd ...` with K at most the number of replicas; needs "
                    "pip install \"trade-md[mpi]\") openmmtools distributes the replicas over the ranks; rank 0 "
                    "writes the storage and run.json.",
    )
    add_system_arguments(remd)
    remd.add_argument("--temperatures",
                      help=f"ladder in K: Tmin:Tmax:K (geometric) or a comma list, e.g. 300,400,550 (default "
                           f"{DEFAULT_LADDER}; with --resume it must match the run's)")
    length = remd.add_mutually_exclusive_group()
    length.add_argument("--ns-per-replica", type=float, help="simulated time per replica in ns (default 1)")
    length.add_argument("--iterations", type=int, help="number of exchange iterations instead of --ns-per-replica")
    remd.add_argument("--steps-per-iteration", type=int, default=500,
                      help="MD steps between exchange attempts (default %(default)s)")
    remd.add_argument("--timestep-fs", type=float, default=1.0, help="Langevin time step in fs (default %(default)s)")
    remd.add_argument("--collision-rate", type=float, default=1.0, help="Langevin friction in 1/ps (default %(default)s)")
    remd.add_argument("--mixing", choices=("swap-all", "swap-neighbors"), default="swap-all",
                      help="exchange scheme (default %(default)s)")
    remd.add_argument("--integrator", choices=tuple(INTEGRATORS), default="langevin",
                      help="dynamics between exchanges: langevin (BAOAB, velocities scaled by sqrt(T_new/T_old) "
                           "when an exchange moves a replica), langevin-redraw (velocities redrawn at every "
                           "exchange: <U> and ln Z run 0.6-5 kJ/mol high on alanine dipeptide; reproduces runs made "
                           "before rescaling) or ghmc (Metropolis-corrected, exact, 1.7-2.6x the cost per step and "
                           "slower basin transitions) (default %(default)s)")
    remd.add_argument("--platform", default="auto",
                      help="OpenMM platform: auto (fastest of a short timing), Reference, CPU, CUDA, OpenCL")
    remd.add_argument("--cpu-threads", type=int, default=1, help="threads of the CPU platform (default %(default)s)")
    remd.add_argument("--out", required=True, help="output directory (storage, run.json)")
    remd.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its last iteration (extend with a larger "
                           "--ns-per-replica/--iterations)")
    remd.add_argument("--no-progress", action="store_true", help="no progress bar")
    remd.set_defaults(func=mpi_command(_remd_command), command="remd")

    reference = subparsers.add_parser(
        "reference", help="MBAR analysis of remd runs: <U>, ln Z, Ramachandran histograms, basin ΔF(T)",
        description="Analyse a `trade-md remd` directory, or several independent runs of one system pooled into "
                    "one MBAR (their ladders may differ): equilibration detection, decorrelation, MBAR at any "
                    "temperature inside the ladder, diagnostics, decorrelated frames for NLL evaluation.",
    )
    reference.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by trade-md remd")
    reference.add_argument("--out", help="summary JSON (default RUN_DIR/summary.json; required for several runs)")
    reference.add_argument("--temperatures",
                           help="temperatures in K (comma list or Tmin:Tmax:K) inside the ladder; default the ladder "
                                "plus 300,400,450,500,600,...,1000 within it")
    reference.add_argument("--frames-dir", help="where to export decorrelated frames (default RUN_DIR/frames; "
                                                "for several runs OUT_frames beside the summary JSON)")
    reference.add_argument("--no-frames", action="store_true", help="do not export frames")
    reference.add_argument("--no-histograms", action="store_true", help="leave Ramachandran histograms out of the JSON")
    reference.add_argument("--bootstrap", type=int, default=100, metavar="N",
                           help="block-bootstrap MBAR re-solves behind the standard errors (default %(default)s)")
    reference.add_argument("--no-progress", action="store_true", help="no progress bar")
    reference.set_defaults(func=_reference_command, command="reference")

    combine = subparsers.add_parser(
        "reference-combine", help="one reference from the `trade-md reference` summaries of independent runs",
        description="Average the per-temperature estimates of independent remd runs' summaries (same system, same "
                    "--temperatures), with standard errors from the scatter between the runs. The output is a "
                    "reference summary for `trade-md evaluate --reference` (no frames: no NLL).",
    )
    combine.add_argument("summaries", nargs="+", metavar="SUMMARY", help="summary JSONs written by trade-md reference")
    combine.add_argument("--out", required=True, help="combined summary JSON to write")
    combine.set_defaults(func=_combine_command, command="reference-combine")

    data = subparsers.add_parser(
        "remd-data", help="the frames of remd runs at one ladder temperature as a boundary dataset",
        description="Pool the frames that `trade-md remd` runs drew at one ladder temperature into a dataset in the "
                    "`trade-md md` format (train --data DIR). Tempering equilibrates slow modes, such as cis/trans "
                    "peptide bonds, that plain MD at that temperature does not cross.",
    )
    data.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by trade-md remd")
    data.add_argument("--temperature", type=float, required=True, help="ladder temperature in K, e.g. 600")
    data.add_argument("--out", required=True, help="dataset directory to write")
    data.add_argument("--discard-ps", type=float, default=50.0,
                      help="equilibration dropped from each run, ps (default %(default)s)")
    data.set_defaults(func=_remd_data_command, command="remd-data")


def _remd_command(args: argparse.Namespace) -> int:
    show_progress(not args.no_progress)
    given_system = any(getattr(args, name, None) for name in ("system", "pdb", "prmtop"))
    command = " ".join(["trade-md"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("trade-md") else None
    if args.resume:
        record, _ = read_record(Path(args.out))
        settings = record["settings"]
        if args.temperatures is not None and not np.allclose(
                parse_temperatures(args.temperatures, ladder=True), settings["temperatures"], rtol=1e-6):
            raise InputError(f"--temperatures {args.temperatures} differs from the run's ladder "
                             f"{[round(t, 2) for t in settings['temperatures']]}; drop it when resuming")
        n_iterations = args.iterations
        if args.ns_per_replica is not None:
            n_iterations = RemdSettings.iterations_for(args.ns_per_replica, settings["steps_per_iteration"],
                                                       settings["timestep_fs"])
        resume_remd(args.out, system=system_from_args(args) if given_system else None, n_iterations=n_iterations,
                    platform=None if args.platform == "auto" else args.platform, cpu_threads=args.cpu_threads,
                    progress=not args.no_progress)
        return 0
    if not given_system:
        raise InputError("no system given; add --system alanine-dipeptide (or --pdb/--prmtop), or --resume to continue")
    system = system_from_args(args)
    ladder = parse_temperatures(args.temperatures or DEFAULT_LADDER, ladder=True)
    n_iterations = args.iterations or RemdSettings.iterations_for(
        1.0 if args.ns_per_replica is None else args.ns_per_replica, args.steps_per_iteration, args.timestep_fs)
    settings = RemdSettings(temperatures=tuple(float(t) for t in ladder), n_iterations=n_iterations,
                            steps_per_iteration=args.steps_per_iteration, timestep_fs=args.timestep_fs,
                            collision_rate_per_ps=args.collision_rate, mixing=args.mixing,
                            integrator=args.integrator)
    run_remd(system, settings, args.out, platform=args.platform, cpu_threads=args.cpu_threads,
             progress=not args.no_progress, command=command)
    return 0


def _reference_command(args: argparse.Namespace) -> int:
    show_progress(not args.no_progress)
    run_dirs = [Path(run_dir) for run_dir in args.run_dirs]
    if len(run_dirs) > 1 and not args.out:
        raise InputError("several runs are pooled into one summary: give --out SUMMARY.json")
    out = Path(args.out) if args.out else run_dirs[0] / "summary.json"
    if len({run_dir.resolve() for run_dir in run_dirs}) < len(run_dirs):
        raise InputError("the same run is given twice; pool only independent runs")
    runs = [read_storage(run_dir) for run_dir in run_dirs]
    temperatures = None if args.temperatures is None else parse_temperatures(args.temperatures).tolist()
    summary, samples, estimator = analyse_reference(runs, temperatures, histograms=not args.no_histograms,
                                                    n_bootstrap=args.bootstrap, sources=[str(d) for d in run_dirs],
                                                    progress=not args.no_progress)
    if not args.no_frames:
        frames_dir = Path(args.frames_dir) if args.frames_dir else (
            run_dirs[0] / "frames" if len(run_dirs) == 1 else out.with_name(f"{out.stem}_frames"))
        summary["frames"] = export_frames(runs[0].system, samples, estimator, summary, frames_dir)
    write_json_atomic(out, summary)
    for message in summary["warnings"]:
        print(f"trade-md reference: WARNING: {message}", file=sys.stderr)
    _print_table(summary)
    return 0


def _combine_command(args: argparse.Namespace) -> int:
    combined = combine_summaries([read_json(path) for path in args.summaries], list(args.summaries))
    write_json_atomic(Path(args.out), combined)
    _print_table(combined)
    print(f"wrote {args.out}: {len(args.summaries)} runs combined")
    return 0


def _remd_data_command(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # printed below, once
        dataset = export_dataset(args.run_dirs, args.temperature, args.out, discard_ps=args.discard_ps)
    print(f"wrote {args.out}: {len(dataset)} frames at {dataset.temperature:g} K from {len(args.run_dirs)} remd "
          f"run(s); mean potential energy {dataset.metadata['mean_potential_energy']:.2f} kJ/mol")
    for line in dataset.metadata["convergence"]["warnings"]:
        print(f"WARNING: {line}", file=sys.stderr)
    return 0


def _fmt(value: float | None, width: int) -> str:
    return f"{'inf':>{width}}" if value is None else f"{value:{width}.2f}"


def _print_table(summary: dict[str, Any]) -> None:
    """Per temperature: ⟨U⟩, ln Z − ln Z0 and (for a dipeptide) P(φ > 0) and ΔF, with standard errors; for a
    peptide with several φ, ΔF and P(φ > 0) of each residue; then the exchange and overlap diagnostics of each
    run."""
    has_basins = "delta_f" in summary
    header = f"{'T/K':>8} {'<U>/kJ mol-1':>18} {'lnZ-lnZ0':>14}" + (
        f" {'P(phi>0)':>10} {'dF/kJ mol-1':>16} {'dF/kT':>14}" if has_basins else "")
    print(header)
    for i, t in enumerate(summary["temperatures"]):
        line = (f"{t:8.1f} {summary['mean_energy'][i]:10.2f} ± {summary['mean_energy_sem'][i]:5.2f} "
                f"{summary['log_z_relative'][i]:8.2f} ± {summary['log_z_relative_sem'][i]:4.2f}")
        if has_basins:
            line += (f" {summary['p_phi_positive'][i]:10.4f} {_fmt(summary['delta_f'][i], 8)} ± "
                     f"{_fmt(summary['delta_f_sem'][i], 5)} {_fmt(summary['delta_f_kT'][i], 6)} ± "
                     f"{_fmt(summary['delta_f_sem_kT'][i], 4)}")
        print(line)
    _print_residues(summary)
    diagnostics = summary.get("diagnostics")
    if diagnostics is None:  # a combination of runs (combine_summaries) has no single ladder to diagnose
        return
    runs = summary.get("runs") or [{"source": "", "diagnostics": diagnostics}]
    for run in runs:
        print(f"{run['source'] + ': ' if run['source'] else ''}neighbour acceptance "
              f"{run['diagnostics']['neighbour_acceptance']}; round trips {run['diagnostics']['round_trips']}")
    print(f"min neighbour MBAR overlap {min(diagnostics['overlap_neighbours'], default=float('nan'))}")


def _print_residues(summary: dict[str, Any]) -> None:
    """Per temperature, ΔF_i ± sem (k_BT) and P(φ_i > 0) of each residue of a peptide with several φ."""
    basins = summary.get("phi_basins")
    if not basins or len(basins["labels"]) < 2:
        return
    print("dF/kT = F(phi>0) - F(phi<0) per residue, with P(phi>0):")
    print(f"{'T/K':>8}" + "".join(f" {label:>23}" for label in basins["labels"]))
    for i, t in enumerate(summary["temperatures"]):
        print(f"{t:8.1f}" + "".join(
            f" {_fmt(basins['delta_f_kT'][r][i], 6)} ± {_fmt(basins['delta_f_sem_kT'][r][i], 4)} "
            f"({basins['p_positive'][r][i]:6.4f})" for r in range(len(basins["labels"]))))
