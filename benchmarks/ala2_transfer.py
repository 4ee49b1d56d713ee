"""Alanine dipeptide temperature transfer: train TRADE from 600 K data only, evaluate at 300-1000 K against MBAR.

(A benchmark script of five subcommands, longer than a library module: each subcommand is short and they share
the report format.)

Steps (subcommands):

- ``train``: a run with the library :class:`trade_md.trainer.Trainer` from a recipe
  (``systems/alanine_dipeptide/trade.yaml``, or one of ``benchmarks/configs/``) with overrides (``--steps``,
  ``--set KEY=VALUE`` for a nested setting such as ``schedule.learning_rate`` or ``objectives.tilt.span``, or a
  flat key of the layout before the restructure such as ``learning_rate`` or ``tilt_weight``
  (:func:`trade_md.config.apply_flat_overrides`), ``--device``); ``--minutes`` is a wall-time budget: the loop
  stops at the budget and writes its checkpoint; with ``--fit-steps`` the cosine schedule is fitted to the steps the
  budget reaches (the trainer's ``schedule.minutes`` and ``schedule.fit_window``, timed over ``--fit-window``
  steps; ``--steps`` is then an upper bound). Writes
  ``<out>/checkpoint.pt``, ``<out>/summary.json`` (the Trainer's) and ``<out>/benchmark_train.json`` (wall time,
  steps, s/step, energy evaluations, machine).
- ``evaluate``: loads the checkpoint (:func:`trade_md.formats.checkpoint.load_generator`), draws ``--samples`` weighted samples
  at 300, 450, 600, 800 and 1000 K (:class:`trade_md.sampler.Sampler`, energies from
  :class:`trade_md.energy.EnergyBridge`) and reports per temperature: Kish ESS (%), ΔF = −k_B T ln(P(φ>0)/P(φ<0))
  in k_BT with a bootstrap error, its difference to the MBAR reference (k_BT and in combined standard errors),
  JS and KL divergences of the reweighted 36×36 Ramachandran histogram to the reference's, the fraction of
  wrong-chirality samples, the cis peptide-bond fractions (raw and reweighted) with their share of the squared
  weights; the ESS split by basin (φ sign × cis/trans of each peptide bond, :func:`trade_md.analysis.metrics.ess_by_stratum`:
  each basin's mass in q and p, its in-basin ESS and share of Σw²) and the ESS the same model would reach with
  every basin's mass exact (:func:`trade_md.analysis.metrics.ess_with_exact_masses`), which says whether a miss is the
  basins' weights or the shapes within them; the weights' tail shape (:func:`trade_md.analysis.metrics.pareto_k`: above
  0.7 one draw's ESS is unreliable); plus energy evaluations and wall time of training. Prints a table,
  writes JSON. ``--calibration FILE`` draws from the basin-calibrated proposal (:mod:`trade_md.basins`, made by
  ``trade-md calibrate``) instead of ``q(x | T)``; its energy evaluations are reported with it. ``--anneal
  LEVELS:STEPS:STEP_SIZE`` moves each draw of ``q(x | T)`` towards the Boltzmann density first (annealed importance
  sampling, :mod:`trade_md.annealing`); each temperature's ``energy_evaluations`` counts its cost.
- ``tilt``: what TRADE can reach from a boundary before any TRADE training: samples the model at T0 and reports,
  per temperature, the Kish ESS of the exact Boltzmann tilt q0 · exp(−(β − β0) U), TRADE's fixed point
  (:func:`trade_md.analysis.metrics.tilted_ess`), with the fraction of T0 samples the estimate rests on.
- ``export``: a copy of a checkpoint without optimiser state (smaller; still loads with ``load_generator``).
- ``history``: a run's training history (losses, validation NLL, ESS at each validation) and config as JSON.

Goals (issue 4): |ΔF − ΔF_ref| ≤ 0.2 k_BT at every temperature and ESS ≥ 20 % at 300 and 1000 K.

    python benchmarks/ala2_transfer.py train --out runs/ala2_transfer --minutes 30 --steps 6000
    python benchmarks/ala2_transfer.py evaluate --run runs/ala2_transfer --out benchmarks/results/ala2_transfer_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform as host
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trade_md.analysis.metrics import (  # noqa: E402
    bootstrap_delta_f,
    ess_by_stratum,
    ess_with_exact_masses,
    js_divergence,
    kish_ess,
    kl_divergence,
    ramachandran_histogram,
    tilted_ess,
)
from trade_md.annealing import Annealing  # noqa: E402
from trade_md.basins import BasinCalibration  # noqa: E402
from trade_md.config import TrainConfig, apply_flat_overrides, deep_merge, load_recipe  # noqa: E402
from trade_md.config.legacy import FLAT_KEYS  # noqa: E402
from trade_md.energy import EnergyBridge  # noqa: E402
from trade_md.errors import InputError  # noqa: E402
from trade_md.features import cis_flags, peptide_bonds, ramachandran  # noqa: E402
from trade_md.formats.checkpoint import (  # noqa: E402
    CHECKPOINT_NAME,
    SystemRecord,
    load_generator,
    read_checkpoint,
)
from trade_md.formats.dataset import load_dataset  # noqa: E402
from trade_md.formats.files import atomic_write_path, write_json_atomic  # noqa: E402
from trade_md.cli.sample import parse_mixture  # noqa: E402
from trade_md.sampler import Sampler  # noqa: E402
from trade_md.thermo import kT  # noqa: E402
from trade_md.train import generator_for  # noqa: E402
from trade_md.trainer import Trainer  # noqa: E402

DEFAULT_CONFIG = REPO / "systems" / "alanine_dipeptide" / "trade.yaml"
DEFAULT_REFERENCE = REPO / "systems" / "alanine_dipeptide" / "reference" / "summary.json"
EVAL_TEMPERATURES = (300.0, 450.0, 600.0, 800.0, 1000.0)
GOAL_DELTA_F_KT = 0.2
GOAL_ESS = 0.20
GOAL_ESS_TEMPERATURES = (300.0, 1000.0)


def machine_info() -> dict[str, Any]:
    """Host, CPU, threads, GPU and library versions of this process."""
    info: dict[str, Any] = {
        "host": host.node(),
        "platform": host.platform(),
        "processor": host.processor() or host.machine(),
        "cpu_count": os.cpu_count(),
        "python": host.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import openmm

        info["openmm"] = openmm.__version__
    except ImportError:
        info["openmm"] = None
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        info["cpu_model"] = None
    return info


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig: the recipe file, then ``--set KEY=VALUE`` pairs (a nested setting ``a.b.c``, or a flat key
    of the layout before the restructure), then the explicit flags."""
    values = load_recipe(args.config)
    for item in args.set or ():
        if "=" not in item:
            raise InputError(f"--set {item!r} is not KEY=VALUE; e.g. --set grid.samples=1000")
        key, text = (part.strip() for part in item.split("=", 1))
        value = _parse_value(text)
        if "." in key or key not in FLAT_KEYS:
            for part in reversed(key.split(".")):
                value = {part: value}
            values = deep_merge(values, value)
        else:
            values = apply_flat_overrides(values, {key: value}, source=f"--set {key}")
    flags = {"device": args.device, "seed": args.seed, "out": args.out}
    values = deep_merge(values, {key: value for key, value in flags.items() if value is not None})
    if args.steps is not None:
        values = deep_merge(values, {"schedule": {"steps": args.steps}})
    if args.data is not None:
        values = deep_merge(values, {"data": {"path": args.data}})
    values = deep_merge(values, {"monitor": {"progress": False}})
    return TrainConfig.from_dict(values, source=f"{args.config} + overrides")


