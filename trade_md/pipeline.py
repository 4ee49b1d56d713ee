"""The main job, ``trade-md run``: MD at 600 K → TRADE over 280–1050 K → evaluation → report, on alanine dipeptide.

Stages (each is also its own subcommand, and each writes into ``--out``, default ``runs/main``):

1. ``data/``: Langevin MD at T0 = 600 K (:func:`trade_md.md.run_md`, as ``trade-md md``);
2. ``model/``: TRADE training with ``systems/alanine_dipeptide/trade.yaml`` (the effective config is written to
   ``train.yaml``; as ``trade-md train --config <out>/train.yaml``);
3. ``report/``: ``trade-md evaluate`` at 300, 450, 600, 800, 1000 K against the shipped reference
   (``metrics.json``, figures, ``summary.md``).

``--resume`` skips complete stages and continues an interrupted one (MD from its per-chunk checkpoints, training
from ``checkpoint.pt``). The last line printed is ``report: <out>/report/summary.md``.

Presets, with run times measured on the shared 2-core development CPU:

- ``--quick``: a first look and the CI test (0.2 ns of MD, a 4-layer flow, 100 TRADE steps, 2,000 samples per
  temperature): about 40 s in all (MD 10 s, training 10 s, evaluation 15 s). Its numbers are not converged.
- default: the real result. MD 30 ns (about 25 min on 2 cores); ``trade.yaml`` as shipped, 40,000 TRADE steps of
  the 12-layer flow at about 2 s per step plus 160 grid refreshes of about 20 s on a CPU core, i.e. about a day
  on a laptop CPU (pass ``--device cuda`` on a GPU machine); evaluation of 20,000 samples at each of the 5
  temperatures, about 15 s per temperature.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trade_md.errors import InputError
from trade_md.formats.files import read_json, write_json_atomic

__all__ = ["FULL", "PIPELINE_FORMAT", "QUICK", "Preset", "register_cli", "run_pipeline", "train_config"]

PIPELINE_FORMAT = "trade-md pipeline/1"
SYSTEM = "alanine-dipeptide"
STAGES = ("MD", "training", "evaluation")


@dataclass(frozen=True)
class Preset:
    """Settings of one ``trade-md run`` preset.

    md_ns: total MD time (ns); md_equilibration_ps / md_frame_interval_ps: per replica (ps); md_replicas: None =
    one per CPU core; train: TrainConfig fields overriding ``trade.yaml``; n_samples: evaluation samples per T.
    """

    name: str
    md_ns: float
    md_equilibration_ps: float
    md_frame_interval_ps: float
    md_replicas: int | None
    n_samples: int
    train: dict[str, Any] = field(default_factory=dict)
    temperatures: tuple[float, ...] = (300.0, 450.0, 600.0, 800.0, 1000.0)


QUICK = Preset(
    name="quick", md_ns=0.2, md_equilibration_ps=20.0, md_frame_interval_ps=0.2, md_replicas=1, n_samples=2000,
    train={"steps": 100, "batch_size": 64, "learning_rate": 2.0e-3, "kl_batch_size": 32, "trade_start": 30,
           "trade_ramp": 40, "trade_batch_size": 64, "grid_nodes": 6, "grid_samples": 128, "grid_refresh_every": 25,
           "checkpoint_every": 25, "validate_every": 25,
           "flow": {"n_layers": 4, "hidden": 32, "n_hidden_layers": 1, "n_bins": 8, "seed": 0,
                    "thermal_scaling": True}},
)
"""A first look in a few minutes on a laptop CPU (and the CI test); its numbers are not converged."""

FULL = Preset(name="full", md_ns=30.0, md_equilibration_ps=100.0, md_frame_interval_ps=1.0, md_replicas=None,
              n_samples=20000)
"""The real result: ``trade.yaml`` as shipped (see the module docs for run times)."""


def _trade_yaml() -> Path:
    from trade_md.systems import SYSTEMS_DIR

    return SYSTEMS_DIR / SYSTEM.replace("-", "_") / "trade.yaml"


def train_config(preset: Preset, data: Path, model: Path, *, device: str = "cpu", progress: bool = True) -> Any:
    """The :class:`~trade_md.train.TrainConfig` of the training stage: ``trade.yaml`` + preset + paths."""
    from trade_md.train import TrainConfig

    values = TrainConfig.from_yaml(_trade_yaml()).to_dict()
    values.update(preset.train)
    values.update({"data": str(data), "out": str(model), "device": device, "progress": progress})
    return TrainConfig.from_dict(values, source=f"{_trade_yaml()} with the {preset.name} preset")


def _settings(preset: Preset) -> dict[str, Any]:
    return dataclasses.asdict(preset)


def _prepare(out: Path, preset: Preset, resume: bool) -> None:
    record = out / "pipeline.json"
    if record.is_file():
        if not resume:
            raise InputError(f"{out} already holds a `trade-md run`; pass --resume to continue it, or choose another "
                             "--out")
        saved = read_json(record)
        if saved.get("settings") != _as_json(_settings(preset)):
            raise InputError(f"{out} was started with the {saved.get('preset')!r} preset, not {preset.name!r}; "
                             f"resume with the same preset ({'--quick' if saved.get('preset') == 'quick' else 'no --quick'}) "
                             "or choose another --out")
        return
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a `trade-md run` directory; choose another --out")
    write_json_atomic(record, {"format": PIPELINE_FORMAT, "preset": preset.name, "settings": _settings(preset)})


def _as_json(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), for comparisons with stored settings."""
    import json

    return json.loads(json.dumps(value))


