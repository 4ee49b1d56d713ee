"""Which energy terms a generator gets wrong at T0: its samples against the MD data, term by term.

    python benchmarks/energy_terms.py runs/phe_w --samples 20000 \\
        --out benchmarks/results/boundary_limits/phe_terms.json

draws ``--samples`` from the boundary model of a finished ``trade-md run`` directory (``--model`` for another) at
T0, takes as many frames of its T0 data, and evaluates each force class of the molecule's OpenMM
system on both (its own force group, Reference platform): harmonic bonds, harmonic angles, periodic torsions, and
the rest (nonbonded and implicit solvent). Prints and writes per class the median and interquartile range of the
samples' and the data's energies (kJ/mol), and the Kish ESS at T0 of the samples; a sample the model gives the
wrong hand has weight 0, as in ``trade-md evaluate``. A term whose samples sit above the data's is where the model
misplaces atoms; matching bonded terms point at the nonbonded packing, which no single coordinate holds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import unit

from trade_md.analysis.metrics import kish_ess, pareto_k
from trade_md.energy import EnergyBridge
from trade_md.formats.checkpoint import load_generator
from trade_md.formats.dataset import load_dataset
from trade_md.formats.files import json_safe, write_json_atomic
from trade_md.recipe.context import run_data
from trade_md.thermo import reduced_potential

BONDED = {"HarmonicBondForce": "bonds", "HarmonicAngleForce": "angles", "PeriodicTorsionForce": "torsions"}
"""OpenMM force class -> the row it gets; every other force with energy goes to ``nonbonded + solvent``."""


def term_energies(system: openmm.System, positions: np.ndarray) -> dict[str, np.ndarray]:
    """Energy of each force class (kJ/mol, shape (n,)) of ``positions`` (n, atoms, 3) in nm."""
    split = copy.deepcopy(system)
    groups: dict[str, int] = {}
    for force in split.getForces():
        name = BONDED.get(type(force).__name__, "nonbonded + solvent")
        force.setForceGroup(groups.setdefault(name, len(groups)))
    context = openmm.Context(split, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    out = {name: np.empty(len(positions)) for name in groups}
    for i, frame in enumerate(positions):
        context.setPositions(frame)
        for name, group in groups.items():
            state = context.getState(getEnergy=True, groups={group})
            out[name][i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished `trade-md run` directory (its md stage)")
    parser.add_argument("--model", type=Path, help="model directory (default RUN/boundary)")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_dataset(run_data(args.run))
    model_dir = args.model or args.run / "boundary"
    model = load_generator(model_dir).generator.double().eval()
    t0 = model.reference_temperature
    torch.manual_seed(args.seed)
    with torch.no_grad():
        parts = [model.sample(min(4000, args.samples - i), t0) for i in range(0, args.samples, 4000)]
        x, log_q = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        wrong = model.chirality_flags(x).numpy()
    with EnergyBridge(dataset.system) as bridge:
        log_w = np.where(wrong, -np.inf, -reduced_potential(bridge.potential(x).numpy(), t0) - log_q.numpy())
    frames = np.random.default_rng(args.seed).choice(len(dataset), min(args.samples, len(dataset)), replace=False)
    sampled = term_energies(dataset.system.system, x.numpy().reshape(len(x), -1, 3))
    data = term_energies(dataset.system.system, np.asarray(dataset.positions)[frames])
    rows = {}
    for name in sampled:
        rows[name] = {source: {"median": float(np.median(e)), "iqr": float(np.subtract(*np.percentile(e, [75, 25])))}
                      for source, e in (("samples", sampled[name]), ("data", data[name]))}
    print(f"model {model_dir} at {t0:g} K: Kish ESS {100 * kish_ess(log_w):.2f} % (tail k {pareto_k(log_w):.2f}), "
          f"{len(x)} samples against {len(frames)} MD frames")
    print(f"{'term':<20} {'median: samples':>16} {'data':>8} {'IQR: samples':>13} {'data':>8}")
    for name, row in rows.items():
        print(f"{name:<20} {row['samples']['median']:>16.1f} {row['data']['median']:>8.1f} "
              f"{row['samples']['iqr']:>13.1f} {row['data']['iqr']:>8.1f}")
    write_json_atomic(args.out, json_safe({
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "run": str(args.run), "model": str(model_dir), "temperature": t0, "samples": len(x),
        "data_frames": len(frames), "ess": kish_ess(log_w), "tail_k": pareto_k(log_w),
        "wrong_hand": float(wrong.mean()), "terms_kj_mol": rows}))


if __name__ == "__main__":
    main()