# ------------------------------------------------------------------------------------------------------ train


def train(args: argparse.Namespace) -> int:
    """Run (or resume) training under a wall-time budget; see the module docs. The budget and the fit of the
    schedule to it are the trainer's (``schedule.minutes``, ``schedule.fit_window``)."""
    torch.set_num_threads(args.threads)
    wall_start = time.time()
    config = build_config(args)
    if args.minutes is not None:
        config = config.updated({"schedule": {"minutes": args.minutes,
                                              "fit_window": args.fit_window if args.fit_steps else 0}})
    dataset = load_dataset(config.data.path)
    config = config.updated({"temperatures": {"reference": float(dataset.temperature)}})
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    record = SystemRecord.of(dataset.system)
    checkpoint = None
    if (out / CHECKPOINT_NAME).exists():
        if not args.resume:
            raise InputError(f"{out} already holds a checkpoint; pass --resume or choose another --out")
        checkpoint = read_checkpoint(out)
    generator = generator_for(dataset, config, checkpoint)
    positions = torch.as_tensor(dataset.positions, dtype=torch.float64)
    info_path = out / "benchmark_train.json"
    previous = json.loads(info_path.read_text()) if checkpoint is not None and info_path.exists() else {}
    info: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": machine_info(),
        "config": config.to_dict(),
        "budget_minutes": args.minutes,
        "previous_sessions": previous.get("previous_sessions", []) + ([previous["session"]] if previous else []),
    }
    if checkpoint is not None and not previous and args.prior_seconds:
        # an earlier session that was stopped before it wrote benchmark_train.json: its wall time, as given
        info["previous_sessions"] = [{"seconds": args.prior_seconds, "last_step": int(checkpoint["step"]),
                                      "energy_evaluations": int(checkpoint["energy_evaluations"]),
                                      "note": "interrupted session; seconds from --prior-seconds"}]
    print(f"[train] {out}: steps {config.schedule.steps}, budget {args.minutes} min, device {config.device}, flow "
          f"{config.flow}", flush=True)
    last_print = [time.perf_counter()]

    def report(trainer: Trainer, terms: dict[str, float]) -> None:
        now = time.perf_counter()
        if now - last_print[0] < args.print_every:
            return
        last_print[0] = now
        shown = {k: v for k, v in (trainer.history[-1] if trainer.history else {}).items()
                 if k.startswith(("ess", "val"))}
        print(f"[train] step {trainer.step}/{trainer.stop.total_steps}  "
              + "  ".join(f"{k} {v:.4g}" for k, v in terms.items())
              + ("  |  " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()) if shown else ""), flush=True)

    with EnergyBridge(dataset.system, n_workers=config.energy.workers, platform=config.energy.platform) as bridge:
        trainer = Trainer(generator, config, record, potential=bridge.potential, data=positions, out=out)
        if checkpoint is not None:
            trainer.load_state(checkpoint, f"checkpoint {out}")
        start_step, start_evals = trainer.step, trainer.energy_evaluations
        summary = trainer.run(callback=report)
        platform_name = bridge.platform_name
    seconds = summary["seconds"]
    session = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_start)),
        "seconds": seconds,
        "steps_run": trainer.step - start_step,
        "first_step": start_step,
        "last_step": trainer.step,
        "seconds_per_step": seconds / max(trainer.step - start_step, 1),
        "seconds_per_refresh": summary["seconds_per_refresh"],
        "energy_evaluations": trainer.energy_evaluations - start_evals,
        "energy_platform": platform_name,
        "stopped_by": summary["stopped_by"],
        "fitted_steps": summary["fitted_steps"],
    }
    info["session"] = session
    all_sessions = info["previous_sessions"] + [session]
    info["total"] = {
        "seconds": sum(s["seconds"] for s in all_sessions),
        "steps": trainer.step,
        "energy_evaluations": trainer.energy_evaluations,
        "skipped_steps": trainer.skipped_steps,
    }
    write_json_atomic(info_path, info)
    print(f"[train] done: step {trainer.step} ({summary['stopped_by']}), {seconds:.0f} s, "
          f"{session['seconds_per_step']:.3f} s/step, {trainer.energy_evaluations} energy evaluations", flush=True)
    return 0


