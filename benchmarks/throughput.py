"""Training steps/s per objective, samples/s and where the time goes, for the recipe's flow on alanine di- and
tetrapeptide, at 1 and 2 torch threads; with ``--baseline REF`` the same measurements of a git ref, interleaved.

The model is the recipe's (benchmarks/configs/ala2_boundary.yaml + ala2_split.yaml): 8 coupling layers, hidden 128,
2 hidden layers, 8 bins, the thermal scaling layer, float32, T0 = 600 K, trained range 280-1050 K. Its weights are
the seeded initialisation plus seeded Gaussian noise (0.02), so that every spline and the temperature dependence is
away from the identity; the data are 512 frames of a seeded 600 K Langevin run on OpenMM's Reference platform (the
same frames and weights in every tree). Energies: an in-process ``EnergyBridge`` on ``--platform`` (default
Reference, as the recipes).

Measured, each in a fresh process per tree (a "worker": ``python benchmarks/throughput.py --worker`` with
``PYTHONPATH`` at that tree, the same Python environment):

- training steps/s of a ``Trainer`` (public config API) with one objective alone: ``nll``, ``kl`` (at T0), ``tilt``,
  ``kl_range``, ``trade`` (the derivative TRADE residual, centred), batch 256 each (the recipes' size), schedule
  ramps 0, no grid refreshes (``grid.refresh_every: 0``; a refresh is a batch of samples plus energies, measured
  by samples/s). ``nll`` and ``kl`` train every weight (the boundary recipe), ``tilt``, ``kl_range`` and ``trade``
  the temperature-dependent ones (``trainable: temperature``, the split recipe; a run without a T0 term must);
- samples/s through ``Sampler.sample`` (flow + internal coordinates + chirality + energies + weights), at 600 K;
- a profile (torch.profiler) of a few sampling batches and training steps, the wall time split into flow MLP
  matmuls, spline elementwise maths, the spline bin search, the rest of the flow, the thermal scaling layer, the
  internal-coordinate transform, the energy bridge (OpenMM), the backward pass, the optimiser, other torch ops and
  the rest (Python and dispatcher overhead).

With ``--baseline REF`` a temporary ``git worktree`` of REF runs in a second worker. Every measurement is repeated
``--repeats`` times, alternating which tree goes first, so that load from other users of the machine hits both
alike; a speedup is the median over repeats of (new rate / baseline rate) of the same repeat, with its range.
Compile or warm-up time (the first calls of each measurement, not timed in the rates) is reported per tree; with
``--compile`` the current tree runs with ``TRADE_MD_COMPILE=1`` (torch.compile of the flow's passes, opt-in) and an
empty compile cache, and its cold compile time is the first repeat's warm-up. Rates are also given per CPU second of the worker process: while
other users load the machine, that is the steadier measure of the work a tree does (at 1 thread).

    python benchmarks/throughput.py --baseline 29047b0              # both molecules, 1 and 2 threads
    python benchmarks/throughput.py --baseline 29047b0 --quick      # a smoke run (fewer steps and repeats)

Writes ``benchmarks/results/throughput/throughput_<date>.json`` (or ``--out``): machine, command, versions, commits,
every repeat, the table and the profiles.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform as host
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "throughput"
SYSTEMS = {"ala2": "alanine-dipeptide", "ala4": "alanine-tetrapeptide"}
OBJECTIVES = ("nll", "kl", "tilt", "kl_range", "trade")
MARK = "@@THROUGHPUT "

FLOW = {"n_layers": 8, "hidden": 128, "n_hidden_layers": 2, "n_bins": 8, "seed": 0, "thermal_scaling": True}
T0, RANGE = 600.0, (280.0, 1050.0)
OBJECTIVE_SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "nll": ("all", {"batch_size": 256}),
    "kl": ("all", {"batch_size": 256}),
    "tilt": ("temperature", {"span": [280.0, 600.0], "ramp": 0, "energy_cap": 50.0, "batch_size": 256}),
    "kl_range": ("temperature", {"span": [600.0, 1050.0], "ramp": 0, "batch_size": 256}),
    "trade": ("temperature", {"ramp": 0, "batch_size": 256, "expectation": "centred", "energy_cap": 50.0,
                              "causality_epsilon": 0.05}),
}


# =============================================================================================== worker side
class Worker:
    """Runs measurements on the trade_md found on PYTHONPATH (one tree), on request."""

    def __init__(self, platform: str) -> None:
        import torch

        import trade_md

        self.torch = torch
        self.platform = platform
        self.package = str(Path(trade_md.__file__).resolve().parent)
        self.systems: dict[str, dict[str, Any]] = {}
        self.trainers: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------------------------------ set-up
    def _system(self, key: str) -> dict[str, Any]:
        if key in self.systems:
            return self.systems[key]
        import numpy as np
        import openmm
        import openmm.unit as unit

        from trade_md.energy import EnergyBridge
        from trade_md.generator import molecule_generator
        from trade_md.systems import load_system

        torch = self.torch
        system = load_system(SYSTEMS[key])
        integrator = openmm.LangevinMiddleIntegrator(T0 * unit.kelvin, 1.0 / unit.picosecond, 0.001 * unit.picosecond)
        integrator.setRandomNumberSeed(1)
        context = openmm.Context(system.system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(system.positions)
        context.setVelocitiesToTemperature(T0 * unit.kelvin, 1)
        integrator.step(2000)
        frames = []
        for _ in range(512):
            integrator.step(20)
            frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        frames = np.asarray(frames)
        torch.manual_seed(0)
        generator = molecule_generator(system, frames, T0, **FLOW)
        noise = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, parameter in sorted(generator.flow.named_parameters()):
                if parameter.dim() == 2 or parameter.shape[0] != generator.n_dof:  # not the scaling layer's
                    parameter.add_(0.02 * torch.randn(parameter.shape, generator=noise, dtype=torch.float64)
                                   .to(parameter.dtype))
        bridge = EnergyBridge(system, platform=self.platform, in_process=True)
        self.systems[key] = {"system": system, "frames": torch.as_tensor(frames), "generator": generator,
                             "bridge": bridge}
        return self.systems[key]

    def _trainer(self, key: str, objective: str) -> Any:
        if (key, objective) in self.trainers:
            return self.trainers[(key, objective)]
        from trade_md.config import TrainConfig
        from trade_md.formats.checkpoint import SystemRecord
        from trade_md.trainer import Trainer

        state = self._system(key)
        trainable, settings = OBJECTIVE_SETTINGS[objective]
        config = TrainConfig.from_dict({
            "mode": "trade", "seed": 0, "dtype": "float32", "trainable": trainable,
            "temperatures": {"reference": T0, "range": list(RANGE)}, "flow": dict(FLOW),
            "schedule": {"steps": 1_000_000, "learning_rate": 1e-4, "lr_schedule": "constant"},
            "objectives": {objective: dict(settings)},
            "grid": {"refresh_every": 0}, "energy": {"platform": self.platform},
            "monitor": {"progress": False, "ess_samples": 0, "validate_every": 1_000_000,
                        "checkpoint_every": 1_000_000},
        })
        generator = copy.deepcopy(state["generator"])
        trainer = Trainer(generator, config, SystemRecord.of(state["system"]), potential=state["bridge"].potential,
                          data=state["frames"])
        self.trainers[(key, objective)] = trainer
        return trainer

    # ------------------------------------------------------------------------------------------ measurements
    def train(self, system: str, objective: str, threads: int, steps: int, warmup: int) -> dict[str, Any]:
        self.torch.set_num_threads(threads)
        start = time.perf_counter()
        trainer = self._trainer(system, objective)
        build = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        warm = time.perf_counter() - start
        skipped = trainer.skipped_steps
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.train_step()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return {"rate": steps / seconds, "cpu_rate": steps / cpu, "seconds": seconds, "cpu_seconds": cpu,
                "steps": steps, "warmup_seconds": warm, "build_seconds": build,
                "skipped": trainer.skipped_steps - skipped}

    def _sampler(self, system: str) -> Any:
        from trade_md.sampler import Sampler

        state = self._system(system)
        return Sampler(state["generator"], state["bridge"].energies, temperature_range=RANGE)

    def sample(self, system: str, threads: int, n: int, batches: int, warmup: int) -> dict[str, Any]:
        self.torch.set_num_threads(threads)
        sampler = self._sampler(system)
        start = time.perf_counter()
        for _ in range(warmup):
            sampler.sample(n, T0, batch_size=n, progress=False)
        warm = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            sampler.sample(n, T0, batch_size=n, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return {"rate": n * batches / seconds, "cpu_rate": n * batches / cpu, "seconds": seconds,
                "cpu_seconds": cpu, "samples": n * batches, "warmup_seconds": warm}

    def checksum(self, system: str) -> dict[str, Any]:
        """Fingerprints of the model and data of ``system`` (they must agree between trees)."""
        state = self._system(system)
        weights = sum(float(v.double().sum()) for v in state["generator"].state_dict().values()
                      if v.is_floating_point())
        return {"weights": weights, "frames": float(state["frames"].double().sum()), "n_dof": state["generator"].n_dof}

    def profile(self, system: str, task: str, threads: int, repeats: int, n: int) -> dict[str, Any]:
        """Seconds per step (or per batch of ``n`` samples) by category, from torch.profiler."""
        from torch.profiler import ProfilerActivity, profile

        torch = self.torch
        torch.set_num_threads(threads)
        if task == "sample":
            sampler = self._sampler(system)

            def step() -> None:
                sampler.sample(n, T0, batch_size=n, progress=False)
        else:
            trainer = self._trainer(system, task)
            step = trainer.train_step
        step()
        step()
        restore = _install_labels(torch)
        try:
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                start = time.perf_counter()
                for _ in range(repeats):
                    step()
                wall = time.perf_counter() - start
        finally:
            restore()
        categories = _categorise(prof.events(), wall)
        return {"wall_per_step": wall / repeats, "categories": {k: v / repeats for k, v in categories.items()}}

    def info(self) -> dict[str, Any]:
        import numpy
        import openmm

        torch = self.torch
        return {"package": self.package, "torch": torch.__version__, "openmm": openmm.__version__,
                "numpy": numpy.__version__, "python": sys.version.split()[0],
                "torch_config_threads": torch.get_num_threads()}


LABELLED = [
    ("trade_md.energy", "EnergyBridge", "_evaluate", "energy bridge (OpenMM)"),
    ("trade_md.ic", "InternalCoordinates", "forward", "internal coordinates"),
    ("trade_md.ic", "InternalCoordinates", "inverse", "internal coordinates"),
    ("trade_md.thermal_scaling", "ThermalScaling", "_map", "thermal scaling"),
    ("trade_md.flows", "ConditionalSplineFlow", "transform", "flow (other)"),
    ("trade_md.flows", "ConditionalSplineFlow", "inverse_transform", "flow (other)"),
    ("trade_md.flows", None, "rational_quadratic_spline", "spline"),
    ("trade_md.splines", None, "rational_quadratic_spline", "spline"),
    ("trade_md.flows", None, "spline_columns", "spline"),
    ("trade_md.splines", None, "spline_columns", "spline"),
    ("torch.autograd", None, "backward", "backward"),
    ("torch.autograd", None, "grad", "backward"),
    ("torch.optim.adam", "Adam", "step", "optimiser"),
]
"""(module, class or None, attribute, label): calls wrapped in a profiler range while profiling (where they exist)."""
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
              "aten::_addmm_activation"}
CATEGORIES = ("MLP matmuls", "spline elementwise", "spline bin search", "flow (other)", "thermal scaling",
              "internal coordinates", "energy bridge (OpenMM)", "backward (non-matmul)", "optimiser",
              "other torch ops", "Python/dispatch overhead")


def _install_labels(torch: Any) -> Any:
    """Wrap the calls of :data:`LABELLED` in ``record_function`` ranges; returns a function that undoes it."""
    import functools
    import importlib

    undo = []
    for module_name, class_name, attribute, label in LABELLED:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        owner = module if class_name is None else getattr(module, class_name, None)
        original = None if owner is None else owner.__dict__.get(attribute) if class_name else getattr(owner, attribute,
                                                                                                         None)
        if original is None or not callable(original):
            continue

        def wrapped(*args: Any, _original: Any = original, _label: str = f"@{label}", **kwargs: Any) -> Any:
            with torch.profiler.record_function(_label):
                return _original(*args, **kwargs)

        functools.update_wrapper(wrapped, original)
        setattr(owner, attribute, wrapped)
        undo.append((owner, attribute, original))

    def restore() -> None:
        for owner, attribute, original in reversed(undo):
            setattr(owner, attribute, original)

    return restore


SEARCH_OPS = {"aten::ge", "aten::gt", "aten::le", "aten::lt", "aten::searchsorted", "aten::bucketize"}


def _is_bin_search(event: Any) -> bool:
    """A comparison of values with knots, or the count of its results (a sum of booleans): the spline's bin search."""
    dtypes = getattr(event, "input_dtypes", None) or []
    return event.name in SEARCH_OPS or (event.name == "aten::sum" and bool(dtypes) and "bool" in str(dtypes[0]).lower())