def _header(index: int, text: str) -> None:
    print(f"[{index}/{len(STAGES)}] {text}", flush=True)


def _md_stage(out: Path, preset: Preset, progress: bool) -> Path:
    from trade_md.md import ConvergenceWarning, load_dataset, run_md
    from trade_md.systems import builtin_config, load_system

    data = out / "data"
    temperature = float(builtin_config(SYSTEM)["reference_temperature"])
    if (data / "run.json").is_file():
        dataset = load_dataset(data)
        _header(1, f"MD at {temperature:g} K: complete ({len(dataset)} frames in {data}), skipped")
        return data
    resume = (data / "plan.json").is_file()
    _header(1, f"MD at {temperature:g} K: {preset.md_ns:g} ns{' (resuming)' if resume else ''} -> {data}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        dataset = run_md(load_system(SYSTEM), temperature, data, ns=preset.md_ns, replicas=preset.md_replicas,
                         seed=0, frame_interval_ps=preset.md_frame_interval_ps,
                         equilibration_ps=preset.md_equilibration_ps, resume=resume, progress=progress)
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            print(f"      note: {warning.message}", flush=True)
        else:
            warnings.warn(warning.message, stacklevel=2)
    print(f"      {len(dataset)} frames, mean potential energy {dataset.metadata['mean_potential_energy']:.1f} kJ/mol",
          flush=True)
    return data


def _train_stage(out: Path, preset: Preset, data: Path, device: str, progress: bool) -> Path:
    from trade_md.train import CHECKPOINT_NAME, read_checkpoint
    from trade_md.train import register_cli as register_train

    model = out / "model"
    config = train_config(preset, data, model, device=device, progress=progress)
    config_file = out / "train.yaml"
    _write_yaml(config_file, config.to_dict())
    checkpoint = model / CHECKPOINT_NAME
    step = int(read_checkpoint(model)["step"]) if checkpoint.is_file() else 0
    span = f"{config.temperature_min:g}-{config.temperature_max:g} K"
    if step >= config.steps and (model / "summary.json").is_file():
        _header(2, f"TRADE training over {span}: complete ({step} steps in {model}), skipped")
        return model
    _header(2, f"TRADE training over {span}: {config.steps} steps"
               f"{f' (resuming at step {step})' if step else ''} -> {model}")
    parser = argparse.ArgumentParser(prog="trade-md")
    register_train(parser.add_subparsers())
    argv = ["train", "--config", str(config_file)] + (["--resume"] if checkpoint.is_file() else [])
    if not progress:
        argv.append("--no-progress")
    args = parser.parse_args(argv)
    args.func(args)
    return model


