"""What limits a boundary fit at T0: steps, objective, flow size or data, compared on one molecule.

    python benchmarks/boundary_limits.py runs/phe_w runs/windows_phe/windows runs/phe_w/boundary \\
        runs/phe_kl_finetune runs/phe_10x192 runs/phe_half_boundary --samples 100000 --seeds 1,2 \\
        --out benchmarks/results/boundary_limits/phe.json

The first argument is a finished ``trade-md run`` directory (its molecule); then model directories of
``trade-md train`` / ``trade-md run`` stages on that molecule at the same T0 (their final weights). Per model it
prints and writes: steps, flow (couplings × width), frames it was fitted on, the NLL of its training batches and
of its validation frames (mean of the last five validations, nats; the gap between them is how far the fit has
moved from what it learns about the molecule onto the frames it saw), and the Kish ESS at T0 with its tail shape k
from ``--samples`` draws per seed (wrong-handed samples weighted 0, as in ``trade-md evaluate``): the spread over
seeds is the noise of one draw of heavy-tailed weights. One core, about 1 minute per 100,000 samples of 32 atoms.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from trade_md.analysis.metrics import kish_ess, pareto_k
from trade_md.energy import EnergyBridge
from trade_md.formats.checkpoint import load_generator, read_checkpoint
from trade_md.formats.dataset import load_dataset
from trade_md.formats.files import json_safe, write_json_atomic
from trade_md.thermo import reduced_potential

LAST_VALIDATIONS = 5
"""Validations averaged for the training and validation NLL."""


def fit_record(model: Path) -> dict:
    """Steps, flow, data and the training / validation NLL of the model's last validations."""
    checkpoint = read_checkpoint(model)
    config = checkpoint["config"]
    shown = [h for h in checkpoint["history"] if "nll" in h and "val_nll" in h][-LAST_VALIDATIONS:]
    return {"steps": int(checkpoint["step"]), "flow": f"{config['flow']['n_layers']} x {config['flow']['hidden']}",
            "data": config["data"]["path"], "data_frames": len(load_dataset(config["data"]["path"])),
            "objectives": {name: term["weight"] for name, term in config["objectives"].items()},
            "train_nll": float(np.mean([h["nll"] for h in shown])),
            "val_nll": float(np.mean([h["val_nll"] for h in shown]))}


def ess_at_t0(model: Path, bridge: EnergyBridge, samples: int, seed: int) -> dict:
    """Kish ESS and tail k at the model's T0 from ``samples`` draws with ``seed``."""
    generator = load_generator(model).generator.double().eval()
    t0 = generator.reference_temperature
    torch.manual_seed(seed)
    log_w = []
    with torch.no_grad():
        for start in range(0, samples, 4000):
            x, log_q = generator.sample(min(4000, samples - start), t0)
            wrong = generator.chirality_flags(x).numpy()
            log_w.append(np.where(wrong, -np.inf, -reduced_potential(bridge.potential(x).numpy(), t0) - log_q.numpy()))
    weights = np.concatenate(log_w)
    return {"seed": seed, "ess": kish_ess(weights), "tail_k": pareto_k(weights)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a `trade-md run` directory: the molecule")
    parser.add_argument("models", type=Path, nargs="+", help="model directories on that molecule")
    parser.add_argument("--samples", type=int, default=100000, help="draws per model and seed")
    parser.add_argument("--seeds", default="1,2", help="comma list of sampling seeds")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    with EnergyBridge(load_dataset(args.run / "md" / "pooled").system) as bridge:
        for model in args.models:
            rows[str(model)] = {**fit_record(model),
                                "draws": [ess_at_t0(model, bridge, args.samples, seed) for seed in seeds]}
    print(f"{'model':<28} {'steps':>6} {'flow':>8} {'frames':>7} {'train NLL':>10} {'val NLL':>8} {'gap':>5}  "
          f"ESS at T0 % (k) per seed")
    for name, row in rows.items():
        draws = "  ".join(f"{100 * d['ess']:.2f} ({d['tail_k']:.2f})" for d in row["draws"])
        print(f"{name:<28} {row['steps']:>6} {row['flow']:>8} {row['data_frames']:>7} {row['train_nll']:>10.2f} "
              f"{row['val_nll']:>8.2f} {row['val_nll'] - row['train_nll']:>5.2f}  {draws}")
    write_json_atomic(args.out, json_safe({
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version,
                    "torch": torch.__version__},
        "run": str(args.run), "samples_per_seed": args.samples, "models": rows}))


if __name__ == "__main__":
    main()