def _categorise(events: Any, wall: float) -> dict[str, float]:
    """Seconds per category (totals over the profiled calls); the rest of ``wall`` is overhead."""
    totals = {name: 0.0 for name in CATEGORIES}
    labelled: dict[int, str] = {}

    def label_of(event: Any) -> str | None:
        key = id(event)
        if key in labelled:
            return labelled[key]
        found = event.name[1:] if event.name.startswith("@") else None
        if found is None and event.cpu_parent is not None:
            found = label_of(event.cpu_parent)
        labelled[key] = found
        return found

    def in_backward(event: Any) -> bool:
        parent = event
        while parent is not None:
            if parent.name == "@backward" or parent.name.startswith("autograd::engine"):
                return True
            parent = parent.cpu_parent
        return False

    accounted = 0.0
    for event in events:
        if event.name.startswith("@"):
            outer = event.cpu_parent is None or label_of(event.cpu_parent) != "energy bridge (OpenMM)"
            if event.name == "@energy bridge (OpenMM)" and outer:
                seconds = event.cpu_time_total * 1e-6
                totals["energy bridge (OpenMM)"] += seconds
                accounted += seconds
            continue
        if not event.name.startswith("aten::") and "Compiled" not in event.name and "inductor" not in event.name:
            continue
        seconds = event.self_cpu_time_total * 1e-6
        label = label_of(event)
        if label == "energy bridge (OpenMM)":
            continue  # inside the bridge's inclusive time
        accounted += seconds
        if event.name in MATMUL_OPS:
            totals["MLP matmuls"] += seconds
        elif in_backward(event):
            totals["backward (non-matmul)"] += seconds
        elif label == "spline":
            totals["spline bin search" if _is_bin_search(event) else "spline elementwise"] += seconds
        elif label in totals:
            totals[label] += seconds
        else:
            totals["other torch ops"] += seconds
    totals["Python/dispatch overhead"] = max(0.0, wall - accounted)
    return totals