# --------------------------------------------------------------------------------------------------- evaluate


def basin_labels(phi: np.ndarray, cis: np.ndarray) -> np.ndarray:
    """``[n]`` basin names ``"phi<0 trans/trans"`` ... ``"phi>0 cis/cis"`` from φ ``[n]`` rad and the two peptide
    bonds' cis flags ``[n, 2]`` (ACE-ALA, ALA-NME)."""
    sign = np.where(phi > 0, "phi>0", "phi<0")
    bonds = [np.where(cis[:, k], "cis", "trans") for k in range(2)]
    return np.char.add(np.char.add(np.char.add(sign, " "), np.char.add(bonds[0], "/")), bonds[1])


def _number(value: float | None) -> float:
    """A summary entry as a float (the summaries write non-finite estimates as null: NaN here)."""
    return math.nan if value is None else float(value)


def reference_at(reference: dict[str, Any], temperature: float) -> dict[str, Any]:
    """The MBAR reference entries at one temperature (must be one of the reference's temperatures)."""
    temperatures = np.asarray(reference["temperatures"], dtype=np.float64)
    index = int(np.argmin(np.abs(temperatures - temperature)))
    if abs(temperatures[index] - temperature) > 1e-6:
        raise InputError(f"the reference has no estimate at {temperature} K (it has {temperatures.tolist()})")
    return {
        "delta_f_kT": _number(reference["delta_f_kT"][index]),
        "delta_f_sem_kT": _number(reference["delta_f_sem_kT"][index]),
        "p_phi_positive": _number(reference["p_phi_positive"][index]),
        "mean_energy": _number(reference["mean_energy"][index]),
        "mean_energy_sem": _number(reference["mean_energy_sem"][index]),
        "ramachandran": np.asarray(reference["ramachandran"][index], dtype=np.float64),
    }


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained run against the MBAR reference; see the module docs."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mixture_ratios = parse_mixture(args.mixture_ratio, option="--mixture-ratio")
    model = load_generator(args.run, device=args.device)
    generator, system = model.generator, model.system
    t_0 = generator.reference_temperature
    calibration = None if args.calibration is None else BasinCalibration.load(args.calibration)
    annealing = None if args.anneal is None else Annealing.parse(args.anneal)
    checkpoint = read_checkpoint(args.run)
    reference = json.loads(Path(args.reference).read_text())
    train_info_path = Path(args.run) / "benchmark_train.json"
    train_info = json.loads(train_info_path.read_text()) if train_info_path.exists() else None
    results = []
    with EnergyBridge(system, n_workers=args.energy_workers, platform=args.platform) as bridge:
        sampler = Sampler(generator, bridge.energies,
                          temperature_range=model.trained_range or (t_0, t_0),
                          topology=system.topology, calibration=calibration)
        for temperature in args.temperatures:
            t0 = time.perf_counter()
            torch.manual_seed(args.seed + int(temperature))
            mixture = [(ratio * temperature, fraction) for ratio, fraction in mixture_ratios]
            samples = sampler.sample(args.samples, temperature, batch_size=args.batch_size, progress=False,
                                     mixture=mixture, annealing=annealing)
            phi, psi = ramachandran(system.topology, samples.positions)
            weights = samples.weights
            ref = reference_at(reference, temperature)
            delta_f, delta_f_err = bootstrap_delta_f(phi, temperature, samples.log_weights,
                                                     n_bootstrap=args.bootstrap, seed=args.seed)
            delta_f_kt, err_kt = delta_f / kT(temperature), delta_f_err / kT(temperature)
            combined = math.hypot(err_kt, ref["delta_f_sem_kT"])
            diff = delta_f_kt - ref["delta_f_kT"]
            histogram = ramachandran_histogram(phi, psi, weights)
            raw_histogram = ramachandran_histogram(phi, psi)
            finite = np.isfinite(samples.log_weights)
            energies = np.where(finite, samples.energies, 0.0)
            mean_energy = float(np.sum(weights * energies))  # self-normalised IS; its delta-method standard error:
            mean_energy_err = float(np.sqrt(np.sum(weights**2 * (energies - mean_energy) ** 2)))
            cis = cis_flags(samples.positions, peptide_bonds(system.topology))
            strata = ess_by_stratum(samples.log_weights, basin_labels(phi, cis))
            entry = {
                "temperature_K": temperature,
                "n_samples": len(samples),
                "mixture": [list(component) for component in samples.mixture],
                "basin_calibrated": samples.calibrated,
                "annealing_acceptance": None if samples.acceptance is None else samples.acceptance.tolist(),
                "energy_evaluations": len(samples) * (1 if annealing is None else annealing.energies_per_sample),
                "ess_percent": 100.0 * samples.ess,
                "ess_samples": samples.ess * len(samples),
                "pareto_k": samples.pareto_k,
                "delta_f_kT": delta_f_kt,
                "delta_f_err_kT": err_kt,
                "delta_f_ref_kT": ref["delta_f_kT"],
                "delta_f_ref_sem_kT": ref["delta_f_sem_kT"],
                "delta_f_diff_kT": diff,
                "delta_f_diff_sigma": diff / combined if combined > 0 else math.inf,
                "p_phi_positive": float(weights[phi > 0].sum()),
                "p_phi_positive_unweighted": float(np.mean(phi > 0)),
                "p_phi_positive_ref": ref["p_phi_positive"],
                "js_nats": js_divergence(histogram, ref["ramachandran"]),
                "kl_ref_to_model_nats": kl_divergence(ref["ramachandran"], histogram),
                "kl_model_to_ref_nats": kl_divergence(histogram, ref["ramachandran"]),
                "js_unweighted_nats": js_divergence(raw_histogram, ref["ramachandran"]),
                "cis_fraction_unweighted": cis.mean(axis=0).tolist(),
                "cis_fraction": (weights @ cis).tolist(),
                "cis_share_of_sum_w2": float(np.sum(weights**2 * cis.any(axis=1)) / np.sum(weights**2)),
                "ess_exact_masses_percent": 100.0 * ess_with_exact_masses(strata),
                "basins": [dataclasses.asdict(stratum) for stratum in strata],
                "wrong_chirality_fraction": float(np.mean(samples.wrong_chirality)),
                "dropped_fraction": float(np.mean(~finite)),
                "mean_energy_kj_per_mol": mean_energy,
                "mean_energy_err_kj_per_mol": mean_energy_err,
                "mean_energy_ref_kj_per_mol": ref["mean_energy"],
                "mean_energy_ref_sem_kj_per_mol": ref["mean_energy_sem"],
                "seconds": time.perf_counter() - t0,
            }
            entry["goal_delta_f_met"] = bool(abs(diff) <= GOAL_DELTA_F_KT)
            if temperature in GOAL_ESS_TEMPERATURES:
                entry["goal_ess_met"] = bool(samples.ess >= GOAL_ESS)
            results.append(entry)
            print(f"[evaluate] {temperature:g} K done in {entry['seconds']:.1f} s", flush=True)
        platform_name = bridge.platform_name
    # a goal is None ("not evaluated") unless every temperature it names was evaluated
    evaluated = {r["temperature_K"] for r in results}
    goals = {
        "delta_f_within_0.2kT_all": (all(r["goal_delta_f_met"] for r in results)
                                     if set(EVAL_TEMPERATURES) <= evaluated else None),
        "ess_20pct_at_300_and_1000": (all(r["goal_ess_met"] for r in results if "goal_ess_met" in r)
                                      if set(GOAL_ESS_TEMPERATURES) <= evaluated else None),
    }
    report = {
        "benchmark": "ala2_transfer",
        "command": " ".join(sys.argv),
        "machine": machine_info(),
        "run": str(args.run),
        "reference": str(args.reference),
        "reference_run": reference.get("run", {}).get("command"),
        "evaluation": {"samples_per_temperature": args.samples, "bootstrap": args.bootstrap, "seed": args.seed,
                       "mixture_ratios": [list(c) for c in mixture_ratios],
                       "annealing": None if annealing is None else {
                           **dataclasses.asdict(annealing), "energies_per_sample": annealing.energies_per_sample},
                       "calibration": None if calibration is None else {
                           "file": str(args.calibration), "temperatures_K": calibration.temperatures,
                           "samples_per_temperature": calibration.samples_per_temperature,
                           "energy_evaluations": calibration.energy_evaluations,
                           "features": [feature.name for feature in calibration.features]},
                       "energy_platform": platform_name, "seconds": time.perf_counter() - start,
                       "ramachandran_bins": "36x36 equal bins on [-pi, pi)^2, rows phi, columns psi",
                       "delta_f": "F(phi>0) - F(phi<0) = -ln(P(phi>0)/P(phi<0)) in k_BT, reweighted samples; "
                                  "error: bootstrap standard error; sigma: diff / sqrt(err^2 + ref_sem^2)",
                       "dropped": "wrong-chirality and non-finite-energy samples get weight 0"},
        "training": {
            "config": model.config,
            "steps": int(checkpoint["step"]),
            "skipped_steps": int(checkpoint["skipped_steps"]),
            "energy_evaluations": int(checkpoint["energy_evaluations"]),
            "wall_seconds": None if train_info is None else train_info["total"]["seconds"],
            "seconds_per_step": None if train_info is None else train_info["session"]["seconds_per_step"],
            "command": None if train_info is None else train_info["command"],
            "machine": None if train_info is None else train_info["machine"],
            "n_parameters": sum(p.numel() for p in generator.parameters()),
        },
        "goals": goals,
        "results": results,
    }
    print_table(report)
    if args.out:
        write_json_atomic(Path(args.out), report)
        print(f"[evaluate] wrote {args.out}")
    return 0


