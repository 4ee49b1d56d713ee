"""The main job, ``trade-md run``: MD at 600 K → TRADE over 280–1050 K → evaluation → report, on alanine dipeptide.

Stages (each is also its own subcommand, and each writes into ``out``, default ``runs/main``):

1. ``data/``: Langevin MD at T0 = 600 K (:func:`trade_md.md.run_md`, as ``trade-md md``);
2. ``model/``: training with the built-in recipe ``alanine-dipeptide/trade`` (``systems/alanine_dipeptide/
   trade.yaml``) and the preset's changes (:func:`trade_md.train.train`; the effective config is written to
   ``train.yaml``, so ``trade-md train --config <out>/train.yaml --resume`` reruns the stage alone);
3. ``report/``: :func:`trade_md.analysis.evaluation.evaluate` at 300, 450, 600, 800, 1000 K against the shipped reference
   (``metrics.json``, figures, ``summary.md``).

``resume`` skips complete stages and continues an interrupted one (MD from its per-chunk checkpoints, training
from ``checkpoint.pt``). Messages go to ``say`` (the command line prints them; default: the module's logger).

Presets, with run times measured on the shared 2-core development CPU:

- ``quick``: a first look and the CI test (0.2 ns of MD, a 4-layer flow, 100 TRADE steps, 2,000 samples per
  temperature): about 40 s in all (MD 10 s, training 10 s, evaluation 15 s). Its numbers are not converged.
- ``full``: the real result. MD 30 ns (about 25 min on 2 cores); ``trade.yaml`` as shipped, 40,000 TRADE steps of
  the 12-layer flow at about 2 s per step plus 160 grid refreshes of about 20 s on a CPU core, i.e. about a day
  on a laptop CPU (``device="cuda"`` on a GPU machine); evaluation of 20,000 samples at each of the 5
  temperatures, about 15 s per temperature.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trade_md.config import TrainConfig, deep_merge, is_flat, load_recipe
from trade_md.config.files import builtin_recipe
from trade_md.errors import InputError
from trade_md.formats.checkpoint import CHECKPOINT_NAME, read_checkpoint
from trade_md.formats.dataset import load_dataset
from trade_md.formats.files import atomic_write_path, read_json, write_json_atomic
from trade_md.convergence import ConvergenceWarning
from trade_md.md import run_md
from trade_md.analysis.evaluation import evaluate
from trade_md.systems import builtin_config, load_system
from trade_md.train import train

__all__ = ["FULL", "PIPELINE_FORMAT", "QUICK", "Preset", "run_pipeline", "train_config"]

logger = logging.getLogger(__name__)

PIPELINE_FORMAT = "trade-md pipeline/1"
SYSTEM = "alanine-dipeptide"
RECIPE = f"{SYSTEM}/trade"
STAGES = ("MD", "training", "evaluation")


@dataclass(frozen=True)
class Preset:
    """Settings of one ``trade-md run`` preset.

    md_ns: total MD time (ns); md_equilibration_ps / md_frame_interval_ps: per replica (ps); md_replicas: None =
    one per CPU core; train: changes to the recipe (a nested config mapping, deep-merged); n_samples: evaluation
    samples per T.
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
    train={"schedule": {"steps": 100, "learning_rate": 2.0e-3},
           "objectives": {"nll": {"batch_size": 64}, "kl": {"batch_size": 32},
                          "trade": {"start": 30, "ramp": 40, "batch_size": 64}},
           "grid": {"nodes": 6, "samples": 128, "refresh_every": 25},
           "monitor": {"checkpoint_every": 25, "validate_every": 25},
           "flow": {"n_layers": 4, "hidden": 32, "n_hidden_layers": 1, "n_bins": 8, "seed": 0,
                    "thermal_scaling": True}},
)
"""A first look in a few minutes on a laptop CPU (and the CI test); its numbers are not converged."""

FULL = Preset(name="full", md_ns=30.0, md_equilibration_ps=100.0, md_frame_interval_ps=1.0, md_replicas=None,
              n_samples=20000)
"""The real result: ``trade.yaml`` as shipped (see the module docs for run times)."""


def train_config(preset: Preset, data: Path, model: Path, *, device: str = "cpu", progress: bool = True
                 ) -> TrainConfig:
    """The :class:`~trade_md.config.TrainConfig` of the training stage: ``trade.yaml`` + preset + paths."""
    values = deep_merge(load_recipe(builtin_recipe(RECIPE)), preset.train)
    values = deep_merge(values, {"data": {"path": str(data)}, "out": str(model), "device": device,
                                 "monitor": {"progress": progress}})
    return TrainConfig.from_dict(values, source=f"{RECIPE} with the {preset.name} preset")


def run_pipeline(
    out: str | Path = "runs/main", *, quick: bool = False, resume: bool = False, device: str = "cpu",
    progress: bool = True, say: Callable[[str], None] | None = None,
) -> Path:
    """Run (or, with ``resume``, continue) the main job in ``out``; returns the path of ``summary.md``.

    say: receives one line per stage and result (default: ``logging.info``).
    """
    preset = QUICK if quick else FULL
    out = Path(out)
    say = say or logger.info
    _prepare(out, preset, resume)
    started = time.perf_counter()
    data = _md_stage(out, preset, progress, say)
    model = _train_stage(out, preset, data, device, progress, say)
    summary = _evaluate_stage(out, preset, model, progress, say)
    say(f"done in {time.perf_counter() - started:.0f} s")
    return summary


