"""Annealed importance sampling against plain importance sampling on the ala2_pt12 model (issue 4).

``run N``: four seeds x {plain, Annealing(5, 1, 0.05), Annealing(10, 2, 0.03)} at 1000, 600 and 300 K, N samples
each, one JSON line per draw on stdout (Kish ESS %, tail k, energies per sample, reweighted <U> kJ/mol, wall s).
Ran as ``OMP_NUM_THREADS=1 python benchmarks/results/ala2_annealing/annealing_scan.py run 20000 >
benchmarks/results/ala2_annealing/annealing_scan.jsonl`` from the repository root (model ``runs/ala2_split_pt12``),
sharing the two cores with other jobs, so wall times are not comparable between rows.
``table FILE``: the per-temperature means and ranges of such a file.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections import defaultdict

import numpy as np
import torch

MODEL = "runs/ala2_split_pt12"


def run(n: int) -> None:
    from trade_md.annealing import Annealing
    from trade_md.sampler import Sampler

    warnings.simplefilter("ignore")
    with Sampler.from_checkpoint(MODEL) as sampler:
        for temperature in (1000.0, 600.0, 300.0):
            for seed in range(4):
                for annealing in (None, Annealing(5, 1, 0.05), Annealing(10, 2, 0.03)):
                    torch.manual_seed(100 + seed)
                    start = time.time()
                    samples = sampler.sample(n, temperature, progress=False, annealing=annealing)
                    print(json.dumps({
                        "T": temperature, "seed": seed,
                        "cfg": None if annealing is None else [annealing.levels, annealing.steps, annealing.step_size],
                        "ess": round(100 * samples.ess, 2), "k": round(samples.pareto_k, 2),
                        "evals": 1 if annealing is None else annealing.energies_per_sample,
                        "Ew": round(float(np.sum(samples.weights * samples.energies)), 2),
                        "wall": round(time.time() - start, 1)}), flush=True)


def table(path: str) -> None:
    groups: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for line in open(path):
        row = json.loads(line)
        groups[(row["T"], "plain" if row["cfg"] is None else ":".join(str(v) for v in row["cfg"]))].append(row)
    print(f"{'T/K':>6} {'proposal':>10} {'energies/sample':>15} {'ESS % mean':>10} {'range':>13} {'ESS %/energy':>12} "
          f"{'k mean':>6}")
    for (temperature, name), rows in sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1])):
        ess = np.array([row["ess"] for row in rows])
        evals = rows[0]["evals"]
        print(f"{temperature:6.0f} {name:>10} {evals:15d} {ess.mean():10.1f} {ess.min():6.2f}-{ess.max():6.2f} "
              f"{ess.mean() / evals:12.2f} {np.mean([row['k'] for row in rows]):6.2f}   ({len(rows)} draws)")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(int(sys.argv[2]))
    else:
        table(sys.argv[2])
