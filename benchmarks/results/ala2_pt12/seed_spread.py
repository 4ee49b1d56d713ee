"""Spread of the Kish ESS and of ΔF − ΔF_MBAR over evaluations of the same run with different seeds.

Usage, from the repository root: ``python benchmarks/results/ala2_pt12/seed_spread.py EVALUATION.json ...``
(the JSONs of ``benchmarks/ala2_transfer.py evaluate``). Prints one row per run and temperature: the seeds, ESS %
per seed with mean and range, and ΔF − ΔF_MBAR (k_BT) per seed with its mean. Evaluations of the basin-calibrated
proposal (``evaluate --calibration FILE``) form their own rows, named after the run and the calibration file.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path


def main(paths: list[str]) -> None:
    rows: dict[tuple[str, float], list[tuple[int, float, float]]] = defaultdict(list)
    for path in paths:
        with open(path) as file:
            evaluation = json.load(file)
        if "evaluation" not in evaluation:
            print(f"skipped {path}: not an `ala2_transfer.py evaluate` JSON", file=sys.stderr)
            continue
        seed = evaluation["evaluation"]["seed"]
        calibration = evaluation["evaluation"].get("calibration")
        name = evaluation["run"] + ("" if calibration is None else f" + {Path(calibration['file']).stem}")
        for result in evaluation["results"]:
            if result["mixture"]:
                continue                                      # q(x | T) alone: mixtures are another sampler
            rows[(name, result["temperature_K"])].append(
                (seed, result["ess_percent"], result["delta_f_diff_kT"]))
    print(f"{'run':46s} {'T/K':>6s}  seeds      ESS % per seed (mean, range)            dF - MBAR per seed (mean)")
    for (run, temperature), draws in sorted(rows.items()):
        draws.sort()
        ess = [d[1] for d in draws]
        diff = [d[2] for d in draws]
        print(f"{run:46s} {temperature:6.0f}  {','.join(str(d[0]) for d in draws):9s}  "
              f"{' '.join(f'{e:5.2f}' for e in ess)} ({sum(ess) / len(ess):5.2f}, {min(ess):.2f}-{max(ess):.2f})  "
              f"{' '.join(f'{x:+.3f}' for x in diff)} ({sum(diff) / len(diff):+.3f})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
