"""A second MBAR reference at 600-1000 K from the twelve independent 600-1050 K parallel-tempering runs of
``ala2_pt12/`` (one ``trade-md reference`` per run, in ``pt12_mbar/``, combined by
:func:`trade_md.formats.reference.combine_summaries`): per temperature the mean ΔF over the runs and its standard error from
their scatter, next to the shipped reference, and (optionally) evaluation JSONs of
``benchmarks/ala2_transfer.py evaluate`` against both. From the repository root:
``python benchmarks/results/ala2_calibrated/pt12_mbar.py [EVALUATION.json ...]`` (calibrated evaluations are
grouped by their calibration file).
"""

import json
import math
import sys
from pathlib import Path

import numpy as np

from trade_md.formats.reference import combine_summaries

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parents[2] / "systems" / "alanine_dipeptide" / "reference" / "summary.json"


def combined() -> dict[float, tuple[float, float, int]]:
    """``{T: (mean ΔF/kT, standard error, runs)}`` over the per-run MBAR summaries (``trade-md reference-combine``
    does the same and wrote ``pt12_combined_summary.json``)."""
    paths = sorted((HERE / "pt12_mbar").glob("pt_*.json"))
    summary = combine_summaries([json.loads(path.read_text()) for path in paths], [str(path) for path in paths])
    return {float(t): (value, sem, len(paths))
            for t, value, sem in zip(summary["temperatures"], summary["delta_f_kT"], summary["delta_f_sem_kT"])}


def shipped(temperature: float) -> tuple[float, float] | None:
    reference = json.loads(SHIPPED.read_text())
    for k, t in enumerate(reference["temperatures"]):
        if abs(t - temperature) < 1e-6:
            return reference["delta_f_kT"][k], reference["delta_f_sem_kT"][k]
    return None


pt12 = combined()
print(f"{'T/K':>6} {'dF/kT pt12':>16} {'runs':>4} {'dF/kT shipped':>16} {'shipped - pt12':>14}")
for temperature, (mean, sem, n) in pt12.items():
    ref = shipped(temperature)
    text = "" if ref is None else f"{ref[0]:8.3f} ± {ref[1]:.3f} {ref[0] - mean:+14.3f}"
    print(f"{temperature:6.0f} {mean:8.3f} ± {sem:.3f} {n:4d} {text}")
means: dict[tuple[str, float], list[float]] = {}
for path in sys.argv[1:]:
    report = json.loads(Path(path).read_text())
    if "results" not in report:
        continue                                              # e.g. a calibration JSON caught by a glob
    calibration = report["evaluation"].get("calibration")
    name = report["run"] + ("" if calibration is None else f" + {Path(calibration['file']).stem}")
    print(f"\n{path}")
    for row in report["results"]:
        temperature = row["temperature_K"]
        if temperature not in pt12:
            continue
        mean, sem, _ = pt12[temperature]
        diff = row["delta_f_kT"] - mean
        sigma = diff / math.hypot(row["delta_f_err_kT"], sem)
        print(f"{temperature:6.0f} K: model {row['delta_f_kT']:.3f} ± {row['delta_f_err_kT']:.3f}, "
              f"- pt12 {diff:+.3f} ({sigma:+.1f} sigma), - shipped {row['delta_f_diff_kT']:+.3f}")
        means.setdefault((name, temperature), []).append(diff)
if means:
    print("\nmean of model - pt12 over the files (k_BT):")
    for (name, temperature), diffs in sorted(means.items()):
        print(f"  {name:46s} {temperature:6.0f} K: {np.mean(diffs):+.3f} over {len(diffs)} "
              f"(range {min(diffs):+.3f} to {max(diffs):+.3f})")
