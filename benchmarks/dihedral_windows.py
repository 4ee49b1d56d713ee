"""Boundary fits at equal steps with stiff dihedrals on the circle or on windows (``flow: {dihedral_windows: true}``).

    python benchmarks/dihedral_windows.py runs/phe2 --steps 4000 --work runs/windows_phe \\
        --out benchmarks/results/dihedral_windows/phe.json

takes the boundary stage of a finished ``trade-md run`` directory (its effective config ``boundary/train.yaml`` and
its T0 data), trains it twice for ``--steps`` steps on one core (cosine schedule over those steps, the
same seed), once as the run did and once with ``dihedral_windows``, in ``WORK/circle`` and ``WORK/windows`` (a run
already there with its steps is reused), then draws ``--samples`` from each model at T0 and prints and writes: the
validation NLL (nats, Cartesian measure, comparable between the two), the Kish ESS at T0 and its tail k, the median
potential energy of the samples above the data's (kJ/mol), the fraction of wrong-handed samples, and s per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from trade_md.analysis.metrics import kish_ess, pareto_k
from trade_md.energy import EnergyBridge
from trade_md.formats.checkpoint import load_generator
from trade_md.formats.dataset import load_dataset
from trade_md.formats.files import json_safe, write_json_atomic
from trade_md.recipe.context import run_data
from trade_md.thermo import reduced_potential

from boundary_limits import boundary_values, fit  # benchmarks/, the script's directory

VARIANTS = {"circle": False, "windows": True}
"""Variant name -> ``flow.dihedral_windows``."""


def variant_values(run: Path, windows: bool) -> dict:
    """The run's boundary config on its T0 data, with or without dihedral windows."""
    values = boundary_values(run)
    values["data"] = {**values["data"], "path": str(run_data(run))}
    values["flow"] = {**values["flow"], "dihedral_windows": windows}
    return values


def evaluate(out: Path, data_energies: np.ndarray, bridge: EnergyBridge, samples: int, seed: int) -> dict:
    """Samples at T0 from the model in ``out``: Kish ESS, tail k, median energy above the data's, wrong hands."""
    model = load_generator(out).generator.double().eval()
    t0 = model.reference_temperature
    torch.manual_seed(seed)
    with torch.no_grad():
        parts = [model.sample(min(4000, samples - i), t0) for i in range(0, samples, 4000)]
        x, log_q = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        energies = bridge.potential(x).numpy()
        wrong = model.chirality_flags(x).numpy()
    log_w = np.where(wrong, -np.inf, -reduced_potential(energies, t0) - log_q.numpy())
    return {"ess_t0": kish_ess(log_w), "tail_k": pareto_k(log_w), "samples": samples,
            "median_energy_above_data_kj_mol": float(np.median(energies) - np.median(data_energies)),
            "wrong_chirality_fraction": float(wrong.mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished `trade-md run` directory (its boundary and md stages)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=20000, help="samples at T0 per model")
    parser.add_argument("--work", type=Path, required=True, help="where the two boundary runs go")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_dataset(run_data(args.run))
    rows = {}
    with EnergyBridge(dataset.system) as bridge:
        for name, windows in VARIANTS.items():
            values = variant_values(args.run, windows)
            summary = json.loads((fit(args.run, values, args.work / name, args.steps) / "summary.json").read_text())
            rows[name] = {"steps": summary["step"], "val_nll": summary["best_validation"]["val_nll"],
                          "seconds_per_step": summary["seconds_per_step"], "flow": values["flow"],
                          **evaluate(args.work / name, dataset.energies, bridge, args.samples, seed=1)}
    print(f"{'dihedrals':<10} {'steps':>6} {'val NLL':>9} {'ESS T0 %':>9} {'tail k':>7} {'U above data':>13} "
          f"{'wrong hand':>10} {'s/step':>7}")
    for name, row in rows.items():
        print(f"{name:<10} {row['steps']:>6} {row['val_nll']:>9.2f} {100 * row['ess_t0']:>9.3f} {row['tail_k']:>7.2f} "
              f"{row['median_energy_above_data_kj_mol']:>13.1f} {row['wrong_chirality_fraction']:>10.4f} "
              f"{row['seconds_per_step']:>7.3f}")
    write_json_atomic(args.out, json_safe({
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version,
                    "torch": torch.__version__},
        "run": str(args.run), "system": dataset.system.name, "n_atoms": int(dataset.positions.shape[1]),
        "data_frames": len(dataset), "steps": args.steps, "variants": rows}))


if __name__ == "__main__":
    main()
