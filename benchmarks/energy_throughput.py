"""Energy+force throughput of EnergyBridge against a plain loop over one OpenMM Context, measured in one run.

System: the built-in alanine dipeptide (amber99sb-ildn + OBC, 22 atoms), conformations = its PDB positions plus
0.01 nm Gaussian noise. For each batch size the single-context loop and the bridge (1 and 2 workers; 1 worker
both in-process, the default, and in a worker process) evaluate the same conformations; repeats are interleaved
so that load from other processes hits all of them alike, and each rate is the best of the repeats
(calls per second). ratio = bridge rate / (workers x single-context rate); goal: >= 0.9 at batch >= 1000.

The single-context baseline is the fastest plain loop: setPositions, getState(energy, forces), energy and forces
read without unit round trips (OpenMM's numpy fast path), i.e. the same OpenMM calls a worker makes. The loop
through OpenMM's unit-carrying public accessors is reported beside it (``single_context_public_api``).
``parallel_loops_N`` runs that plain loop in N processes at once on contiguous chunks, without any transfer of
results, timed inside the processes: what the hardware gives N processes (cores shared with other users, turbo
clocks, hyper-threads), so ``ratio_vs_parallel_loops`` = bridge_N / parallel_loops_N is the bridge's own cost.

    python benchmarks/energy_throughput.py                       # writes benchmarks/results/energy_throughput.json
    python benchmarks/energy_throughput.py --platform CUDA --out /tmp/cuda.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform as host
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as unit

from trade_md.energy import EnergyBridge
from trade_md.formats.files import write_json_atomic
from trade_md.systems import load_system

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "energy_throughput.json"


def single_context_loops(
    system: openmm.System, platform_name: str, properties: dict[str, str]
) -> dict[str, Callable[[np.ndarray], None]]:
    """Plain loops over one Context: ``fast`` (numpy fast path, as a worker does) and ``public_api`` (units)."""
    platform = openmm.Platform.getPlatformByName(platform_name)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, properties)
    kj_per_nm = unit.kilojoule_per_mole / unit.nanometer

    def fast(batch: np.ndarray) -> None:
        energies, forces = np.empty(len(batch)), np.empty_like(batch)
        for i in range(len(batch)):
            context.setPositions(batch[i])
            state = context.getState(getEnergy=True, getForces=True)
            energies[i] = state.getPotentialEnergy()._value
            state._getVectorAsNumpy(openmm.State.Forces, forces[i])

    def public_api(batch: np.ndarray) -> None:
        energies, forces = np.empty(len(batch)), np.empty_like(batch)
        for i in range(len(batch)):
            context.setPositions(batch[i])
            state = context.getState(getEnergy=True, getForces=True)
            energies[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            forces[i] = state.getForces(asNumpy=True).value_in_unit(kj_per_nm)

    return {"fast": fast, "public_api": public_api}


def _plain_loop_process(connection, system_xml: str, platform_name: str, properties: dict[str, str]) -> None:
    """Child of ParallelLoops: one Context; times the fast plain loop on each chunk it receives."""
    loop = single_context_loops(openmm.XmlSerializer.deserialize(system_xml), platform_name, properties)["fast"]
    connection.send("ready")
    while (chunk := connection.recv()) is not None:
        start = time.perf_counter()
        loop(chunk)
        connection.send(time.perf_counter() - start)


class ParallelLoops:
    """N processes running the plain single-context loop concurrently on contiguous chunks of a batch."""

    def __init__(self, system: openmm.System, n: int, platform_name: str, properties: dict[str, str]) -> None:
        context = multiprocessing.get_context("spawn")
        xml = openmm.XmlSerializer.serialize(system)
        self.connections, self.processes = [], []
        for _ in range(n):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_plain_loop_process, args=(child_end, xml, platform_name, properties), daemon=True
            )
            process.start()
            self.connections.append(parent_end)
            self.processes.append(process)
        for connection in self.connections:
            assert connection.recv() == "ready"

    def __call__(self, batch: np.ndarray) -> float:
        """Seconds until the slowest process finished its chunk (compute only)."""
        for connection, chunk in zip(self.connections, np.array_split(batch, len(self.connections)), strict=True):
            connection.send(chunk)
        return max(connection.recv() for connection in self.connections)

    def close(self) -> None:
        for connection, process in zip(self.connections, self.processes, strict=True):
            connection.send(None)
            process.join()


def machine_info() -> dict:
    cpu = host.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os": f"{host.system()} {host.release()}",
        "python": sys.version.split()[0],
        "openmm": openmm.__version__,
        "numpy": np.__version__,
    }


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", default="auto", help="Reference, CPU, OpenCL, CUDA or auto (default)")
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the best counts")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    molecule = load_system("alanine-dipeptide")
    rng = np.random.default_rng(0)
    conformations = molecule.positions + 0.01 * rng.standard_normal((max(args.batches), molecule.n_atoms, 3))
    load_before = load_average()

    bridges: dict[str, EnergyBridge] = {}
    with EnergyBridge(molecule, platform=args.platform) as probe:
        platform_name, auto_timings, properties = probe.platform_name, probe.auto_timings, probe.properties[0]
    for workers in args.workers:
        bridges[f"bridge_{workers}"] = EnergyBridge(molecule, n_workers=workers, platform=platform_name)
    if 1 in args.workers:
        bridges["bridge_1_worker_process"] = EnergyBridge(molecule, platform=platform_name, in_process=False)
    requested = {k: v for k, v in properties.items() if k in ("Threads", "Precision", "DeterministicForces")}
    loops = single_context_loops(molecule.system, platform_name, requested)
    parallel = {
        f"parallel_loops_{n}": ParallelLoops(molecule.system, n, platform_name, requested) for n in args.workers
    }
    candidates: dict[str, Callable[[np.ndarray], object]] = {
        "single_context": loops["fast"],
        "single_context_public_api": loops["public_api"],
        **{name: bridge.energies_forces for name, bridge in bridges.items()},
        **parallel,
    }
    for run in candidates.values():  # warm-up: first calls build kernels, workers page in
        run(conformations[:20])

    results = []
    try:
        for batch_size in args.batches:
            batch = np.ascontiguousarray(conformations[:batch_size])
            seconds: dict[str, list[float]] = {name: [] for name in candidates}
            for _ in range(args.repeats):
                for name, run in candidates.items():
                    start = time.perf_counter()
                    inside = run(batch)  # ParallelLoops return their own compute time (s)
                    seconds[name].append(inside if isinstance(inside, float) else time.perf_counter() - start)
            rates = {name: batch_size / min(values) for name, values in seconds.items()}
            single = rates["single_context"]
            row = {"batch": batch_size, "rates_per_s": rates, "seconds": seconds, "ratio": {}}
            row["ratio_vs_parallel_loops"] = {}
            for name in bridges:
                workers = bridges[name].n_workers
                row["ratio"][name] = rates[name] / (workers * single)
                row["ratio_vs_parallel_loops"][name] = rates[name] / rates[f"parallel_loops_{workers}"]
            results.append(row)
    finally:
        for bridge in bridges.values():
            bridge.close()
        for loop in parallel.values():
            loop.close()

    report = {
        "benchmark": "energy_throughput",
        "system": {"name": molecule.name, "atoms": molecule.n_atoms, "forcefield": list(molecule.forcefield)},
        "machine": machine_info(),
        "load_average_before_after": [load_before, load_average()],
        "platform": platform_name,
        "platform_properties": properties,
        "auto_timings_s_per_call": auto_timings,
        "repeats": args.repeats,
        "rate": "energy+force evaluations per second (best of repeats)",
        "ratio": "bridge rate / (workers x single_context rate); goal >= 0.9 at batch >= 1000",
        "ratio_vs_parallel_loops": "bridge rate / rate of as many plain loops in parallel processes",
        "results": results,
    }
    write_json_atomic(args.out, report)

    names = list(candidates)
    print(
        f"platform {platform_name} {properties}; machine {report['machine']['cpu']} "
        f"({report['machine']['usable_cpus']} CPUs usable), load {load_before} -> {load_average()}"
    )
    print(f"{'batch':>6} " + " ".join(f"{name:>26}" for name in names))
    for row in results:
        print(f"{row['batch']:>6} " + " ".join(f"{row['rates_per_s'][name]:>24.0f}/s" for name in names))
        for key, label in (("ratio", "ratio"), ("ratio_vs_parallel_loops", "vs par")):
            cells = (f"{row[key][name]:>26.3f}" if name in row[key] else f"{'':>26}" for name in names)
            print(f"{label:>6} " + " ".join(cells))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
