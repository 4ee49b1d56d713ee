"""Mean potential energy per OpenMM force term of the frames in trade-md datasets (e.g. `trade-md remd-data` of one
ladder temperature), with standard errors from 10 contiguous blocks; prints a table and writes JSON.

    python benchmarks/results/remd_velocities/energy_terms.py DATASET [DATASET ...] --frames 1500 --out F.json
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np
import openmm
from openmm import unit

from trade_md.formats.dataset import load_dataset
from trade_md.formats.files import write_json_atomic


def energy_terms(directory: str, n_frames: int) -> dict[str, object]:
    """{term: (mean, sem)} in kJ/mol over ``n_frames`` evenly spaced frames of one dataset."""
    dataset = load_dataset(directory)
    system = dataset.system.system
    names = [type(force).__name__ for force in system.getForces()]
    for group, force in enumerate(system.getForces()):
        force.setForceGroup(group)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    index = np.linspace(0, len(dataset.positions) - 1, n_frames).astype(int)
    energies = np.zeros((len(index), len(names)))
    for row, frame in enumerate(index):
        context.setPositions(dataset.positions[frame])
        for group in range(len(names)):
            state = context.getState(getEnergy=True, groups={group})
            energies[row, group] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    blocks = energies[: len(energies) // 10 * 10].reshape(10, -1, len(names)).mean(axis=1)
    total_blocks = blocks.sum(axis=1)
    terms = {name: [float(m), float(s)] for name, m, s in
             zip(names, energies.mean(axis=0), blocks.std(axis=0, ddof=1) / np.sqrt(10), strict=True)}
    terms["total"] = [float(energies.sum(axis=1).mean()), float(total_blocks.std(ddof=1) / np.sqrt(10))]
    return {"dataset": directory, "temperature_K": dataset.temperature, "frames": len(index), "terms": terms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = [energy_terms(d, args.frames) for d in args.datasets]
    for result in results:
        print(result["dataset"], f"{result['temperature_K']:.1f} K",
              "  ".join(f"{k} {m:.2f} +- {s:.2f}" for k, (m, s) in result["terms"].items() if m or s))
    write_json_atomic(args.out, {
        "benchmark": "energy_terms",
        "command": " ".join(["python", *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "results": results,
    })


if __name__ == "__main__":
    main()
