"""The flat training config of trade-md before the restructure (56 keys, ``mode: trade``, ``tilt_weight: 1.0``,
...) and its conversion to the nested layout (:class:`trade_md.config.TrainConfig`).

Checkpoints written before the change hold the flat dict in ``config``; flat YAML files and ``--set KEY=VALUE``
overrides with flat keys still work. :data:`FLAT_KEYS` maps every flat key to its default and to the nested
setting(s) it became: shared keys fan out (``kl_batch_size`` is the batch size of ``kl``, ``kl_range`` and
``tilt``; ``trade_start`` and ``trade_ramp`` the schedule of every term that acts away from T0), and a term is in
``objectives`` exactly when its flat weight is not 0. A flat mode ``nll`` trained the NLL alone at weight 1.
"""

from __future__ import annotations

import copy
from typing import Any

from trade_md.errors import InputError

__all__ = ["FLAT_KEYS", "apply_flat_overrides", "is_flat", "nested_from_flat", "nested_name"]

_AWAY = ("trade", "kl_range", "tilt", "reweighted_nll")
"""The objectives that share the flat TRADE schedule (trade_start, trade_ramp)."""

FLAT_KEYS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "mode": ("nll", ("mode",)),
    "data": (None, ("data.path",)),
    "out": (None, ("out",)),
    "reference_temperature": (None, ("temperatures.reference",)),
    "temperature_min": (None, ("temperatures.range",)),
    "temperature_max": (None, ("temperatures.range",)),
    "validation_fraction": (0.1, ("data.validation_fraction",)),
    "data_stride": (1, ("data.stride",)),
    "init_from": (None, ("init_from",)),
    "steps": (20000, ("schedule.steps",)),
    "batch_size": (256, ("objectives.nll.batch_size", "objectives.reweighted_nll.batch_size")),
    "learning_rate": (1e-3, ("schedule.learning_rate",)),
    "lr_schedule": ("cosine", ("schedule.lr_schedule",)),
    "lr_final_fraction": (0.05, ("schedule.lr_final_fraction",)),
    "grad_clip": (1.0, ("schedule.grad_clip",)),
    "trainable": ("all", ("trainable",)),
    "seed": (0, ("seed",)),
    "device": ("cpu", ("device",)),
    "dtype": ("float32", ("dtype",)),
    "nll_weight": (1.0, ("objectives.nll.weight",)),
    "kl_weight": (0.0, ("objectives.kl.weight",)),
    "kl_range_weight": (0.0, ("objectives.kl_range.weight",)),
    "tilt_weight": (0.0, ("objectives.tilt.weight",)),
    "fkl_range_weight": (0.0, ()),
    "reweighted_nll_weight": (0.0, ("objectives.reweighted_nll.weight",)),
    "kl_range_span": (None, ("objectives.kl_range.span",)),
    "tilt_span": (None, ("objectives.tilt.span",)),
    "fkl_range_span": (None, ()),
    "reweighted_nll_span": (None, ("objectives.reweighted_nll.span",)),
    "kl_batch_size": (256, ("objectives.kl.batch_size", "objectives.kl_range.batch_size",
                            "objectives.tilt.batch_size")),
    "trade_weight": (1.0, ("objectives.trade.weight",)),
    "trade_start": (0, tuple(f"objectives.{name}.start" for name in _AWAY)),
    "trade_ramp": (2000, tuple(f"objectives.{name}.ramp" for name in _AWAY)),
    "expectation": ("centred", ("objectives.trade.expectation",)),
    "trade_temperatures": (16, ("objectives.trade.temperatures_per_step", "objectives.tilt.temperatures_per_step",
                                "objectives.reweighted_nll.temperatures_per_step")),
    "trade_batch_size": (256, ("objectives.trade.batch_size",)),
    "residual_from_model": (0.5, ("objectives.trade.from_model",)),
    "residual_from_reference": (0.25, ("objectives.trade.from_reference",)),
    "residual_from_data": (0.25, ("objectives.trade.from_data",)),
    "huber_delta": (1.0, ("objectives.trade.huber_delta",)),
    "causality_epsilon": (0.1, ("objectives.trade.causality_epsilon",)),
    "grid_nodes": (26, ("grid.nodes",)),
    "grid_samples": (2000, ("grid.samples",)),
    "grid_refresh_every": (250, ("grid.refresh_every",)),
    "grid_decay": (0.5, ("grid.decay",)),
    "loss_momentum": (0.9, ("grid.loss_momentum",)),
    "energy_cap": (1000.0, ("energy.cap",)),
    "trade_energy_cap": (None, ("objectives.trade.energy_cap", "objectives.tilt.energy_cap")),
    "flow": ({}, ("flow",)),
    "energy_workers": (1, ("energy.workers",)),
    "energy_platform": ("auto", ("energy.platform",)),
    "checkpoint_every": (1000, ("monitor.checkpoint_every",)),
    "validate_every": (500, ("monitor.validate_every",)),
    "ess_samples": (2000, ("monitor.ess_samples",)),
    "progress_temperatures": ((), ("monitor.progress_temperatures",)),
    "progress": (True, ("monitor.progress",)),
}
"""Every flat key: ``(default, nested settings it sets)``."""

