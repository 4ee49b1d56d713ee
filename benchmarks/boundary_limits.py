"""What limits a boundary fit at T0: steps, objective, flow size or the amount of T0 data, on one molecule.

    python benchmarks/boundary_limits.py runs/phe_md76 --fractions 0.25,0.5,1 --steps 4000 \\
        --work runs/limits_phe_md76 --samples 60000 --seeds 1,2 --out benchmarks/results/boundary_limits/phe_data.json
    python benchmarks/boundary_limits.py runs/phe_md76 --vary objectives.kl.weight=1,2 --steps 4000 \\
        --work runs/limits_phe_md76 --samples 60000 --seeds 1,2 --out benchmarks/results/boundary_limits/phe_kl.json
    python benchmarks/boundary_limits.py runs/phe_w runs/phe_w/boundary runs/phe_10x192 --samples 60000 \\
        --seeds 1,2 --out benchmarks/results/boundary_limits/phe.json

The first argument is a finished ``trade-md run`` directory (its molecule, its T0 data and its boundary config
``boundary/train.yaml``); then, optionally, model directories of ``trade-md train`` / ``trade-md run`` stages on
that molecule at the same T0 (their final weights).

``--fractions`` trains the run's boundary config itself, once per fraction, for ``--steps`` steps (cosine schedule
over those steps, the same seed, one core) in ``WORK/frames_<fraction>`` (a fit already there with its steps is
reused), on the first ``fraction`` of each MD replica's training frames: the amount of independent T0 data at equal
steps. Every fraction is validated on the same frames, the ones the run held out (the last ``validation_fraction``
of the pooled data), so their validation NLLs compare directly. ``--vary KEY=V1,V2,...`` fits the same way, on all
the data, once per value of one setting of the config (a dotted path such as ``objectives.kl.weight`` or
``flow.hidden``), in ``WORK/<KEY>=<value>``.

Per model it prints and writes: steps, wall seconds per step (fits made side by side shared the CPU), flow
(couplings × width), frames it was trained on, the NLL of its training batches and of its validation frames (mean of
the last five validations, nats; the gap between them is how far the fit has moved from what it learns about the
molecule onto the frames it saw), and the Kish ESS at T0 with its tail shape k from ``--samples`` draws per seed
(wrong-handed samples weighted 0, as in ``trade-md evaluate``): the spread over seeds is the noise of one draw of
heavy-tailed weights. One core, about 1 minute per 100,000 samples of 32 atoms.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from trade_md.analysis.metrics import kish_ess, pareto_k
from trade_md.config import DataConfig, TrainConfig
from trade_md.energy import EnergyBridge
from trade_md.formats.checkpoint import load_generator, read_checkpoint
from trade_md.formats.dataset import Dataset, load_dataset, write_dataset
from trade_md.formats.files import json_safe, write_json_atomic
from trade_md.recipe.context import run_data
from trade_md.stopping import fit_gap
from trade_md.thermo import reduced_potential
from trade_md.train import train


def data_subset(dataset: Dataset, validation_fraction: float, fraction: float, out: Path) -> float:
    """Write to ``out`` the first ``fraction`` of each replica's training frames followed by the held-out frames
    (the last ``validation_fraction`` of ``dataset``); the validation fraction that holds out exactly those."""
    n_validation = round(validation_fraction * len(dataset))
    n_training = len(dataset) - n_validation
    keep = np.zeros(len(dataset), dtype=bool)
    for replica in np.unique(dataset.run[:n_training]):
        frames = np.flatnonzero(dataset.run[:n_training] == replica)
        keep[frames[: max(1, round(fraction * frames.size))]] = True
    keep[n_training:] = True
    if not (out / "run.json").exists():
        write_dataset(out, dataset.system, dataset.temperature, positions=dataset.positions[keep],
                      energies=dataset.energies[keep], times=dataset.times[keep], run=dataset.run[keep],
                      record={"subset_of": str(dataset.path), "fraction": fraction},
                      convergence=dataset.metadata.get("convergence"))
    subset_fraction = n_validation / int(keep.sum())
    assert round(subset_fraction * int(keep.sum())) == n_validation
    return subset_fraction


def boundary_values(run: Path) -> dict:
    """The run's boundary config, ``RUN/boundary/train.yaml``, as a dict."""
    return yaml.safe_load((run / "boundary" / "train.yaml").read_text())


def fit(run: Path, values: dict, out: Path, steps: int) -> Path:
    """``values`` (a boundary config of ``run``) trained for ``steps`` steps in ``out`` (cosine schedule over those
    steps, validated every 250), unless a fit of that many steps is there; ``out``."""
    values = {**values, "out": str(out), "init_from": None,
              "schedule": {**values["schedule"], "steps": steps, "minutes": None}}
    values["monitor"] = {**values["monitor"], "validate_every": 250, "progress": False}
    config = TrainConfig.from_dict(values, source=str(run / "boundary" / "train.yaml"))
    if not (out / "checkpoint.pt").exists() or read_checkpoint(out)["step"] < steps:
        train(config, resume=(out / "checkpoint.pt").exists())
    return out