def worker_main(platform: str) -> None:
    worker = Worker(platform)
    out = sys.stdout
    sys.stdout = sys.stderr  # library output must not mix with replies
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        if command == "quit":
            break
        try:
            reply = {"ok": getattr(worker, command)(**request)}
        except Exception as error:  # report and go on: the orchestrator decides
            import traceback

            reply = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        out.write(MARK + json.dumps(reply) + "\n")
        out.flush()


# =============================================================================================== orchestrator
class Tree:
    """A worker process for one source tree."""

    def __init__(self, name: str, root: Path, platform: str, compile_flow: bool = False) -> None:
        self.name, self.root = name, root
        env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
        env.pop("TRADE_MD_COMPILE", None)
        if compile_flow:  # a fresh compile cache: the warm-up then shows the cold compile time
            env["TRADE_MD_COMPILE"] = "1"
            env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="throughput-inductor-")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--platform", platform],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(root))
        self.info = self.call("info")
        if not Path(self.info["package"]).resolve().is_relative_to(root.resolve()):
            raise RuntimeError(f"worker {name} imported trade_md from {self.info['package']}, not from {root}")

    def call(self, command: str, **kwargs: Any) -> Any:
        self.process.stdin.write(json.dumps({"cmd": command, **kwargs}) + "\n")
        self.process.stdin.flush()
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} exited (code {self.process.wait()})")
            if line.startswith(MARK):
                reply = json.loads(line[len(MARK):])
                if "error" in reply:
                    raise RuntimeError(f"worker {self.name}: {reply['error']}\n{reply['traceback']}")
                return reply["ok"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.flush()
            self.process.wait(60)


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def machine_info() -> dict[str, Any]:
    cpu = host.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "os": f"{host.system()} {host.release()}", "hostname": host.node(),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _summary(rows: list[dict[str, Any]], trees: list[str]) -> dict[str, Any]:
    """Median and range of each tree's rate over repeats, and of the speedup (new / baseline rate of one repeat), by
    wall time and by CPU time (this process's; the better measure of work while other users load the machine)."""
    out: dict[str, Any] = {}
    for tree in trees:
        rates = [row[tree]["rate"] for row in rows]
        cpu = [row[tree]["cpu_rate"] for row in rows]
        out[tree] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
                     "cpu_median": statistics.median(cpu), "first_warmup_seconds": rows[0][tree]["warmup_seconds"]}
    if len(trees) == 2:
        for key, rate in (("speedup", "rate"), ("cpu_speedup", "cpu_rate")):
            ratios = [row[trees[1]][rate] / row[trees[0]][rate] for row in rows]
            out[key] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", help="git ref to measure against, interleaved (e.g. 29047b0)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--no-sampling", action="store_true", help="skip samples/s")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every measurement")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (and batches) per repeat")
    parser.add_argument("--samples", type=int, default=4096, help="samples per timed batch")
    parser.add_argument("--batches", type=int, default=2, help="timed sampling batches per repeat")
    parser.add_argument("--profile", nargs="*", default=None, metavar="TASK",
                        help="profile these tasks (sample and/or objectives; no names: sample nll trade)")
    parser.add_argument("--platform", default="Reference", help="OpenMM platform of the energy bridge")
    parser.add_argument("--compile", action="store_true",
                        help="run the current tree with TRADE_MD_COMPILE=1 (torch.compile; its compile time is in the "
                             "warm-up seconds of the first repeat)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 2 steps, 1 batch of 1024")
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/throughput/...)")
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.platform)
        return
    if args.quick:
        args.repeats, args.steps, args.warmup, args.samples, args.batches = 2, 2, 1, 1024, 1
    profiles = None if args.profile is None else (args.profile or ["sample", "nll", "trade"])

    started = time.time()
    worktree = None
    trees: list[Tree] = []
    record: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
        "model": {"flow": FLOW, "reference_temperature_k": T0, "trained_range_k": list(RANGE), "dtype": "float32",
                  "objectives": OBJECTIVE_SETTINGS},
        "commits": {"new": _git("rev-parse", "HEAD"), "new_dirty": bool(_git("status", "--porcelain"))},
    }
    try:
        if args.baseline:
            worktree = Path(tempfile.mkdtemp(prefix="throughput-baseline-"))
            _git("worktree", "add", "--detach", str(worktree), args.baseline)
            record["commits"]["baseline"] = _git("rev-parse", "HEAD", cwd=worktree)
            record["commits"]["baseline_ref"] = args.baseline
            trees.append(Tree("baseline", worktree, args.platform))
        trees.append(Tree("new", ROOT, args.platform, compile_flow=args.compile))
        names = [tree.name for tree in trees]
        record["versions"] = {tree.name: tree.info for tree in trees}
        record["checksums"] = {system: {tree.name: tree.call("checksum", system=system) for tree in trees}
                               for system in args.systems}
        for system, sums in record["checksums"].items():
            if len({json.dumps(v, sort_keys=True) for v in sums.values()}) > 1:
                print(f"WARNING: the trees built different models or data for {system}: {sums}", flush=True)
        results: list[dict[str, Any]] = []
        tasks = list(args.objectives) + ([] if args.no_sampling else ["sample"])
        for system in args.systems:
            for threads in args.threads:
                for task in tasks:
                    rows = []
                    for repeat in range(args.repeats):
                        order = trees if repeat % 2 == 0 else trees[::-1]
                        row: dict[str, Any] = {"load_average": list(os.getloadavg())}
                        for tree in order:
                            if task == "sample":
                                row[tree.name] = tree.call("sample", system=system, threads=threads, n=args.samples,
                                                           batches=args.batches, warmup=args.warmup if repeat == 0
                                                           else 0)
                            else:
                                row[tree.name] = tree.call("train", system=system, objective=task, threads=threads,
                                                           steps=args.steps, warmup=args.warmup)
                        rows.append(row)
                    summary = _summary(rows, names)
                    results.append({"system": system, "threads": threads, "task": task, "repeats": rows,
                                    "summary": summary})
                    print(_row_text(system, threads, task, summary, names), flush=True)
        record["results"] = results
        if profiles:
            record["profiles"] = []
            for system in args.systems:
                for threads in args.threads:
                    for task in profiles:
                        entry = {"system": system, "threads": threads, "task": task}
                        for tree in trees:
                            entry[tree.name] = tree.call("profile", system=system, task=task, threads=threads,
                                                         repeats=3 if task != "sample" else 1, n=args.samples)
                        record["profiles"].append(entry)
                        print(_profile_text(entry, names), flush=True)
    finally:
        for tree in trees:
            try:
                tree.close()
            except Exception:  # noqa: BLE001 - best effort at exit
                tree.process.kill()
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
            shutil.rmtree(worktree, ignore_errors=True)
    record["seconds"] = time.time() - started
    record["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print()
    print(table_text(record))
    out = args.out or RESULTS / f"throughput_{datetime.datetime.now():%Y%m%d_%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {out}")


