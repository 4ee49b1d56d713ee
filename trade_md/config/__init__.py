"""Training configs: the nested :class:`TrainConfig` (:mod:`~trade_md.config.schema`), recipe files that inherit
from a base (:mod:`~trade_md.config.files`) and the conversion of the flat layout used before the restructure
(:mod:`~trade_md.config.legacy`)."""

from __future__ import annotations

from trade_md.config.files import deep_merge, load_recipe
from trade_md.config.legacy import apply_flat_overrides, is_flat, nested_from_flat
from trade_md.config.schema import (
    DataConfig,
    EnergyConfig,
    GridConfig,
    MonitorConfig,
    Schedule,
    Temperatures,
    TrainConfig,
    config_from_checkpoint,
)

__all__ = [
    "DataConfig",
    "EnergyConfig",
    "GridConfig",
    "MonitorConfig",
    "Schedule",
    "Temperatures",
    "TrainConfig",
    "apply_flat_overrides",
    "config_from_checkpoint",
    "deep_merge",
    "is_flat",
    "load_recipe",
    "nested_from_flat",
]