def subset_values(run: Path, dataset: Dataset, fraction: float, work: Path) -> dict:
    """The run's boundary config on :func:`data_subset` (written to ``WORK/frames_<fraction>_data``; for a
    fraction of 1, ``dataset`` itself), validated on every validation frame and never stopped early."""
    values = boundary_values(run)
    path, validation = str(dataset.path), values["data"]["validation_fraction"]
    if fraction < 1.0:
        data = work / f"frames_{fraction:g}_data"
        path, validation = str(data), data_subset(dataset, validation, fraction, data)
    values["data"] = {**values["data"], "path": path, "validation_fraction": validation}
    values["monitor"] = {**values["monitor"], "validations": 0, "patience": 0}
    return values


def fraction_fit(run: Path, dataset: Dataset, fraction: float, steps: int, work: Path) -> Path:
    """The run's boundary config trained for ``steps`` steps on the first ``fraction`` of its T0 data, in
    ``WORK/frames_<fraction>``."""
    return fit(run, subset_values(run, dataset, fraction, work), work / f"frames_{fraction:g}", steps)


def variation(text: str) -> tuple[str, list]:
    """``KEY=V1,V2,...`` (KEY a dotted path into the boundary config, each value YAML) -> (KEY, values)."""
    key, _, values = text.partition("=")
    if not key or not values:
        raise argparse.ArgumentTypeError(f"--vary {text!r}: expected KEY=V1,V2,... such as objectives.kl.weight=0,2")
    return key, [yaml.safe_load(value) for value in values.split(",")]


def varied_fit(run: Path, dataset: Dataset, key: str, value: object, steps: int, work: Path) -> Path:
    """The run's boundary config with ``key`` set to ``value``, on all its T0 data, trained for ``steps`` steps in
    ``WORK/<key>=<value>``."""
    values = subset_values(run, dataset, 1.0, work)                    # a fresh dict, read from the run's file
    node, names = values, key.split(".")
    for depth, name in enumerate(names):
        if not isinstance(node, dict) or name not in node:
            raise SystemExit(f"--vary {key}: the run's boundary config has no {'.'.join(names[:depth + 1])}")
        if depth < len(names) - 1:
            node = node[name]
    node[names[-1]] = value
    return fit(run, values, work / f"{key}={value}", steps)


def fit_record(model: Path) -> dict:
    """Steps, flow, data, seconds per step (wall, all sessions) and the training / validation NLL of the model's last
    validations."""
    checkpoint = read_checkpoint(model)
    config = checkpoint["config"]
    gap = fit_gap(checkpoint["history"])
    return {"steps": int(checkpoint["step"]), "flow": f"{config['flow']['n_layers']} x {config['flow']['hidden']}",
            "data": config["data"]["path"], "training_frames": len(DataConfig(**config["data"]).split(
                np.arange(len(load_dataset(config["data"]["path"]))))[0]),
            "objectives": {name: term["weight"] for name, term in config["objectives"].items()},
            "seconds_per_step": float(checkpoint["seconds"]) / max(int(checkpoint["step"]), 1),
            "train_nll": gap["train_nll"], "val_nll": gap["val_nll"]}


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
    parser.add_argument("models", type=Path, nargs="*", help="model directories on that molecule")
    parser.add_argument("--fractions", default="", help="comma list of fractions of the run's T0 data to fit on")
    parser.add_argument("--vary", type=variation, metavar="KEY=V1,V2,...",
                        help="fit the run's boundary config with KEY (a dotted path in it) set to each value")
    parser.add_argument("--steps", type=int, default=4000, help="steps of each --fractions or --vary fit")
    parser.add_argument("--work", type=Path, help="where the --fractions and --vary fits go")
    parser.add_argument("--samples", type=int, default=100000, help="draws per model and seed")
    parser.add_argument("--seeds", default="1,2", help="comma list of sampling seeds")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    fractions = [float(f) for f in args.fractions.split(",") if f]
    if (fractions or args.vary) and args.work is None:
        parser.error("--fractions and --vary need --work, the directory their fits go to")
    dataset = load_dataset(run_data(args.run))
    models = [fraction_fit(args.run, dataset, f, args.steps, args.work) for f in fractions]
    if args.vary:
        key, values = args.vary
        models += [varied_fit(args.run, dataset, key, value, args.steps, args.work) for value in values]
    models += args.models
    if not models:
        parser.error("give model directories, --fractions, --vary, or a mix")
    rows = {}
    with EnergyBridge(dataset.system) as bridge:
        for model in models:
            rows[str(model)] = {**fit_record(model),
                                "draws": [ess_at_t0(model, bridge, args.samples, seed) for seed in seeds]}
    print(f"{'model':<28} {'steps':>6} {'s/step':>6} {'flow':>8} {'frames':>7} {'train NLL':>10} {'val NLL':>8} "
          f"{'gap':>5}  ESS at T0 % (k) per seed")
    for name, row in rows.items():
        draws = "  ".join(f"{100 * d['ess']:.2f} ({d['tail_k']:.2f})" for d in row["draws"])
        print(f"{name:<28} {row['steps']:>6} {row['seconds_per_step']:>6.3f} {row['flow']:>8} "
              f"{row['training_frames']:>7} {row['train_nll']:>10.2f} {row['val_nll']:>8.2f} "
              f"{row['val_nll'] - row['train_nll']:>5.2f}  {draws}")
    write_json_atomic(args.out, json_safe({
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version,
                    "torch": torch.__version__},
        "run": str(args.run), "samples_per_seed": args.samples, "models": rows}))


if __name__ == "__main__":
    main()
