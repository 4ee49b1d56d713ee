"""Results of ``trade-md run`` directories on alanine dipeptide against the umbrella reference and J1's ESS.

    python benchmarks/recipe_table.py runs/main runs/abl_trade runs/abl_none --out benchmarks/results/recipe/ala2.json

reads each run's ``report/report.json`` (its self-check: Kish ESS, tail k, samples; its evaluation: ΔF between the φ
basins with a bootstrap error) and prints, per run and temperature, the ESS against J1's (the best earlier result
from plain 600 K MD, ``benchmarks/results/ala2_mixture/split_J1_300k.json``) and ΔF − the combined umbrella value
(``benchmarks/results/umbrella/compare.json``) with z = difference / combined error; then each run's cost per stage.
The JSON holds the same numbers and the runs' options.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

from trade_md.formats.files import json_safe, write_json_atomic

HERE = Path(__file__).resolve().parent
J1_ESS = {300.0: 0.153, 450.0: 0.170, 600.0: 0.163, 800.0: 0.032, 1000.0: 0.026}
"""Kish ESS of J1 (fraction), 300,000 samples per temperature (results page §2)."""
GOAL_DELTA_F_KT = 0.2


def run_rows(run: Path, umbrella: dict[str, dict[str, list[float]]]) -> dict:
    report = json.loads((run / "report" / "report.json").read_text())
    evaluation = {row["temperature"]: row for row in report.get("evaluation") or []}
    rows = []
    for check in report["self_check"]:
        t = check["temperature"]
        row = {"temperature": t, "n_samples": check["n_samples"], "ess": check["ess"], "pareto_k": check["pareto_k"],
               "j1_ess": J1_ESS.get(t), "delta_f_kT": None, "delta_f_kT_sem": None, "umbrella": None,
               "minus_umbrella": None, "z": None}
        f_kt = (evaluation.get(t) or {}).get("delta_f_kT") or {}
        reference = umbrella.get(f"{t:.1f}", {}).get("delta_f_kT")
        if f_kt.get("generator") is not None and reference is not None:
            difference = f_kt["generator"] - reference[0]
            error = math.hypot(f_kt.get("generator_sem") or 0.0, reference[1])
            row.update({"delta_f_kT": f_kt["generator"], "delta_f_kT_sem": f_kt.get("generator_sem"),
                        "umbrella": reference, "minus_umbrella": difference, "z": difference / error})
        rows.append(row)
    return {"run": str(run), "transfer": report["transfer"]["variant"], "options": report["options"],
            "stages": report["stages"], "cost": report["cost"], "budget": report["budget"], "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trade-md run directories")
    parser.add_argument("--umbrella", type=Path, default=HERE / "results" / "umbrella" / "compare.json")
    parser.add_argument("--out", type=Path, help="JSON to write")
    args = parser.parse_args(argv)
    umbrella = json.loads(args.umbrella.read_text())["umbrella_combined"]
    results = [run_rows(run, umbrella) for run in args.runs]
    for result in results:
        print(f"\n{result['run']} (transfer {result['transfer']})")
        print("| T/K | samples | ESS % | J1 ESS % | tail k | ΔF k_BT | − umbrella (z) |")
        print("|---|---|---|---|---|---|---|")
        for row in result["rows"]:
            shift = "–" if row["minus_umbrella"] is None else f"{row['minus_umbrella']:+.2f} ({row['z']:+.1f})"
            f_kt = "–" if row["delta_f_kT"] is None else f"{row['delta_f_kT']:.2f} ± {row['delta_f_kT_sem']:.2f}"
            j1 = "–" if row["j1_ess"] is None else f"{100 * row['j1_ess']:.1f}"
            ess = f"{100 * row['ess']:.2f}" if row["ess"] < 0.01 else f"{100 * row['ess']:.1f}"
            print(f"| {row['temperature']:g} | {row['n_samples']:,} | {ess} | {j1} | "
                  f"{row['pareto_k']:.2f} | {f_kt} | {shift} |")
        print("| stage | wall min | CPU min | energy evaluations | ns |\n|---|---|---|---|---|")
        for name, cost in result["cost"]["stages"].items():
            shared = " (shared)" if cost.get("shared_from") else ""
            print(f"| {name}{shared} | {cost['wall_s'] / 60:.1f} | {cost['cpu_s'] / 60:.1f} | "
                  f"{cost['energy_evaluations']:,} | {cost['simulated_ns']:.3g} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, json_safe({
            "command": "python benchmarks/recipe_table.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version},
            "goal": {"ess": "at least J1's at every temperature", "delta_f_kT": GOAL_DELTA_F_KT},
            "runs": results}))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