def _percent_pair(fractions: list[float] | None) -> str:
    """``"a.aa/b.bb"`` percent of a two-bond fraction list (reports written before the cis fields: ``"-"``)."""
    return f"{'-':>11}" if fractions is None else f"{100 * fractions[0]:5.2f}/{100 * fractions[1]:5.2f}"


def _energy_difference(result: dict[str, Any]) -> str:
    """``"dU +-"`` in kJ/mol of one result (reports written before the reference energies: ``"-"``)."""
    if "mean_energy_ref_kj_per_mol" not in result:
        return f"{'-':>6} {'-':>5}"
    error = math.hypot(result["mean_energy_err_kj_per_mol"], result["mean_energy_ref_sem_kj_per_mol"])
    return f"{result['mean_energy_kj_per_mol'] - result['mean_energy_ref_kj_per_mol']:6.2f} {error:5.2f}"


def print_table(report: dict[str, Any]) -> None:
    """The per-temperature table of an evaluation report."""
    training = report["training"]
    wall = training["wall_seconds"]
    print(f"training: {training['steps']} steps, {training['energy_evaluations']:,} energy evaluations, "
          f"wall {'?' if wall is None else f'{wall:.0f} s'}")
    annealing = report["evaluation"].get("annealing")
    if annealing:
        print(f"drawn by annealed importance sampling: {annealing['levels']} levels x {annealing['steps']} steps of "
              f"{annealing['step_size']:g}, {annealing['energies_per_sample']} energy evaluations per sample")
    header = (f"{'T/K':>6} {'ESS%':>7} {'dF/kT':>7} {'+-':>5} {'ref':>6} {'+-':>5} {'diff':>6} {'sigma':>6} "
              f"{'JS':>7} {'KL(r|m)':>8} {'wrongchi':>8} {'cis% q':>11} {'cis% p':>11} {'cis w2':>6} {'ESS%m':>6} "
              f"{'k':>5} {'dU':>6} {'+-':>5}")
    print(header)
    for r in report["results"]:
        print(f"{r['temperature_K']:6.0f} {r['ess_percent']:7.2f} {r['delta_f_kT']:7.3f} {r['delta_f_err_kT']:5.2f} "
              f"{r['delta_f_ref_kT']:6.3f} {r['delta_f_ref_sem_kT']:5.2f} {r['delta_f_diff_kT']:6.2f} "
              f"{r['delta_f_diff_sigma']:6.2f} {r['js_nats']:7.4f} {r['kl_ref_to_model_nats']:8.4f} "
              f"{r['wrong_chirality_fraction']:8.4f} {_percent_pair(r.get('cis_fraction_unweighted'))} "
              f"{_percent_pair(r.get('cis_fraction'))} {r.get('cis_share_of_sum_w2', math.nan):6.3f} "
              f"{r.get('ess_exact_masses_percent', math.nan):6.2f} {r.get('pareto_k', math.nan):5.2f} "
              f"{_energy_difference(r)}")
    print("cis% q / p: cis ACE-ALA / ALA-NME peptide bonds among the samples / reweighted to Boltzmann; cis w2: "
          "their share of the sum of squared weights; ESS%m: the ESS with every basin's (phi sign x cis/trans) "
          "mass exact; k: tail shape of the weights (trade_md.analysis.metrics.pareto_k; above 0.7 one draw's ESS is "
          "unreliable); dU: the weighted <U> minus the reference's, kJ/mol, +- both errors combined")
    labels = {True: "MET", False: "MISSED", None: "not evaluated"}
    print("goals:", ", ".join(f"{k} {labels[v]}" for k, v in report["goals"].items()))