def _row_text(system: str, threads: int, task: str, summary: dict[str, Any], names: list[str]) -> str:
    unit = "samples/s" if task == "sample" else "steps/s"
    parts = [f"{system:5s} {threads} thr {task:9s}"]
    for name in names:
        parts.append(f"{name} {summary[name]['median']:9.2f} {unit}")
    if "speedup" in summary:
        s, c = summary["speedup"], summary["cpu_speedup"]
        parts.append(f"speedup {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}), CPU time {c['median']:.2f}x "
                     f"({c['min']:.2f}-{c['max']:.2f})")
    return "  ".join(parts)


def table_text(record: dict[str, Any]) -> str:
    names = list(record["versions"])
    header = "| molecule | threads | task | " + " | ".join(f"{n} (median)" for n in names)
    header += " | speedup, wall: median (range) | speedup, CPU time: median (range) |" if len(names) == 2 else " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for result in record["results"]:
        s = result["summary"]
        unit = "samples/s" if result["task"] == "sample" else "steps/s"
        cells = [result["system"], str(result["threads"]), result["task"]]
        cells += [f"{s[n]['median']:.2f} {unit}" for n in names]
        for key in ("speedup", "cpu_speedup"):
            if key in s:
                cells.append(f"{s[key]['median']:.2f}x ({s[key]['min']:.2f}–{s[key]['max']:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    for entry in record.get("profiles", []):
        lines.append("")
        lines.append(_profile_text(entry, names))
    return "\n".join(lines)


def _profile_text(entry: dict[str, Any], names: list[str]) -> str:
    lines = [f"profile {entry['system']} {entry['threads']} thread(s) {entry['task']}: ms per "
             f"{'batch' if entry['task'] == 'sample' else 'step'} (profiled, share)"]
    for name in names:
        profile = entry[name]
        wall = profile["wall_per_step"]
        top = sorted(profile["categories"].items(), key=lambda item: -item[1])
        text = ", ".join(f"{k} {1e3 * v:.1f} ({100 * v / wall:.0f}%)" for k, v in top if v > 0)
        lines.append(f"  {name}: {1e3 * wall:.1f} ms: {text}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