def _settings(preset: Preset) -> dict[str, Any]:
    """The preset as JSON would give it back (tuples become lists), for comparisons with stored settings."""
    return json.loads(json.dumps(dataclasses.asdict(preset)))


def _prepare(out: Path, preset: Preset, resume: bool) -> None:
    record = out / "pipeline.json"
    if record.is_file():
        if not resume:
            raise InputError(f"{out} already holds a `trade-md run`; pass --resume to continue it, or choose another "
                             "--out")
        saved = read_json(record)
        settings = dict(saved.get("settings") or {})
        if is_flat(settings.get("train") or {}):        # written before the nested config: compare the rest
            settings["train"] = _settings(preset)["train"]
        if saved.get("preset") != preset.name or settings != _settings(preset):
            flag = "--quick" if saved.get("preset") == "quick" else "no --quick"
            raise InputError(f"{out} was started with the {saved.get('preset')!r} preset, not {preset.name!r}; "
                             f"resume with the same preset ({flag}) or choose another --out")
        return
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a `trade-md run` directory; choose another --out")
    write_json_atomic(record, {"format": PIPELINE_FORMAT, "preset": preset.name, "settings": _settings(preset)})


def _header(say: Callable[[str], None], index: int, text: str) -> None:
    say(f"[{index}/{len(STAGES)}] {text}")


def _md_stage(out: Path, preset: Preset, progress: bool, say: Callable[[str], None]) -> Path:
    data = out / "data"
    temperature = float(builtin_config(SYSTEM)["reference_temperature"])
    if (data / "run.json").is_file():
        dataset = load_dataset(data)
        _header(say, 1, f"MD at {temperature:g} K: complete ({len(dataset)} frames in {data}), skipped")
        return data
    resume = (data / "plan.json").is_file()
    _header(say, 1, f"MD at {temperature:g} K: {preset.md_ns:g} ns{' (resuming)' if resume else ''} -> {data}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        dataset = run_md(load_system(SYSTEM), temperature, data, ns=preset.md_ns, replicas=preset.md_replicas,
                         seed=0, frame_interval_ps=preset.md_frame_interval_ps,
                         equilibration_ps=preset.md_equilibration_ps, resume=resume, progress=progress)
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            say(f"      note: {warning.message}")
        else:
            warnings.warn(warning.message, stacklevel=2)
    say(f"      {len(dataset)} frames, mean potential energy {dataset.metadata['mean_potential_energy']:.1f} kJ/mol")
    return data


def _train_stage(out: Path, preset: Preset, data: Path, device: str, progress: bool,
                 say: Callable[[str], None]) -> Path:
    model = out / "model"
    config = train_config(preset, data, model, device=device, progress=progress)
    config_file = out / "train.yaml"
    with atomic_write_path(config_file) as temp:
        temp.write_text("# effective training config of `trade-md run`; rerun the stage alone with\n"
                        f"#   trade-md train --config {config_file} --resume\n"
                        + yaml.safe_dump(config.to_dict(), sort_keys=False))
    checkpoint = model / CHECKPOINT_NAME
    step = int(read_checkpoint(model)["step"]) if checkpoint.is_file() else 0
    low, high = config.trained_range
    span = f"{low:g}-{high:g} K"
    if step >= config.schedule.steps and (model / "summary.json").is_file():
        _header(say, 2, f"TRADE training over {span}: complete ({step} steps in {model}), skipped")
        return model
    _header(say, 2, f"TRADE training over {span}: {config.schedule.steps} steps"
                    f"{f' (resuming at step {step})' if step else ''} -> {model}")
    summary = train(config, resume=checkpoint.is_file()).summary
    say(f"      wrote {checkpoint}: {summary['step']} steps ({summary['skipped_steps']} skipped), "
        f"{summary['energy_evaluations']} energy evaluations")
    return model


def _evaluate_stage(out: Path, preset: Preset, model: Path, progress: bool, say: Callable[[str], None]) -> Path:
    report = out / "report"
    summary, metrics = report / "summary.md", report / "metrics.json"
    temperatures = ", ".join(f"{t:g}" for t in preset.temperatures)
    if (summary.is_file() and metrics.is_file()
            and metrics.stat().st_mtime >= (model / CHECKPOINT_NAME).stat().st_mtime
            and read_json(metrics).get("n_samples") == preset.n_samples):
        _header(say, 3, f"evaluation at {temperatures} K: complete ({report}), skipped")
        return summary
    _header(say, 3, f"evaluation at {temperatures} K against the shipped reference: {preset.n_samples} samples each "
                    f"-> {report}")
    result = evaluate(model, report, temperatures=preset.temperatures, n_samples=preset.n_samples,
                      progress=progress, on_warning=lambda note: say(f"      WARNING: {note}"))
    for m in result["per_temperature"]:
        reference = m["delta_f_kT"]["reference"]
        generator = m["delta_f_kT"]["generator"]
        say(f"      {m['temperature']:6g} K: ESS {100 * m['ess']:6.2f}%  ΔF "
            f"{'–' if generator is None else f'{generator:.2f}'} k_BT (reference "
            f"{'–' if reference is None else f'{reference:.2f}'})  JS {m.get('js_divergence') or float('nan'):.3f}")
    return summary
