"""Export a trained generator with its card: the model a built-in system ships, or one a user hands on.

:func:`export_model` writes ``checkpoint.pt`` (weights, generator and training config, system record, trained range,
step count; no optimiser or RNG state) and, when the source is a ``trade-md run`` directory, ``card.json`` (the
run's measured ESS, tail shape and ΔF per temperature, its cost and how it was made) and ``README.md`` (the same
for people). ``trade-md export RUN --out DIR`` is the command; ``systems/<name>/model/`` is where a built-in system's
shipped model lives (:func:`trade_md.systems.pretrained_model`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trade_md.errors import InputError
from trade_md.formats.checkpoint import CHECKPOINT_NAME, read_checkpoint
from trade_md.formats.files import atomic_write_path, json_safe, write_json_atomic

__all__ = ["CARD_FORMAT", "EXPORTED_KEYS", "export_model", "model_card"]

CARD_FORMAT = "trade-md model card/1"
EXPORTED_KEYS = ("format", "generator_config", "model_state", "system", "config", "trained_range", "step")
"""Checkpoint keys an exported model keeps (what sampling and ``init_from`` read)."""


def export_model(source: str | Path, out: str | Path, *, command: str | None = None) -> dict[str, Any]:
    """Write the model of ``source`` to ``out`` (``checkpoint.pt``, and with a run report ``card.json`` +
    ``README.md``); returns the card (sizes in bytes). source: a ``trade-md run`` directory (its transfer stage's
    model), a ``trade-md train`` directory or a checkpoint file. command: how the run was made, for the card
    (default: rebuilt from the run's options)."""
    source, out = Path(source), Path(out)
    checkpoint = read_checkpoint(source)                     # a run directory: its transfer stage's model
    missing = [key for key in EXPORTED_KEYS if key not in checkpoint and key not in ("trained_range", "step")]
    if missing:
        raise InputError(f"{source} lacks {', '.join(missing)}; export a checkpoint written by trade-md train or run")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(out / CHECKPOINT_NAME) as temp:
        torch.save({key: checkpoint[key] for key in EXPORTED_KEYS if key in checkpoint}, temp)
    n_parameters = sum(int(v.numel()) for v in checkpoint["model_state"].values() if isinstance(v, torch.Tensor))
    report_file = source / "report" / "report.json"
    report = json.loads(report_file.read_text()) if source.is_dir() and report_file.is_file() else None
    card = model_card(report, checkpoint, command=command)
    card.update({"size_bytes": (out / CHECKPOINT_NAME).stat().st_size, "parameters": n_parameters})
    card = json_safe(card)
    write_json_atomic(out / "card.json", card)
    with atomic_write_path(out / "README.md") as temp:
        temp.write_text(card_markdown(card))
    return card


def model_card(report: dict[str, Any] | None, checkpoint: dict[str, Any], *, command: str | None = None
               ) -> dict[str, Any]:
    """The card's facts: from the checkpoint (system, T0, trained range, steps, flow) and, when given, the
    ``trade-md run`` report (command, data, cost, self-check and reference comparison per temperature)."""
    config = checkpoint.get("generator_config", {})
    card: dict[str, Any] = {
        "format": CARD_FORMAT, "system": checkpoint["system"]["name"],
        "fingerprint": checkpoint["system"]["fingerprint"],
        "t0": config.get("reference_temperature"), "trained_range": checkpoint.get("trained_range"),
        "steps": int(checkpoint.get("step", 0)), "flow": config.get("flow"),
        "command": command, "data": None, "cost": None, "reference": None, "per_temperature": []}
    if report is None:
        return card
    card["command"] = command or _command(report)
    reference = report.get("reference")
    if reference and "systems/" in str(reference):                 # a built-in system's: where every checkout has it
        reference = "systems/" + str(reference).rsplit("systems/", 1)[1]
    card.update({"data": report["data"], "transfer": report["transfer"]["variant"], "cost": report["cost"],
                 "reference": reference, "stage_steps": {name: report["stages"][name]["steps"]
                                                         for name in ("boundary", "transfer")}})
    evaluation = {row["temperature"]: row for row in report.get("evaluation") or []}
    for row in report["self_check"]:
        entry = {"temperature": row["temperature"], "n_samples": row["n_samples"], "ess": row["ess"],
                 "pareto_k": row["pareto_k"], "delta_log_z": row["delta_log_z"],
                 "delta_log_z_reference": row["delta_log_z_reference"], "mean_energy": row["mean_energy"],
                 "delta_f_kT": None, "delta_f_kT_sem": None, "delta_f_kT_reference": None,
                 "delta_f_kT_reference_sem": None, "js_divergence": None}
        measured = evaluation.get(row["temperature"])
        if measured is not None:
            f_kt = measured["delta_f_kT"]
            entry.update({"delta_f_kT": f_kt.get("generator"), "delta_f_kT_sem": f_kt.get("generator_sem"),
                          "delta_f_kT_reference": f_kt.get("reference"),
                          "delta_f_kT_reference_sem": f_kt.get("reference_sem"),
                          "js_divergence": measured.get("js_divergence")})
        card["per_temperature"].append(entry)
    return card


def _command(report: dict[str, Any]) -> str:
    """The ``trade-md run`` command line of a report's options (the system by name)."""
    options = report["options"]
    parts = ["trade-md run", f"--system {report['system']['name']}"]
    for key, flag in (("budget", "--budget"), ("transfer", "--transfer"), ("seed", "--seed"), ("t0", "--t0")):
        if options.get(key) is not None:
            parts.append(f"{flag} {options[key]:g}" if isinstance(options[key], float) else f"{flag} {options[key]}")
    if options.get("quick"):
        parts.append("--quick")
    return " ".join(parts)


def _steps(card: dict[str, Any]) -> str:
    stages = card.get("stage_steps")
    if stages:
        return f"{stages['boundary']:,} boundary and {stages['transfer']:,} transfer optimiser steps"
    return f"{card['steps']:,} optimiser steps"


def _number(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown (the ``README.md`` beside the model)."""
    low, high = card["trained_range"] or (card["t0"], card["t0"])
    flow = card.get("flow") or {}
    lines = [f"# Trained generator: {card['system']}", "",
             f"A normalizing flow q(x | T) over conformations, T0 = {card['t0']:g} K, trained over {low:g}–{high:g} K "
             f"({_steps(card)}; {card['parameters']:,} parameters, {card['size_bytes'] / 1e6:.1f} MB"
             + (f"; {flow.get('n_layers')} layers × {flow.get('hidden')} hidden" if flow else "") + ").", "",
             "```bash", f"trade-md sample --system {card['system']} --temperature 350 --n 10000 --out samples/350",
             "```", "", "```python", "from trade_md.sampler import Sampler",
             f"with Sampler.from_pretrained({card['system']!r}) as sampler:",
             "    samples = sampler.sample(10000, 350.0)   # positions (nm), energies (kJ/mol), exact log-weights",
             "```", ""]
    if card["command"]:
        lines += ["## How it was made", "", f"`{card['command']}` on a 2-core laptop-class CPU"
                  + (f", then `trade-md export` into this directory." if card["cost"] else "."), ""]
    if card["data"]:
        data = card["data"]
        lines += [f"Training data: {data.get('source')}, {data.get('frames')} frames, "
                  f"{_number(data.get('ns'), '.3g')} ns of MD at T0 only. Transfer: `{card.get('transfer')}`.", ""]
    if card["cost"]:
        total = card["cost"]["total"]
        lines += [f"Cost: {total['wall_s'] / 60:.0f} min wall, {total['cpu_s'] / 60:.0f} min CPU, "
                  f"{total['energy_evaluations']:,} energy evaluations, {total['simulated_ns']:.3g} ns simulated.", ""]
    if card["per_temperature"]:
        lines += ["## Measured (the run's self-check and reference comparison)", "",
                  "| T/K | samples | Kish ESS % | tail k | ΔF k_BT | reference ΔF k_BT |", "|---|---|---|---|---|---|"]
        for row in card["per_temperature"]:
            reference = ("–" if row["delta_f_kT_reference"] is None else
                         f"{row['delta_f_kT_reference']:.2f} ± {_number(row['delta_f_kT_reference_sem'], '.2f')}")
            generator = ("–" if row["delta_f_kT"] is None else
                         f"{row['delta_f_kT']:.2f} ± {_number(row['delta_f_kT_sem'], '.2f')}")
            lines.append(f"| {row['temperature']:g} | {row['n_samples']:,} | {100 * row['ess']:.1f} | "
                         f"{row['pareto_k']:.2f} | {generator} | {reference} |")
        reference = "" if not card["reference"] else f"; reference: `{card['reference']}`"
        lines += ["", "ΔF: the free-energy difference between the φ basins (the system's reference README defines "
                  f"it){reference}. Tail k above 0.7 marks an ESS that a few samples decide.", ""]
    return "\n".join(lines)
