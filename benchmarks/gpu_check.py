"""GPU check phases (driven by benchmarks/gpu_check.sh); every phase merges its figures into ``<out>/gpu_check.json``.

- ``energies``: CUDA energies/forces against the Reference platform on alanine dipeptide frames (MD frames at
  600 K plus perturbed copies); relative errors per frame, pass at 1e-4: |ΔU| / max(|U_ref|, 1 kJ/mol) and
  ‖ΔF‖ / ‖F_ref‖ (a strict test: U of alanine dipeptide crosses zero, so per-frame relative energy errors of
  frames with |U| of a few kJ/mol are large; ``energy_abs_max_over_rms_energy`` gives the scale-relative error).
  Also the energy+force throughput of the CUDA platform and of a Reference worker pool.
- ``flow``: sampling and log_prob throughput of the trained generator on the device (samples/s), and the training
  figures of the run (steps/s, energy evaluations/s) read from its ``benchmark_train.json``.

    python benchmarks/gpu_check.py energies --out OUT [--device-platform CUDA] [--frames 256] [--workers 12]
    python benchmarks/gpu_check.py flow --out OUT --run OUT/run --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trade_md.energy import EnergyBridge  # noqa: E402 - after the path insert
from trade_md.formats.checkpoint import load_generator  # noqa: E402
from trade_md.formats.dataset import load_dataset  # noqa: E402
from trade_md.formats.files import write_json_atomic  # noqa: E402

TOLERANCE = 1e-4


def merge(out: Path, key: str, value: Any) -> None:
    """Merge ``{key: value}`` into ``<out>/gpu_check.json`` (atomic)."""
    path = out / "gpu_check.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    write_json_atomic(path, data)


def _frames(data: str, n: int, seed: int) -> tuple[Any, np.ndarray]:
    dataset = load_dataset(data)
    rng = np.random.default_rng(seed)
    index = rng.choice(dataset.positions.shape[0], size=n // 2, replace=False)
    frames = dataset.positions[index]
    perturbed = frames + rng.normal(scale=0.005, size=frames.shape)
    return dataset.system, np.concatenate([frames, perturbed])


def _rate(bridge: Any, positions: np.ndarray, repeats: int = 3) -> float:
    bridge.energies_forces(positions[:8])
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        bridge.energies_forces(positions)
        best = min(best, time.perf_counter() - start)
    return positions.shape[0] / best


def energies(args: argparse.Namespace) -> int:
    """Compare the device platform with Reference; throughput of both."""
    out = Path(args.out)
    system, positions = _frames(args.data, args.frames, args.seed)
    report: dict[str, Any] = {"frames": int(positions.shape[0]), "tolerance": TOLERANCE,
                              "platform": args.device_platform}
    with EnergyBridge(system, platform="Reference") as reference:
        u_ref, f_ref = reference.energies_forces(positions)
    precisions = args.precisions if args.device_platform in ("CUDA", "OpenCL") else ["default"]
    for precision in precisions:
        if any(isinstance(v, dict) and v.get("passed") for v in report.values()):
            break  # a later precision is only tried when the earlier one fails
        try:
            with EnergyBridge(system, platform=args.device_platform,
                              platform_properties={} if precision == "default" else {"Precision": precision}) as dev:
                u_dev, f_dev = dev.energies_forces(positions)
                rate = _rate(dev, np.tile(positions, (max(args.rate_frames // positions.shape[0], 1), 1, 1)))
                properties = dev.properties[0]
        except Exception as error:  # noqa: BLE001 - recorded in the report, the check goes on
            report[precision] = {"error": f"{type(error).__name__}: {error}"}
            merge(out, "energy_check", report)
            print(f"[energies] {args.device_platform} {precision}: {type(error).__name__}: {error}", flush=True)
            continue
        energy_rel = np.abs(u_dev - u_ref) / np.maximum(np.abs(u_ref), 1.0)
        force_rel = np.linalg.norm((f_dev - f_ref).reshape(len(f_ref), -1), axis=1) / np.linalg.norm(
            f_ref.reshape(len(f_ref), -1), axis=1)
        entry = {
            "properties": properties,
            "energy_rel_max": float(energy_rel.max()),
            "energy_rel_median": float(np.median(energy_rel)),
            "energy_abs_max_kj_per_mol": float(np.abs(u_dev - u_ref).max()),
            "energy_abs_max_over_rms_energy": float(np.abs(u_dev - u_ref).max() / np.sqrt(np.mean(u_ref**2))),
            "force_rel_max": float(force_rel.max()),
            "force_rel_median": float(np.median(force_rel)),
            "passed": bool(energy_rel.max() <= TOLERANCE and force_rel.max() <= TOLERANCE),
            "calls_per_s": rate,
        }
        report[precision] = entry
        merge(out, "energy_check", report)
        print(f"[energies] {args.device_platform} {precision}: energy rel max {entry['energy_rel_max']:.2e}, force rel "
              f"max {entry['force_rel_max']:.2e} -> {'PASS' if entry['passed'] else 'FAIL'}; {rate:,.0f} calls/s",
              flush=True)
    tiled = np.tile(positions, (max(args.rate_frames // positions.shape[0], 1), 1, 1))
    with EnergyBridge(system, platform="Reference", n_workers=args.workers) as pool:
        report["reference_pool"] = {"workers": args.workers, "calls_per_s": _rate(pool, tiled)}
    merge(out, "energy_check", report)
    print(f"[energies] Reference x {args.workers} workers: {report['reference_pool']['calls_per_s']:,.0f} calls/s",
          flush=True)
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _sample_rate(generator: Any, n: int, temperature: float, device: torch.device, repeats: int = 3) -> float:
    generator.sample(min(n, 256), temperature)
    _sync(device)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        generator.sample(n, temperature)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return n / best


def flow(args: argparse.Namespace) -> int:
    """Flow throughput on the device and the training figures of the run."""
    out = Path(args.out)
    device = torch.device(args.device)
    model = load_generator(args.run, device=args.device)  # imports no training code
    generator = model.generator
    report: dict[str, Any] = {"device": str(device),
                              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "flow": model.config.get("flow"),
                              "n_parameters": sum(p.numel() for p in generator.parameters())}
    info_path = Path(args.run) / "benchmark_train.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        session = info["session"]
        seconds = session["seconds"]
        training = {
            "steps": session["steps_run"],
            "seconds": seconds,
            "steps_per_s": session["steps_run"] / seconds,
            "energy_evaluations": session["energy_evaluations"],
            "energy_evaluations_per_s": session["energy_evaluations"] / seconds,
            "seconds_per_refresh": session["seconds_per_refresh"],
            "stopped_by": session["stopped_by"],
            "fitted_steps": session.get("fitted_steps"),
            "energy_platform": session["energy_platform"],
            "config": info["config"],
            "command": info["command"],
        }
        merge(out, "training", training)
        print(f"[flow] training: {training['steps_per_s']:.2f} steps/s, "
              f"{training['energy_evaluations_per_s']:,.0f} energy evaluations/s", flush=True)
    for n in args.batch_sizes:
        report[f"samples_per_s_batch{n}"] = _sample_rate(generator, n, 600.0, device)
        with torch.no_grad():
            x, _ = generator.sample(n, 300.0)
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            generator.log_prob(x, 300.0)
        _sync(device)
        report[f"log_prob_per_s_batch{n}"] = n / (time.perf_counter() - start)
        merge(out, "flow_throughput", report)
        print(f"[flow] batch {n}: {report[f'samples_per_s_batch{n}']:,.0f} samples/s, "
              f"{report[f'log_prob_per_s_batch{n}']:,.0f} log_prob/s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="phase", required=True)
    p = sub.add_parser("energies")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="data/ala2_600K")
    p.add_argument("--device-platform", default="CUDA")
    p.add_argument("--precisions", nargs="+", default=["mixed", "double"],
                   help="GPU precisions tried in order until one passes")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--rate-frames", type=int, default=4096)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=energies)
    p = sub.add_parser("flow")
    p.add_argument("--out", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 16384])
    p.set_defaults(func=flow)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
