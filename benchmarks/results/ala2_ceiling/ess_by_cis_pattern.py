"""Kish ESS of a trained model at given temperatures, split by the cis/trans pattern of the two peptide bonds of
alanine dipeptide (stratum 0: both trans, 1: ACE-ALA cis, 2: ALA-NME cis, 3: both cis). From the repository root:
``python benchmarks/results/ala2_ceiling/ess_by_cis_pattern.py RUN OUT.json N_SAMPLES T [T ...]`` (K); writes JSON.
"""

import json
import sys
from dataclasses import asdict

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from ala2_transfer import cis_peptide_bonds  # noqa: E402

from trade_md.energy import EnergyBridge  # noqa: E402
from trade_md.analysis.metrics import ess_by_stratum, ess_with_exact_masses  # noqa: E402
from trade_md.sampler import Sampler  # noqa: E402
from trade_md.formats.checkpoint import load_generator  # noqa: E402

run, out_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
temperatures = [float(t) for t in sys.argv[4:]]
torch.set_num_threads(2)
torch.manual_seed(0)
model = load_generator(run)
generator, system = model.generator, model.system
result = {"command": " ".join(["python"] + sys.argv), "run": run, "samples": n, "seed": 0, "temperatures": {}}
with EnergyBridge(system, n_workers=1, platform="Reference") as bridge:
    sampler = Sampler(generator, bridge.energies, temperature_range=model.trained_range,
                      topology=system.topology)
    for temperature in temperatures:
        out = sampler.sample(n, temperature, progress=False)
        cis = cis_peptide_bonds(system.topology, out.positions)
        strata = ess_by_stratum(out.log_weights, cis[:, 0].astype(int) + 2 * cis[:, 1].astype(int))
        weights = np.exp(out.log_weights - np.max(out.log_weights))
        weights /= weights.sum()
        row = {"ess_percent": 100 * out.ess, "ess_exact_masses_percent": 100 * ess_with_exact_masses(strata),
               "cis_unweighted_percent": (100 * cis.mean(0)).tolist(),
               "cis_reweighted_percent": [100 * float(weights[cis[:, b]].sum()) for b in range(2)],
               "strata": [asdict(s) for s in strata]}
        result["temperatures"][f"{temperature:g}"] = row
        print(f"{temperature:g} K: ESS {row['ess_percent']:.1f} %, exact masses {row['ess_exact_masses_percent']:.1f} %,"
              f" cis in q {row['cis_unweighted_percent']}, reweighted {row['cis_reweighted_percent']}")
        for s in strata:
            print(f"   {s}")
with open(out_file, "w") as handle:
    json.dump(result, handle, indent=1, default=lambda value: value.item())
