"""Training configs: the nested layout, recipe inheritance (base: + deep merge), validation, and the conversion of
the flat layout used before the restructure (files, checkpoints, --set overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trade_md.config import (
    DataConfig,
    TrainConfig,
    apply_flat_overrides,
    deep_merge,
    is_flat,
    load_recipe,
    nested_from_flat,
)
from trade_md.config.legacy import FLAT_KEYS
from trade_md.errors import InputError
from trade_md.objectives import NLL, RangeReverseKL, ReverseKL, TradeResidual
from trade_md.recipe.options import check_overrides, load_overrides

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_round_trip() -> None:
    config = TrainConfig()
    config.validate()
    assert TrainConfig.from_dict(config.to_dict()) == config
    recipe = TrainConfig.from_yaml(REPO / "systems" / "alanine_dipeptide" / "trade.yaml")
    assert TrainConfig.from_dict(recipe.to_dict()) == recipe


def test_unknown_config_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown key.*learning_rat, stepz"):
        TrainConfig.from_dict({"stepz": 5, "learning_rat": 1e-3, "steps": 3})          # flat layout
    with pytest.raises(InputError, match=r"unknown key.*schedule\.learning_rat\b"):
        TrainConfig.from_dict({"schedule": {"learning_rat": 1e-3}})                     # nested layout
    with pytest.raises(InputError, match=r"objectives\.tilt\.spam"):
        TrainConfig.from_dict({"objectives": {"tilt": {"spam": 1}}})
    with pytest.raises(InputError, match="unknown objective 'tlit'"):
        TrainConfig.from_dict({"objectives": {"tlit": {}}})
    file = tmp_path / "bad.yaml"
    file.write_text("mode: nll\nbatchsize: 12\n")
    with pytest.raises(InputError, match=f"{file}.*batchsize"):
        TrainConfig.from_yaml(file)
    with pytest.raises(InputError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "mle"}, "mode"),
        ({"schedule": {"learning_rate": -1.0}}, "learning_rate"),
        ({"schedule": {"steps": 0}}, "steps"),
        ({"data": {"validation_fraction": 1.5}}, "validation_fraction"),
        ({"mode": "trade"}, "temperatures.range"),
        ({"mode": "trade", "temperatures": {"range": [600.0, 300.0]}}, "range"),
        ({"mode": "trade", "temperatures": {"range": [200.0, 600.0]}, "objectives": {"trade": {}}}, "boundary"),
        ({"dtype": "float16"}, "dtype"),
        ({"mode": "trade", "temperatures": {"range": [200.0, 600.0]},
          "objectives": {"nll": {}, "trade": {"expectation": "mean"}}}, "expectation"),
        ({"mode": "trade", "temperatures": {"range": [200.0, 600.0]}, "grid": {"refresh_every": 0},
          "objectives": {"nll": {}, "trade": {"expectation": "grid"}}}, "refresh_every"),
        ({"mode": "trade", "temperatures": {"range": [200.0, 600.0]},
          "objectives": {"nll": {}, "trade": {"energy_cap": -5.0}}}, "energy_cap"),
        ({"mode": "trade", "temperatures": {"range": [200.0, 600.0]},
          "objectives": {"nll": {}, "trade": {"temperatures_per_step": 0}}}, "temperatures_per_step"),
        ({"trainable": "context"}, "trainable"),
        ({"trainable": "temperature"}, "'all' in mode nll"),
        ({"mode": "trade", "temperatures": {"range": [300.0, 900.0]},
          "objectives": {"nll": {}, "tilt": {"span": [200.0, 600.0]}}}, "span"),
        ({"mode": "trade", "temperatures": {"range": [300.0, 900.0]},
          "objectives": {"nll": {}, "kl_range": {"span": [600.0]}}}, "span"),
        ({"mode": "trade", "temperatures": {"range": [300.0, 900.0]},
          "objectives": {"nll": {}, "reweighted_nll": {"weight": -1.0}}}, "weight"),
        ({"mode": "trade", "temperatures": {"range": [300.0, 900.0]},
          "objectives": {"nll": {}, "reweighted_nll": {"span": [250.0, 600.0]}}}, "span"),
        ({"objectives": {"fkl_range": {}}}, "removed"),
        ({"flow": {"temperature_head": True}}, "temperature_head was removed.*delete it"),
        ({"mode": "trade", "temperature_min": 300.0, "temperature_max": 900.0, "fkl_range_weight": 1.0}, "removed"),
        ({"mode": "trade", "temperature_min": 200.0, "temperature_max": 600.0, "nll_weight": 0.0}, "boundary"),
    ],
)
def test_bad_config_values_raise_input_error(values: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        TrainConfig.from_dict(values)


def test_a_config_that_switches_temperature_heads_off_still_loads() -> None:
    """Configs written before the heads were removed may say ``temperature_head: false``."""
    assert TrainConfig.from_dict({"flow": {"n_layers": 2, "temperature_head": False}}).flow == {"n_layers": 2}


def test_alanine_dipeptide_configs_parse() -> None:
    trade = TrainConfig.from_yaml(REPO / "systems" / "alanine_dipeptide" / "trade.yaml")
    assert trade.mode == "trade" and trade.trained_range == (280.0, 1050.0)
    assert trade.temperatures.reference in (None, 600.0) and trade.data.path is not None
    assert trade.objectives["nll"].weight > 0
    nll = TrainConfig.from_yaml(REPO / "systems" / "alanine_dipeptide" / "nll.yaml")
    assert nll.mode == "nll" and nll.temperatures.reference in (None, 600.0) and nll.trained_range is None
    benchmark_configs = sorted((REPO / "benchmarks" / "configs").glob("*.yaml"))
    assert benchmark_configs
    for path in benchmark_configs:                     # the benchmark recipes stay valid configs
        assert TrainConfig.from_yaml(path).temperatures.reference == 600.0
    run_overrides = sorted((REPO / "benchmarks" / "configs" / "run").glob("*.yaml"))
    assert run_overrides
    for path in run_overrides:                         # ... and the `trade-md run --config` files valid overrides
        check_overrides(load_overrides(path), str(path))


def test_the_best_recipe_is_the_split_recipe_with_the_reweighted_nll() -> None:
    """ala2_split_pt12.yaml (three files deep) resolves to the recipe of benchmarks/results/ala2_pt12/."""
    config = TrainConfig.from_yaml(REPO / "benchmarks" / "configs" / "ala2_split_pt12.yaml")
    assert [o.name for o in config.active_objectives()] == ["kl_range", "tilt", "reweighted_nll"]
    assert config.objectives["tilt"].span == [280.0, 600.0] and config.objectives["tilt"].energy_cap == 50.0
    assert config.objectives["kl_range"].span == [600.0, 1050.0] and config.objectives["kl_range"].ramp == 200
    assert config.objectives["reweighted_nll"].span == [600.0, 900.0]
    assert config.trainable == "temperature" and config.init_from == "runs/ala2_boundary_pt12"
    assert config.flow["thermal_scaling"] is True and config.schedule.learning_rate == 3.0e-4
    assert config.data.path == "data/ala2_600K_pt12" and config.monitor.ess_samples == 2000


def test_split_frames_holds_out_the_last_frames() -> None:
    train, validation = DataConfig(validation_fraction=0.25, stride=2).split(torch.arange(16))
    assert train.tolist() == [0, 2, 4, 6, 8, 10] and validation.tolist() == [12, 14]
    with pytest.raises(InputError, match="none for training"):
        DataConfig(validation_fraction=1.0).split(torch.arange(1))


# ----------------------------------------------------------------------------------------------- recipes


def test_a_recipe_inherits_from_its_base_and_states_what_differs(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "mode: trade\ntemperatures: {reference: 600.0, range: [300.0, 900.0]}\n"
        "flow: {n_layers: 4, hidden: 32}\nschedule: {steps: 100, learning_rate: 1.0e-3}\n"
        "objectives:\n  nll: {weight: 1.0}\n  kl: {weight: 0.5, batch_size: 64}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../base.yaml\nflow: {thermal_scaling: true}\nschedule: {learning_rate: 3.0e-4}\n"
        "objectives:\n  kl: null\n  tilt: {span: [300.0, 600.0], ramp: 10}\n")
    config = TrainConfig.from_yaml(tmp_path / "sub" / "child.yaml")
    assert config.flow == {"n_layers": 4, "hidden": 32, "thermal_scaling": True}          # mappings merge
    assert (config.schedule.steps, config.schedule.learning_rate) == (100, 3.0e-4)
    assert list(config.objectives) == ["nll", "tilt"]                                     # null removes
    assert config.objectives["tilt"] == config.objectives["tilt"].__class__(span=[300.0, 600.0], ramp=10)
    assert config.trained_range == (300.0, 900.0)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(InputError, match="loop"):
        load_recipe(tmp_path / "loop.yaml")


def test_a_recipe_may_inherit_from_a_built_in_recipe(tmp_path: Path) -> None:
    shipped = TrainConfig.from_yaml(REPO / "systems" / "alanine_dipeptide" / "trade.yaml")
    (tmp_path / "short.yaml").write_text("base: alanine-dipeptide/trade\nschedule: {steps: 500}\n")
    short = TrainConfig.from_yaml(tmp_path / "short.yaml")
    assert short.schedule.steps == 500 and short.updated({"schedule": {"steps": 40000}}) == shipped
    with pytest.raises(InputError, match="built-in recipes are .*alanine-dipeptide/trade"):
        TrainConfig.from_dict({"base": "alanine-dipeptide/nonsense"})


def test_deep_merge_merges_mappings_replaces_the_rest_and_null_removes() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    merged = deep_merge(base, {"a": {"c": [5], "e": None}, "d": None, "f": {"g": 1}})
    assert merged == {"a": {"b": 1, "c": [5]}, "f": {"g": 1}} and base == {"a": {"b": 1, "c": [1, 2]}, "d": 3}


def test_objectives_run_in_a_fixed_order_and_mode_nll_trains_the_nll_alone() -> None:
    config = TrainConfig.from_dict({
        "mode": "trade", "temperatures": {"range": [300.0, 900.0]},
        "objectives": {"kl_range": {}, "trade": {}, "kl": {"weight": 0.0}, "nll": {"batch_size": 32}}})
    assert [type(o) for o in config.active_objectives()] == [NLL, TradeResidual, RangeReverseKL]
    assert config.acts_away_from_t0
    nll = config.updated({"mode": "nll"})
    assert nll.active_objectives() == [NLL(batch_size=32)] and nll.trained_range is None
    assert not nll.acts_away_from_t0 and TrainConfig().active_objectives() == [NLL()]


# ----------------------------------------------------------------------------------------------- legacy


FLAT_SMALL = {
    "mode": "trade", "temperature_min": 150.0, "temperature_max": 600.0, "steps": 12, "batch_size": 64,
    "kl_batch_size": 32, "kl_weight": 0.5, "trade_batch_size": 64, "trade_start": 2, "trade_ramp": 4,
    "grid_nodes": 5, "grid_samples": 200, "grid_refresh_every": 4, "validate_every": 3, "checkpoint_every": 6,
    "learning_rate": 1e-3, "progress": False, "seed": 3, "flow": {"n_layers": 2, "hidden": 16, "n_bins": 8},
    "tilt_weight": 1.0, "tilt_span": [150.0, 300.0], "trade_energy_cap": 50.0,
}


def test_a_flat_config_converts_to_the_nested_layout() -> None:
    assert is_flat(FLAT_SMALL) and not is_flat({"mode": "trade", "data": {"path": "d"}})
    config = TrainConfig.from_dict(FLAT_SMALL)
    assert config == TrainConfig.from_dict(nested_from_flat(FLAT_SMALL))
    assert [o.name for o in config.active_objectives()] == ["nll", "kl", "trade", "tilt"]
    assert config.objectives["nll"] == NLL(weight=1.0, batch_size=64)
    assert config.objectives["kl"] == ReverseKL(weight=0.5, batch_size=32)
    trade, tilt = config.objectives["trade"], config.objectives["tilt"]
    assert (trade.start, trade.ramp, trade.batch_size, trade.energy_cap, trade.expectation) == (2, 4, 64, 50.0,
                                                                                               "centred")
    assert (tilt.start, tilt.ramp, tilt.batch_size, tilt.span, tilt.energy_cap) == (2, 4, 32, [150.0, 300.0], 50.0)
    assert config.trained_range == (150.0, 600.0) and config.grid.refresh_every == 4
    assert not config.monitor.progress and config.seed == 3
    nll = TrainConfig.from_dict({**FLAT_SMALL, "mode": "nll", "nll_weight": 0.0})
    assert nll.objectives == {"nll": NLL(weight=1.0, batch_size=64)}          # flat mode nll: NLL at weight 1
    every = TrainConfig.from_dict({key: default for key, (default, _) in FLAT_KEYS.items()})
    assert every.active_objectives() == TrainConfig().active_objectives()     # the defaults agree
    assert every.updated({"objectives": None}) == TrainConfig()


def test_a_flat_checkpoint_config_takes_the_older_code_behaviour() -> None:
    from trade_md.config import config_from_checkpoint

    flat = {k: v for k, v in FLAT_SMALL.items() if k != "tilt_weight"}
    assert config_from_checkpoint({"config": flat}).objectives["trade"].expectation == "grid"
    assert TrainConfig.from_dict(flat).objectives["trade"].expectation == "centred"


def test_flat_overrides_apply_to_a_nested_config() -> None:
    nested = load_recipe(REPO / "benchmarks" / "configs" / "ala2_transfer.yaml")
    changed = TrainConfig.from_dict(apply_flat_overrides(nested, {
        "learning_rate": 2e-4, "kl_batch_size": 512, "trade_start": 0, "trade_weight": 0.0, "tilt_weight": 1.0,
        "temperature_max": 600.0, "tilt_span": [280.0, 600.0]}))
    assert changed.schedule.learning_rate == 2e-4 and changed.trained_range == (280.0, 600.0)
    assert "trade" not in changed.objectives and changed.objectives["kl"].batch_size == 512
    tilt = changed.objectives["tilt"]
    assert (tilt.weight, tilt.start, tilt.batch_size, tilt.span) == (1.0, 0, 512, [280.0, 600.0])
    with pytest.raises(InputError, match="unknown key spam"):
        apply_flat_overrides(nested, {"spam": 1})
