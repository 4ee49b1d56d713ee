"""When a training run ends (trade_md.stopping, used by the trainer): a schedule fitted to a wall-time budget that
continues across resumes, and early stopping on the validation NLL / ESS at T0 with the best validation kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trade_md.config import MonitorConfig, Schedule, TrainConfig, deep_merge
from trade_md.errors import InputError
from trade_md.formats.checkpoint import SystemRecord, read_checkpoint
from trade_md.stopping import FIT_WARMUP, REFIT_AT, StopRules
from trade_md.toys import DoubleWell1D, toy_generator
from trade_md.trainer import BEST_T0_DIR, Trainer

T0 = 300.0
BOUNDARY: dict[str, Any] = {
    "mode": "trade", "seed": 1, "temperatures": {"range": [150.0, 600.0]},
    "flow": {"n_layers": 2, "hidden": 16, "n_bins": 8}, "schedule": {"steps": 100000, "learning_rate": 1e-3},
    "objectives": {"nll": {"batch_size": 64}, "kl": {"weight": 0.5, "batch_size": 32}},
    "monitor": {"validate_every": 5, "checkpoint_every": 10, "ess_samples": 64, "progress": False},
}


def _trainer(values: dict[str, Any], out: Path) -> Trainer:
    toy = DoubleWell1D()
    config = TrainConfig.from_dict(deep_merge(BOUNDARY, values))
    torch.manual_seed(config.seed)
    data = toy.sample(1000, T0, generator=torch.Generator().manual_seed(1))
    return Trainer(toy_generator(toy, T0, **config.flow), config, SystemRecord.of(toy), potential=toy.potential,
                   data=data, out=out)


def test_a_fitted_schedule_ends_at_the_time_budget_and_decays_over_the_steps_it_reaches(tmp_path: Path) -> None:
    trainer = _trainer({"schedule": {"minutes": 0.05, "fit_window": 10}, "monitor": {"validations": 4}}, tmp_path)
    summary = trainer.run()
    stop = trainer.stop
    assert summary["fitted_steps"] == stop.fitted_steps > FIT_WARMUP + 10
    assert summary["stopped_by"] in ("fitted steps", "time budget")
    assert summary["seconds_total"] < 0.05 * 60 + 1.0                         # the budget held (1 s of slack)
    assert trainer.step <= stop.fitted_steps and trainer.step >= 0.5 * stop.fitted_steps
    assert 1 <= stop.validate_every <= max(1, (stop.fitted_steps - FIT_WARMUP - 10) // 4)   # 4 after the refit
    schedule = trainer.config.schedule
    assert schedule.learning_rate_at(stop.fitted_steps, stop.total_steps) == pytest.approx(
        schedule.learning_rate * schedule.lr_final_fraction)                 # the cosine ends at the fitted length
    assert read_checkpoint(tmp_path)["fitted_steps"] == stop.fitted_steps


def test_a_resumed_run_keeps_its_fitted_schedule_and_the_time_already_spent(tmp_path: Path) -> None:
    values = {"schedule": {"minutes": 0.05, "fit_window": 10}}
    first = _trainer(values, tmp_path)
    first.run()
    state = read_checkpoint(tmp_path)
    assert state["seconds"] > 0 and state["fitted_steps"] == first.stop.fitted_steps
    resumed = _trainer(values, tmp_path)
    resumed.load_state(state, "checkpoint")
    assert resumed.stop.total_steps == first.stop.fitted_steps and resumed.stop.seconds == state["seconds"]
    summary = resumed.run()                                                     # nothing left: budget or steps spent
    assert summary["step"] == first.step and summary["stopped_by"] in ("fitted steps", "time budget")
    more = _trainer({"schedule": {"minutes": 0.1, "fit_window": 10}}, tmp_path)  # a larger budget trains on,
    more.load_state(read_checkpoint(tmp_path), "checkpoint")                   # on the same fitted schedule
    assert more.stop.total_steps == first.stop.fitted_steps


def test_the_schedule_is_fitted_again_from_the_mean_step_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("trade_md.stopping.time.perf_counter", lambda: clock[0])
    rules = StopRules(Schedule(steps=100000, minutes=1.0), MonitorConfig())
    assert rules.fit(per_step=0.1, step=40, remaining=50.0) == 515                  # the window's cost: 0.1 s/step
    refit_at = 40 + int(REFIT_AT * (515 - 40))
    window = {"refresh_seconds": 0.0, "refreshes": 0, "refresh_every": 0, "validation_seconds": 0.0, "validations": 0}
    assert rules.close_window(refit_at - 1, 45.0, **window) is None
    clock[0] += 0.05 * (refit_at - 40)                                              # the steps took 0.05 s each
    remaining = 50.0 - 0.05 * (refit_at - 40)
    assert rules.close_window(refit_at, remaining, **window) == refit_at + int(0.95 * remaining / 0.05)
    assert rules.total_steps == rules.fitted_steps == refit_at + int(0.95 * remaining / 0.05)
    clock[0] += 100.0
    assert rules.close_window(2 * refit_at, 1.0, **window) is None                  # once only


def test_early_stopping_keeps_the_best_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer({"monitor": {"select": "val_nll", "patience": 3}}, tmp_path)
    scores = iter([-1.0, -2.0, -1.5, -1.9, -1.8, -1.7, -3.0])                # best at the 2nd validation (step 10)
    monkeypatch.setattr(trainer, "validate", lambda: {"val_nll": next(scores), "val_ess": 0.1})
    summary = trainer.run()
    assert summary["stopped_by"] == "early stopping" and trainer.step == 25
    assert summary["best_validation"] == {"step": 10.0, "val_nll": -2.0, "val_ess": 0.1}
    assert read_checkpoint(tmp_path / BEST_T0_DIR)["step"] == 10


def test_a_new_highest_ess_at_t0_also_counts_as_progress() -> None:
    rules = StopRules(Schedule(), MonitorConfig(select="val_nll", patience=2, min_delta=0.1))
    seen = [rules.track({"val_nll": nll, "val_ess": ess}, step) for step, (nll, ess) in
            enumerate([(-1.0, 0.1), (-1.05, 0.05), (-1.0, 0.2), (-1.0, 0.1)])]
    assert seen == [True, True, False, False]           # -1.05 is kept as the best, but is not progress (min_delta)
    assert rules.stale_validations == 1 and rules.stopped_by is None          # the ESS record reset the count
    rules.track({"val_nll": -1.0, "val_ess": 0.1}, 4)
    assert rules.stopped_by == "early stopping"


def test_validations_early_in_the_schedule_do_not_count_towards_the_patience() -> None:
    rules = StopRules(Schedule(steps=100), MonitorConfig(select="val_nll", patience=2, patience_from=0.5))
    for step in (10, 20, 30, 40, 50):                                       # no improvement, but before step 50
        rules.track({"val_nll": 0.0}, step)
    assert rules.stale_validations == 1 and rules.stopped_by is None
    rules.track({"val_nll": 0.0}, 60)
    assert rules.stopped_by == "early stopping"


@pytest.mark.parametrize(("values", "message"), [
    ({"schedule": {"minutes": 0.0}}, "minutes"),
    ({"schedule": {"fit_window": -1}}, "fit_window"),
    ({"monitor": {"patience": 3}}, "select"),
    ({"monitor": {"select": "val_ess"}}, "select"),
    ({"monitor": {"patience_from": 1.5}}, "patience_from"),
])
def test_bad_stopping_settings_are_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        TrainConfig.from_dict(values)
