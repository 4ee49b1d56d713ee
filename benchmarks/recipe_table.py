"""Results of ``trade-md run`` directories: ESS against its goal, ΔF against the reference, cost per stage.

    python benchmarks/recipe_table.py runs/main runs/abl_trade runs/abl_none --out benchmarks/results/recipe/ala2.json
    python benchmarks/recipe_table.py runs/ala4 --out benchmarks/results/recipe/ala4.json

reads each run's ``report/report.json`` (its self-check: Kish ESS, tail k, samples; its evaluation: ΔF between the φ
basins of each residue with a bootstrap error) and prints, per run and temperature, the ESS against its goal and
ΔF − reference with z = difference / combined error; then each run's cost per stage. On alanine dipeptide the goal is
J1's ESS (the best earlier result from plain 600 K MD, ``benchmarks/results/ala2_mixture/split_J1_300k.json``) and the
reference the combined umbrella value (``benchmarks/results/umbrella/compare.json``); on any other molecule the goal
is issue 26's ESS ≥ 5 % at 300–800 K and the reference the run's ``--reference`` (replica exchange), one ΔF per
residue's φ. The JSON holds the same numbers and the runs' options.
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
"""Kish ESS of J1 (fraction), 300,000 samples per temperature (benchmarks/results/HISTORY.md)."""
GOAL_DELTA_F_KT = 0.2
GOAL_ESS_OTHER = 0.05
"""ESS goal of a molecule other than alanine dipeptide, at 300–800 K (issue 26)."""


def ess_goal(system: str, t: float) -> float | None:
    if system == "alanine-dipeptide":
        return J1_ESS.get(t)
    return GOAL_ESS_OTHER if 300.0 <= t <= 800.0 else None


def residue_rows(evaluation: dict) -> list[dict]:
    """ΔF − reference of each residue's φ basins at one temperature (against the run's own ``--reference``)."""
    rows = []
    for basin in evaluation.get("phi_basins") or []:
        f_kt = basin["delta_f_kT"]
        if f_kt.get("generator") is None or f_kt.get("reference") is None:
            continue
        difference = f_kt["generator"] - f_kt["reference"]
        error = math.hypot(f_kt.get("generator_sem") or 0.0, f_kt.get("reference_sem") or 0.0)
        rows.append({"label": basin["label"], "delta_f_kT": f_kt["generator"], "delta_f_kT_sem": f_kt.get("generator_sem"),
                     "reference": [f_kt["reference"], f_kt.get("reference_sem")], "minus_reference": difference,
                     "z": difference / error if error > 0 else None})
    return rows


def stopped_run(run: Path) -> dict:
    """A run without a report (stopped before its end): each complete stage's result and cost as the run wrote them."""
    stages = {}
    for name in ("md", "boundary", "transfer", "check"):
        if (run / name / "stage.json").is_file():
            stages[name] = {"result": json.loads((run / name / "stage.json").read_text())["result"],
                            "cost": json.loads((run / name / "cost.json").read_text())}
    return {"run": str(run), "stopped_before_report": True, "stages": stages}


def run_rows(run: Path, umbrella: dict[str, dict[str, list[float]]]) -> dict:
    report = json.loads((run / "report" / "report.json").read_text())
    evaluation = {row["temperature"]: row for row in report.get("evaluation") or []}
    system = report["system"]["name"]
    rows = []
    for check in report["self_check"]:
        t = check["temperature"]
        row = {"temperature": t, "n_samples": check["n_samples"], "ess": check["ess"], "pareto_k": check["pareto_k"],
               "ess_goal": ess_goal(system, t), "delta_f_kT": None, "delta_f_kT_sem": None, "umbrella": None,
               "minus_umbrella": None, "z": None}
        if system != "alanine-dipeptide":
            row["residues"] = residue_rows(evaluation.get(t) or {})
            rows.append(row)
            continue
        f_kt = (evaluation.get(t) or {}).get("delta_f_kT") or {}
        reference = umbrella.get(f"{t:.1f}", {}).get("delta_f_kT")
        if f_kt.get("generator") is not None and reference is not None:
            difference = f_kt["generator"] - reference[0]
            error = math.hypot(f_kt.get("generator_sem") or 0.0, reference[1])
            row.update({"delta_f_kT": f_kt["generator"], "delta_f_kT_sem": f_kt.get("generator_sem"),
                        "umbrella": reference, "minus_umbrella": difference, "z": difference / error})
        rows.append(row)
    return {"run": str(run), "system": system, "transfer": report["transfer"]["variant"], "options": report["options"],
            "stages": report["stages"], "cost": report["cost"], "budget": report["budget"], "rows": rows}


def delta_f_cells(row: dict) -> list[tuple[str, str, str]]:
    """(label, ΔF ± error, difference (z)) table cells of one temperature: one per residue off alanine dipeptide."""
    def cells(f_kt: float | None, sem: float | None, difference: float | None, z: float | None) -> tuple[str, str]:
        shown = "–" if f_kt is None else f"{f_kt:.2f} ± {sem:.2f}"
        shift = "–" if difference is None else f"{difference:+.2f}" + ("" if z is None else f" ({z:+.1f})")
        return shown, shift
    if "residues" not in row:
        return [("", *cells(row["delta_f_kT"], row["delta_f_kT_sem"], row["minus_umbrella"], row["z"]))]
    return [(f" {r['label']}", *cells(r["delta_f_kT"], r["delta_f_kT_sem"], r["minus_reference"], r["z"]))
            for r in row["residues"]] or [("", "–", "–")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trade-md run directories")
    parser.add_argument("--umbrella", type=Path, default=HERE / "results" / "umbrella" / "compare.json")
    parser.add_argument("--out", type=Path, help="JSON to write")
    args = parser.parse_args(argv)
    umbrella = json.loads(args.umbrella.read_text())["umbrella_combined"]
    results = [run_rows(run, umbrella) if (run / "report" / "report.json").is_file() else stopped_run(run)
               for run in args.runs]
    for result in results:
        if result.get("stopped_before_report"):
            print(f"\n{result['run']}: no report (stopped before its end); complete stages: "
                  + ", ".join(result["stages"]))
            continue
        print(f"\n{result['run']} ({result['system']}, transfer {result['transfer']})")
        print("| T/K | samples | ESS % | goal ESS % | tail k | ΔF k_BT | − reference (z) |")
        print("|---|---|---|---|---|---|---|")
        for row in result["rows"]:
            goal = "–" if row["ess_goal"] is None else f"{100 * row['ess_goal']:.1f}"
            ess = f"{100 * row['ess']:.2f}" if row["ess"] < 0.01 else f"{100 * row['ess']:.1f}"
            for label, f_kt, shift in delta_f_cells(row):
                print(f"| {row['temperature']:g}{label} | {row['n_samples']:,} | {ess} | {goal} | "
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
            "goal": {"ess": "alanine dipeptide: at least J1's at every temperature; other molecules: "
                             f"{100 * GOAL_ESS_OTHER:g} % at 300-800 K", "delta_f_kT": GOAL_DELTA_F_KT},
            "runs": results}))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