# ----------------------------------------------------------------------------------------------------- export


def tilt(args: argparse.Namespace) -> int:
    """Print and write the ESS of the exact tilt of the model at T0 (TRADE's fixed point) at each temperature."""
    torch.set_num_threads(args.threads)
    model = load_generator(args.run)
    generator, system = model.generator, model.system
    t0 = generator.reference_temperature
    with EnergyBridge(system, n_workers=args.energy_workers, platform=args.platform) as bridge:
        sampler = Sampler(generator, bridge.energies, temperature_range=model.trained_range or (t0, t0),
                          topology=system.topology)
        torch.manual_seed(args.seed)
        samples = sampler.sample(args.samples, t0, batch_size=args.batch_size, progress=False)
    rows = [{"temperature_K": t0, "ess_percent": 100.0 * kish_ess(samples.log_weights), "support_percent": 100.0}]
    for temperature in args.temperatures:
        if math.isclose(temperature, t0):
            continue
        ess, support = tilted_ess(samples.log_weights, samples.energies, t0, temperature)
        rows.append({"temperature_K": temperature, "ess_percent": 100.0 * ess, "support_percent": 100.0 * support})
    print(f"exact tilt of the T0 = {t0:.0f} K model ({args.samples} samples): ESS % (support %)")
    for row in rows:
        print(f"  {row['temperature_K']:6.0f} K  {row['ess_percent']:7.2f}  ({row['support_percent']:.3g})")
    if args.out:
        write_json_atomic(Path(args.out), {"run": str(args.run), "samples": args.samples, "seed": args.seed,
                                           "machine": machine_info(), "rows": rows})
    return 0


