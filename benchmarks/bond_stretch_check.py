"""Do sampled configurations have Boltzmann-distributed X–H bond stretches? (:mod:`trade_md.bondcheck`)

Subcommands, each printing a table and writing JSON (the ratio is 1 for exact Boltzmann samples; its standard
error is about ``sqrt(2 / frames)`` per bond for independent frames, ``sd/sqrt(12)`` over alanine dipeptide's 12
bonds):

- ``data DIR``: frames of a ``trade-md md`` / ``trade-md remd-data`` dataset at its temperature.
- ``simulate --scheme S``: plain MD of the built-in alanine dipeptide from a dataset frame, one frame per 0.5 ps,
  then the check. Schemes: ``langevin`` (LangevinMiddleIntegrator, 1 fs, 1/ps), ``langevin-redraw`` (the same with
  Maxwell-Boltzmann velocities redrawn before every 0.5 ps segment, as ``trade-md remd --integrator langevin-redraw``
  does after each exchange), ``ghmc-redraw`` (openmmtools' Metropolis-corrected GHMCIntegrator, redrawn likewise).
- ``model RUN``: importance-weighted samples of a trained generator at ``--temperature``.

Example: ``python benchmarks/bond_stretch_check.py simulate --scheme langevin-redraw --ns 1.5 --start-from
data/ala2_600K_pt12 --out benchmarks/results/bond_stretch/langevin_redraw.json``
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit
import torch

from trade_md.bondcheck import bond_stretch_ratios
from trade_md.energy import EnergyBridge
from trade_md.formats.dataset import load_dataset
from trade_md.sampler import Sampler

SCHEMES = ("langevin", "langevin-redraw", "ghmc-redraw")


def simulate(scheme: str, system: Any, start: np.ndarray, temperature: float, ns: float, seed: int) -> np.ndarray:
    """Frames ``[ns * 2000, atoms, 3]`` nm, one per 0.5 ps after 10 ps of equilibration (1 fs steps, 1/ps)."""
    t = temperature * unit.kelvin
    if scheme == "ghmc-redraw":
        from openmmtools.integrators import GHMCIntegrator

        integrator = GHMCIntegrator(t, 1.0 / unit.picosecond, 1.0 * unit.femtosecond)
    else:
        integrator = openmm.LangevinMiddleIntegrator(t, 1.0 / unit.picosecond, 1.0 * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system.system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(start)
    context.setVelocitiesToTemperature(t, seed + 7)
    integrator.step(10000)
    frames = np.empty((int(round(ns * 2000)), *start.shape))
    for i in range(len(frames)):
        if scheme != "langevin":
            context.setVelocitiesToTemperature(t, seed * 1_000_003 + i + 1)
        integrator.step(500)
        frames[i] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    data = sub.add_parser("data")
    data.add_argument("dataset")
    sim = sub.add_parser("simulate")
    sim.add_argument("--scheme", choices=SCHEMES, required=True)
    sim.add_argument("--ns", type=float, default=1.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--temperature", type=float, default=600.0)
    sim.add_argument("--start-from", required=True, help="dataset whose frame seed x 1000 starts the run")
    model = sub.add_parser("model")
    model.add_argument("run")
    model.add_argument("--temperature", type=float, required=True)
    model.add_argument("--samples", type=int, default=20000)
    model.add_argument("--seed", type=int, default=0)
    for p in (data, sim, model):
        p.add_argument("--frames", type=int, default=6000, help="frames checked (evenly spaced; default 6000)")
        p.add_argument("--out", required=True, help="JSON file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    weights = None
    if args.mode == "data":
        dataset = load_dataset(args.dataset)
        system, positions, temperature = dataset.system, dataset.positions, dataset.temperature
    elif args.mode == "simulate":
        dataset = load_dataset(args.start_from)
        system, temperature = dataset.system, args.temperature
        positions = simulate(args.scheme, system, dataset.positions[args.seed * 1000], temperature, args.ns, args.seed)
    else:
        torch.manual_seed(args.seed)
        with Sampler.from_checkpoint(args.run) as sampler:
            samples = sampler.sample(args.samples, args.temperature, progress=False)
            system = sampler.system
        positions, weights, temperature = samples.positions, samples.weights, args.temperature
    index = np.linspace(0, len(positions) - 1, min(args.frames, len(positions))).round().astype(int)
    with EnergyBridge(system, platform="CPU") as bridge:
        ratios = bond_stretch_ratios(system, positions[index], temperature, bridge.energies,
                                     weights=None if weights is None else weights[index])
    values = np.array([r.ratio for r in ratios])
    mean, sem = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    print(f"{'bond':>12} {'ratio':>7} {'shift':>7}")
    for r in ratios:
        print(f"{r.name:>12} {r.ratio:7.3f} {r.shift:+7.3f}")
    print(f"mean over {len(values)} X-H bonds: {mean:.4f} +- {sem:.4f} (1 for exact Boltzmann samples; "
          f"{len(index)} frames, effective {ratios[0].effective_frames:.0f})")
    report = {
        "benchmark": "bond_stretch_check",
        "command": " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "temperature_K": temperature,
        "frames": int(len(index)),
        "mean_ratio": mean,
        "mean_ratio_sem": sem,
        "bonds": [r.__dict__ for r in ratios],
        "seconds": time.perf_counter() - start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
