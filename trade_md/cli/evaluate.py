"""``trade-md evaluate``: a trained generator against a reference (:func:`trade_md.analysis.evaluation.evaluate`).

``trade-md evaluate --model runs/x --reference ref/ala2 --temperatures 300,450,600,800,1000 --out reports/x``
writes ``metrics.json``, the figures and ``summary.md`` and prints one line per temperature (for a peptide with
several φ, a second with ΔF of each residue); temperatures outside the trained range or the reference are reported
on stderr as ``WARNING:`` lines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trade_md.analysis.evaluation import DEFAULT_TEMPERATURES, evaluate
from trade_md.analysis.evaluation_report import format_number, format_pm
from trade_md.cli.common import temperatures_from_text
from trade_md.cli.sample import parse_mixture
from trade_md.progress import show_progress

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``trade-md evaluate``."""
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a trained generator against a reference: metrics.json, figures, summary.md",
        description="Sample the generator at each temperature, reweight, and compare with a `trade-md reference` "
                    "analysis: ESS, NLL of reference frames, Ramachandran KL/JS, basin ΔF(T), energy distributions.")
    parser.add_argument("--model", required=True,
                        help="run directory of `trade-md train` or `run` (checkpoint.pt), or a built-in system's "
                             "shipped model by name")
    parser.add_argument("--reference",
                        help="`trade-md reference` directory (summary.json + frames/) or summary JSON (default: the "
                             "shipped reference of a built-in system)")
    parser.add_argument("--temperatures", default=",".join(f"{t:g}" for t in DEFAULT_TEMPERATURES),
                        help="comma list in K (default %(default)s)")
    parser.add_argument("--out", required=True, help="output directory of the report")
    parser.add_argument("--n-samples", type=int, default=20000, help="generator samples per temperature "
                                                                      "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform of the energies (default auto)")
    parser.add_argument("--mixture-ratio", action="append", default=[], metavar="R:FRACTION",
                        help="defensive mixture: this fraction of the samples at R times each temperature "
                             "(repeatable, e.g. --mixture-ratio 1.2:0.2); exact weights either way")
    parser.add_argument("--calibrated", action="store_true",
                        help="draw from the basin-calibrated proposal (MODEL/basin_calibration.json, made by "
                             "`trade-md calibrate`)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, command="evaluate")


def run(args: argparse.Namespace) -> int:
    """Evaluate, then print one line per temperature and where the report went."""
    show_progress(not args.no_progress)
    result = evaluate(args.model, args.out, reference=args.reference,
                      temperatures=temperatures_from_text(args.temperatures).tolist(), n_samples=args.n_samples,
                      seed=args.seed, energy_platform=args.platform,
                      mixture_ratios=parse_mixture(args.mixture_ratio, option="--mixture-ratio"),
                      calibrated=args.calibrated,
                      on_warning=lambda note: print(f"WARNING: {note}", file=sys.stderr, flush=True))
    for m in result["per_temperature"]:
        if "delta_f_kT" not in m:  # a molecule without backbone φ: no basin metrics
            print(f"{m['temperature']:7g} K: ESS {100 * m['ess']:.2f}%, NLL/dof {format_number(m.get('nll_per_dof'))}")
            continue
        print(f"{m['temperature']:7g} K: ESS {100 * m['ess']:.2f}% ({100 * m['ess_exact_basin_masses']:.2f}% with "
              f"exact basin masses), ΔF {format_pm(m['delta_f_kT']['generator'], None)} k_BT "
              f"(reference {format_pm(m['delta_f_kT']['reference'], m['delta_f_kT']['reference_sem'])}), "
              f"JS {format_number(m.get('js_divergence'))}, NLL/dof {format_number(m.get('nll_per_dof'))}")
        if len(m["phi_basins"]) > 1:
            print("          ΔF per residue (k_BT): " + "; ".join(
                f"{r['label']} {format_pm(r['delta_f_kT']['generator'], None)} (reference "
                f"{format_pm(r['delta_f_kT']['reference'], r['delta_f_kT']['reference_sem'])})"
                for r in m["phi_basins"]))
    if len(result["phi_labels"]) > 1:
        print(f"ΔF, ESS by basin and JS above: φ/ψ of {result['ramachandran_residue']}")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'summary.md'}")
    return 0