def export(args: argparse.Namespace) -> int:
    """Copy a checkpoint without optimiser state and training history (for transport); loads with load_generator."""
    checkpoint = read_checkpoint(args.run)
    checkpoint["optimizer_state"] = {}
    checkpoint["history"] = checkpoint["history"][-5:]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(out / CHECKPOINT_NAME) as temp:
        torch.save(checkpoint, temp)
    for name in ("benchmark_train.json", "summary.json"):
        source = Path(args.run) / name
        if source.exists():
            with atomic_write_path(out / name) as temp:
                temp.write_text(source.read_text())
    print(f"[export] {out / CHECKPOINT_NAME}: {(out / CHECKPOINT_NAME).stat().st_size / 1e6:.2f} MB")
    return 0


def history(args: argparse.Namespace) -> int:
    """Write a run's training history (validation NLL, ESS, losses per validation step) and config as JSON."""
    checkpoint = read_checkpoint(args.run)
    record = {
        "run": str(args.run),
        "step": int(checkpoint["step"]),
        "energy_evaluations": int(checkpoint["energy_evaluations"]),
        "config": checkpoint["config"],
        "history": checkpoint["history"],
    }
    write_json_atomic(Path(args.out), record)
    print(f"[history] {args.out}: {len(record['history'])} entries up to step {record['step']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("train", help="train TRADE (wall-time budget, resume)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe YAML (trade_md.config.TrainConfig)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting (YAML value): nested (schedule.learning_rate) or a flat key of the "
                        "layout before the restructure (learning_rate)")
    p.add_argument("--steps", type=int, help="total optimiser steps (cosine schedule length)")
    p.add_argument("--minutes", type=float,
                   help="wall-time budget of the run, resumed sessions included (schedule.minutes); stops there and "
                        "writes the checkpoint")
    p.add_argument("--out", default="runs/ala2_transfer", help="run directory")
    p.add_argument("--data", help="dataset directory (default: the config's)")
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--print-every", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--fit-steps", action="store_true",
                   help="with --minutes: after --fit-window steps, fit the schedule's length to the budget (the "
                        "trainer's schedule.fit_window)")
    p.add_argument("--fit-window", type=int, default=30, help="steps timed for --fit-steps")
    p.add_argument("--prior-seconds", type=float, default=0.0,
                   help="with --resume: wall seconds of an earlier session that left no benchmark_train.json")
    p.set_defaults(func=train)
    p = sub.add_parser("evaluate", help="evaluate a run against the MBAR reference")
    p.add_argument("--run", default="runs/ala2_transfer", help="run directory with checkpoint.pt")
    p.add_argument("--out", help="JSON report path")
    p.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="MBAR reference summary.json")
    p.add_argument("--samples", type=int, default=20000, help="samples per temperature")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(EVAL_TEMPERATURES))
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--platform", default="Reference", help="OpenMM platform of the energies")
    p.add_argument("--energy-workers", type=int, default=1)
    p.add_argument("--mixture-ratio", action="append", default=[], metavar="R:F",
                   help="defensive mixture component at R times each target temperature with fraction F "
                        "(repeatable; trade_md.sampler); default: q(x | T) alone")
    p.add_argument("--anneal", metavar="LEVELS:STEPS:STEP_SIZE",
                   help="annealed importance sampling from q(x | T) (trade_md.annealing), e.g. 10:2:0.03")
    p.add_argument("--calibration", help="basin calibration JSON of this run (`trade-md calibrate`): draw from the "
                                         "basin-calibrated proposal")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=evaluate)
    p = sub.add_parser("tilt", help="ESS of the exact tilt of the T0 model (TRADE's fixed point)")
    p.add_argument("--run", required=True, help="run directory with checkpoint.pt (a boundary)")
    p.add_argument("--out", help="JSON report path")
    p.add_argument("--samples", type=int, default=200000, help="model samples at T0")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(EVAL_TEMPERATURES))
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--platform", default="Reference", help="OpenMM platform of the energies")
    p.add_argument("--energy-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=tilt)
    p = sub.add_parser("export", help="checkpoint without optimiser state")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, help="directory for the stripped checkpoint.pt")
    p.set_defaults(func=export)
    p = sub.add_parser("history", help="a run's training history as JSON")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, help="JSON path")
    p.set_defaults(func=history)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