_WEIGHTS = {f"{name}_weight": name for name in ("nll", "kl", "trade", "kl_range", "tilt", "reweighted_nll")}
_REMOVED = {"fkl_range_weight": "the forward range KL (fkl_range) was removed: it never gave a positive result "
                                "(benchmarks/results/HISTORY.md, ala2_pt/)"}
_CHECKPOINT_DEFAULTS: dict[str, Any] = {"expectation": "grid"}
"""Values of flat keys for checkpoints written before the key existed (the behaviour of that code)."""
_NESTED_TOP = frozenset({"base", "mode", "out", "seed", "device", "dtype", "init_from", "trainable", "temperatures",
                         "data", "flow", "schedule", "objectives", "grid", "energy", "monitor"})


def is_flat(values: dict[str, Any]) -> bool:
    """Whether a config mapping has the flat layout (a flat-only key, or ``data`` given as a path)."""
    return isinstance(values.get("data"), str) or any(key in FLAT_KEYS and key not in _NESTED_TOP for key in values)


def nested_name(key: str) -> str:
    """The nested setting(s) a flat key became, for messages (``"tilt_weight"`` -> ``"objectives.tilt.weight"``)."""
    paths = FLAT_KEYS[key][1] if key in FLAT_KEYS else ()
    if key in ("temperature_min", "temperature_max"):
        return "temperatures.range: [T_min, T_max]"
    return " and ".join(paths) if paths else f"nothing ({_REMOVED.get(key, 'removed')})"


def nested_from_flat(values: dict[str, Any], source: str = "config", *, checkpoint: bool = False) -> dict[str, Any]:
    """The nested config mapping of a flat one (keys absent from ``values`` take their flat defaults; for a
    ``checkpoint``, keys added later take the value the older code behaved with). Unknown keys raise
    :class:`InputError` naming them."""
    unknown = sorted(set(values) - set(FLAT_KEYS))
    if unknown:
        raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(FLAT_KEYS))}"
                         " (or the nested layout, see trade_md.config)")
    flat = {key: copy.deepcopy(default) for key, (default, _) in FLAT_KEYS.items()}
    flat.update(_CHECKPOINT_DEFAULTS if checkpoint else {})
    flat.update(values)
    nested = apply_flat_overrides({}, flat, source)
    if flat["mode"] == "nll":                     # the flat mode nll trained the NLL alone, at weight 1
        nested["objectives"] = {"nll": {"weight": 1.0, "batch_size": flat["batch_size"]}}
    return nested


def apply_flat_overrides(nested: dict[str, Any], overrides: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """A copy of the nested mapping ``nested`` with flat keys ``overrides`` applied (e.g. ``--set tilt_weight=1``):
    a weight of 0 removes its objective, another weight adds it; a shared key sets every objective present that
    it applies to."""
    result = copy.deepcopy(nested)
    objectives = result.setdefault("objectives", {})
    for key, value in overrides.items():
        if key in _REMOVED and value not in (0, 0.0, None):
            raise InputError(f"{source}: {key} = {value!r}: {_REMOVED[key]}; set it to 0 or drop it")
        if key not in FLAT_KEYS:
            raise InputError(f"{source}: unknown key {key}; valid flat keys are {', '.join(sorted(FLAT_KEYS))}")
        if key in _WEIGHTS:
            name = _WEIGHTS[key]
            if _is_zero(value):
                objectives.pop(name, None)
            else:
                objectives[name] = {**(objectives.get(name) or {}), "weight": value}
    for key, value in overrides.items():
        if key in _WEIGHTS:
            continue
        if key in ("temperature_min", "temperature_max"):
            continue
        for path in FLAT_KEYS[key][1]:
            parts = path.split(".")
            if parts[0] == "objectives" and parts[1] not in objectives:
                continue                              # a setting of a term this config does not use
            _set(result, parts, copy.deepcopy(value))
    if "temperature_min" in overrides or "temperature_max" in overrides:
        temperatures = result.setdefault("temperatures", {})
        low, high = temperatures.get("range") or (None, None)
        low, high = overrides.get("temperature_min", low), overrides.get("temperature_max", high)
        temperatures["range"] = None if low is None or high is None else [low, high]
    return result


def _is_zero(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _set(values: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        values = values.setdefault(part, {})
    values[parts[-1]] = value