def _write_yaml(path: Path, values: dict[str, Any]) -> None:
    import yaml

    from trade_md.formats.files import atomic_write_path

    with atomic_write_path(path) as temp:
        temp.write_text("# effective TrainConfig of `trade-md run`; rerun the stage alone with\n"
                        f"#   trade-md train --config {path} --resume\n" + yaml.safe_dump(values, sort_keys=False))


def _evaluate_stage(out: Path, preset: Preset, model: Path, progress: bool) -> Path:
    from trade_md.report import evaluate
    from trade_md.train import CHECKPOINT_NAME

    report = out / "report"
    summary, metrics = report / "summary.md", report / "metrics.json"
    temperatures = ", ".join(f"{t:g}" for t in preset.temperatures)
    if (summary.is_file() and metrics.is_file()
            and metrics.stat().st_mtime >= (model / CHECKPOINT_NAME).stat().st_mtime
            and read_json(metrics).get("n_samples") == preset.n_samples):
        _header(3, f"evaluation at {temperatures} K: complete ({report}), skipped")
        return summary
    _header(3, f"evaluation at {temperatures} K against the shipped reference: {preset.n_samples} samples each "
               f"-> {report}")
    result = evaluate(model, report, temperatures=preset.temperatures, n_samples=preset.n_samples,
                      progress=progress, on_warning=lambda note: print(f"      WARNING: {note}", flush=True))
    for m in result["per_temperature"]:
        reference = m["delta_f_kT"]["reference"]
        generator = m["delta_f_kT"]["generator"]
        print(f"      {m['temperature']:6g} K: ESS {100 * m['ess']:6.2f}%  ΔF "
              f"{'–' if generator is None else f'{generator:.2f}'} k_BT (reference "
              f"{'–' if reference is None else f'{reference:.2f}'})  JS {m.get('js_divergence') or float('nan'):.3f}",
              flush=True)
    return summary


def run_pipeline(
    out: str | Path = "runs/main", *, quick: bool = False, resume: bool = False, device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Run (or, with ``resume``, continue) the main job in ``out``; returns the path of ``summary.md``."""
    preset = QUICK if quick else FULL
    out = Path(out)
    _prepare(out, preset, resume)
    started = time.perf_counter()
    data = _md_stage(out, preset, progress)
    model = _train_stage(out, preset, data, device, progress)
    summary = _evaluate_stage(out, preset, model, progress)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return summary


def register_cli(subparsers: Any) -> None:
    """Add ``trade-md run``."""
    parser = subparsers.add_parser(
        "run", help="the main job: MD at 600 K -> TRADE over 280-1050 K -> evaluation -> report (alanine dipeptide)",
        description="Run the whole alanine-dipeptide study in --out, stage by stage (each stage is also its own "
                    "subcommand: md, train, evaluate). The default is the real result (40,000 TRADE steps: about a day "
                    "on a laptop CPU; use --device cuda on a GPU machine); --quick gives a first look in about a "
                    "minute.")
    parser.add_argument("--quick", action="store_true", help="tiny preset: 0.2 ns MD, small flow, 100 steps")
    parser.add_argument("--out", default="runs/main", help="run directory (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="skip complete stages and continue an interrupted one")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device of the training")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_main, command="run")


def _main(args: argparse.Namespace) -> int:
    summary = run_pipeline(args.out, quick=args.quick, resume=args.resume, device=args.device,
                           progress=not args.no_progress)
    sys.stdout.flush()
    print(f"report: {summary}")
    return 0
