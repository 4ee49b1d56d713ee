"""ΔF(φ > 0 vs φ < 0) and ⟨U⟩ of alanine dipeptide from umbrella sampling, replica exchange and the generator.

    python benchmarks/results/umbrella/compare.py --umbrella U.json [U2.json ...] --remd R.json [...] \
        --generator G.json [...] --out compare.json

U: `trade-md umbrella` summaries (several are combined by inverse-variance weighting, per temperature);
R: `trade-md reference` summaries; G: `benchmarks/ala2_transfer.py evaluate` outputs. Prints one table per
quantity (value ± standard error, and each source minus the combined umbrella value in its combined standard
errors) and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

TEMPERATURES = (300.0, 450.0, 600.0, 800.0, 1000.0)


def _at(values: list, temperatures: list, t: float) -> float | None:
    for value, candidate in zip(values, temperatures):
        if abs(candidate - t) < 0.05:
            return None if value is None else float(value)
    return None


def umbrella_combined(paths: list[str]) -> dict[float, dict[str, tuple[float, float]]]:
    """Inverse-variance mean of ΔF (k_BT) and ⟨U⟩ (kJ/mol) over umbrella summaries, per temperature."""
    combined: dict[float, dict[str, tuple[float, float]]] = {}
    for t in TEMPERATURES:
        entry = {}
        for key, sem_key in (("delta_f_kT", "delta_f_sem_kT"), ("mean_energy", "mean_energy_sem")):
            pairs = []
            for path in paths:
                summary = json.loads(Path(path).read_text())
                value = _at(summary[key], summary["temperatures"], t)
                sem = _at(summary[sem_key], summary["temperatures"], t)
                if value is not None and sem:
                    pairs.append((value, sem))
            if pairs:
                weights = [1.0 / s**2 for _, s in pairs]
                entry[key] = (sum(w * v for w, (v, _) in zip(weights, pairs)) / sum(weights), 1.0 / math.sqrt(sum(weights)))
        if entry:
            combined[t] = entry
    return combined


def source_values(path: str) -> dict[float, dict[str, tuple[float, float]]]:
    """ΔF and ⟨U⟩ with standard errors of one REMD summary, umbrella summary or generator evaluation."""
    data = json.loads(Path(path).read_text())
    values: dict[float, dict[str, tuple[float, float]]] = {}
    if "results" in data:  # generator evaluation
        for r in data["results"]:
            entry = {"delta_f_kT": (r["delta_f_kT"], r["delta_f_err_kT"])}
            if r.get("mean_energy_kj_per_mol") is not None:
                entry["mean_energy"] = (r["mean_energy_kj_per_mol"], r["mean_energy_err_kj_per_mol"])
            values[float(r["temperature_K"])] = entry
        return values
    for t in TEMPERATURES:
        entry = {}
        for key, sem_key in (("delta_f_kT", "delta_f_sem_kT"), ("mean_energy", "mean_energy_sem")):
            value = _at(data[key], data["temperatures"], t)
            if value is not None:
                entry[key] = (value, _at(data[sem_key], data["temperatures"], t) or math.nan)
        if entry:
            values[t] = entry
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--umbrella", nargs="+", required=True)
    parser.add_argument("--remd", nargs="*", default=[])
    parser.add_argument("--generator", nargs="*", default=[])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    reference = umbrella_combined(args.umbrella)
    sources = {Path(p).stem: source_values(p) for p in [*args.umbrella, *args.remd, *args.generator]}
    table: dict[str, dict] = {"umbrella_combined": {str(t): v for t, v in reference.items()}, "sources": {}}
    for key, unit in (("delta_f_kT", "k_BT"), ("mean_energy", "kJ/mol")):
        print(f"\n{key} ({unit}); per source: value ± sem, then (value − umbrella) / combined sem")
        print(f"{'source':44s}" + "".join(f"{t:>22.0f}" for t in TEMPERATURES))
        row = "".join(f"{reference[t][key][0]:>13.3f} ± {reference[t][key][1]:5.3f} " if key in reference.get(t, {})
                      else f"{'':>22s}" for t in TEMPERATURES)
        print(f"{'umbrella, combined':44s}{row}")
        for name, values in sources.items():
            cells = []
            for t in TEMPERATURES:
                if key in values.get(t, {}) and key in reference.get(t, {}):
                    v, s = values[t][key]
                    r, rs = reference[t][key]
                    z = (v - r) / math.hypot(s, rs) if math.isfinite(s) else math.nan
                    cells.append(f"{v:>8.3f} ± {s:5.3f} ({z:+5.1f}) ")
                    table["sources"].setdefault(name, {}).setdefault(str(t), {})[key] = {
                        "value": v, "sem": s, "minus_umbrella": v - r, "z": z}
                else:
                    cells.append(f"{'':>22s}")
            print(f"{name[:44]:44s}{''.join(cells)}")
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
