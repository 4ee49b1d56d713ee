"""Does MD at 2 fs with 4 amu hydrogens (no constraints) sample the positions that 1 fs does?

Masses leave the Boltzmann distribution of positions as it is; only the integrator's error could change it. Three
runs of one molecule at one temperature (LangevinMiddle, friction 1/ps, Reference platform, the same start, a frame
every 0.1 ps after 20 ps): 1 fs at the force field's masses (the baseline), 2 fs with every hydrogen at 4 amu
(:func:`trade_md.md.repartition_hydrogen_mass`, what ``trade-md run`` does) and 2 fs at the force field's masses
(the control that shows the measures can see an integrator error). Per run: mean potential energy and its bonded
and nonbonded terms (kJ/mol, ± one standard error over 20 blocks), the standard deviation of the X–H and of the
heavy-atom bond lengths (nm, averaged over the bonds, ± the spread of 20 blocks' values / √20), steps per second.
z: a difference from the baseline over the combined standard error.

    python benchmarks/md_timestep.py --ns 3                      # capped PHE at 600 K (results §10b)
    python benchmarks/md_timestep.py --system alanine-dipeptide --ns 0.5  # md_timestep/alanine-dipeptide.json
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit

from trade_md.formats.files import write_json_atomic
from trade_md.md import HMR_MIN_MASS_AMU, repartition_hydrogen_mass
from trade_md.systems import MolecularSystem, load_system

HERE = Path(__file__).resolve().parent
PHE = HERE / "results" / "capped_phe" / "phe.pdb"
OUT_DIR = HERE / "results" / "md_timestep"
TERMS = {"bonds": "HarmonicBondForce", "angles": "HarmonicAngleForce", "torsions": "PeriodicTorsionForce",
         "nonbonded": "NonbondedForce", "solvation": "GBSAOBCForce"}
BLOCKS = 20
FRAME_FS = 100.0


def run(molecule: MolecularSystem, temperature: float, ns: float, timestep_fs: float, hydrogen_mass: float | None,
        seed: int) -> dict[str, Any]:
    """One run's statistics (module docs)."""
    system = (openmm.XmlSerializer.clone(molecule.system) if hydrogen_mass is None      # force groups set below
              else repartition_hydrogen_mass(molecule, hydrogen_mass))
    groups = {}
    for index, force in enumerate(system.getForces()):
        force.setForceGroup(index)
        groups[type(force).__name__] = index
    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, 1.0 / unit.picosecond,
                                                 timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(molecule.positions)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(temperature * unit.kelvin, seed)
    integrator.step(int(round(20_000 / timestep_fs)))
    every = int(round(FRAME_FS / timestep_fs))
    n_frames = int(round(ns * 1e6 / FRAME_FS)) // BLOCKS * BLOCKS
    atoms = list(molecule.topology.atoms())
    bonds = np.array([(a.index, b.index) for a, b in molecule.topology.bonds()])
    is_h = np.array([atoms[i].element.symbol == "H" or atoms[j].element.symbol == "H" for i, j in bonds])
    energies = {name: np.empty(n_frames) for name in ("total", *TERMS)}
    lengths = np.empty((n_frames, len(bonds)))
    started = time.perf_counter()
    for frame in range(n_frames):
        integrator.step(every)
        state = context.getState(getEnergy=True, getPositions=True)
        energies["total"][frame] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        for name, force in TERMS.items():
            if force in groups:
                term = context.getState(getEnergy=True, groups={groups[force]})
                energies[name][frame] = term.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        lengths[frame] = np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1)
    wall = time.perf_counter() - started
    record: dict[str, Any] = {"timestep_fs": timestep_fs, "hydrogen_mass_amu": hydrogen_mass, "ns": ns,
                              "frames": n_frames, "wall_s": wall, "steps_per_s": n_frames * every / wall}
    for name, values in energies.items():
        if name == "total" or TERMS[name] in groups:
            blocks = values.reshape(BLOCKS, -1).mean(axis=1)
            record[f"energy_{name}"] = [float(values.mean()), float(blocks.std(ddof=1) / math.sqrt(BLOCKS))]
    for name, mask in (("xh", is_h), ("heavy", ~is_h)):
        per_block = lengths[:, mask].reshape(BLOCKS, -1, int(mask.sum())).std(axis=1).mean(axis=1)
        whole = float(lengths[:, mask].std(axis=0).mean())
        record[f"bond_std_{name}"] = [whole, float(per_block.std(ddof=1) / math.sqrt(BLOCKS))]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", help="a built-in system (default: capped PHE, benchmarks/results/capped_phe)")
    parser.add_argument("--temperature", type=float, default=600.0, help="K (default 600)")
    parser.add_argument("--ns", type=float, default=3.0, help="ns per run (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON (default: results/md_timestep/<system>.json, phe.json)")
    args = parser.parse_args(argv)
    if args.system:
        molecule, name = load_system(args.system), args.system
    else:
        molecule, name = load_system(PHE, ["amber99sbildn.xml", "amber99_obc.xml"]), "capped PHE"
    out = args.out or OUT_DIR / f"{args.system or 'phe'}.json"
    runs = {"1fs": (1.0, None), "2fs_hmr": (2.0, HMR_MIN_MASS_AMU), "2fs_plain": (2.0, None)}
    results = {}
    for label, (timestep, mass) in runs.items():
        results[label] = run(molecule, args.temperature, args.ns, timestep, mass, args.seed)
        print(f"{label}: {results[label]['wall_s']:.0f} s", flush=True)
    base = results["1fs"]
    keys = [k for k in base if k.startswith(("energy_", "bond_std_"))]
    print(f"\n{name}, {args.temperature:g} K, {args.ns:g} ns per run; value ± SE (z against 1 fs)")
    print(f"{'quantity':<20}" + "".join(f"{label:>28}" for label in results))
    for key in keys:
        cells = []
        for label, record in results.items():
            value, error = record[key]
            z = (value - base[key][0]) / math.hypot(error, base[key][1])
            scale = 1e3 if key.startswith("bond") else 1.0
            cells.append(f"{value * scale:.3f} ± {error * scale:.3f}" + ("" if label == "1fs" else f" ({z:+.1f})"))
        unit_name = " (pm)" if key.startswith("bond") else ""
        print(f"{key + unit_name:<20}" + "".join(f"{cell:>28}" for cell in cells))
    print(f"{'steps/s':<20}" + "".join(f"{r['steps_per_s']:>28.0f}" for r in results.values()))
    command = "python benchmarks/md_timestep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_json_atomic(out, {
        "command": command.strip(), "system": name, "temperature": args.temperature, "runs": results,
        "z_against_1fs": {label: {key: (r[key][0] - base[key][0]) / math.hypot(r[key][1], base[key][1])
                                  for key in keys} for label, r in results.items() if label != "1fs"},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version},
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
