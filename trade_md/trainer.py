"""The training loop: a list of objectives, one optimiser, checkpoints; no physics.

The :class:`Trainer` receives a :class:`~trade_md.flows.Generator`, a :class:`~trade_md.config.TrainConfig`, the
system's :class:`~trade_md.formats.checkpoint.SystemRecord`, a potential ``x -> U [n]`` in kJ/mol
(``EnergyBridge.potential`` for molecules, a toy's ``potential``) and optional data at T0. Each step it evaluates
the config's objectives (:mod:`trade_md.objectives`) in a fixed order, adds ``factor(step) × loss`` of each and
takes one Adam step. A step whose loss or gradient is not finite is skipped and counted, never handed to the
optimiser. While any objective acts away from T0 the expectation grid is refreshed every ``grid.refresh_every``
steps; each refresh whose lowest node ESS beats all earlier ones writes ``<out>/best/checkpoint.pt``.

The run ends at ``schedule.steps`` or earlier, by the wall-time budget or early stopping (:mod:`trade_md.stopping`;
``stopped_by`` in the summary); ``monitor.select: val_nll`` keeps the best validation in ``<out>/best_t0/``.

Checkpoints (``<out>/checkpoint.pt``, written atomically every ``monitor.checkpoint_every`` steps and at the end)
hold the model state and config, optimiser state, RNG states, step, the expectation grid, the TrainConfig, the
trained range, the system's serialisation and fingerprint, and the coordinate normalisation; :meth:`load_state`
continues bit-for-bit as an uninterrupted run would. Under ``torchrun`` (:mod:`trade_md.distributed`) each rank
evaluates its shard of every batch (:class:`~trade_md.objectives.TrainingContext`) and the gradients are averaged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trade_md.config import TrainConfig, config_from_checkpoint
from trade_md.distributed import DistributedContext
from trade_md.errors import InputError
from trade_md.generator import Generator
from trade_md.formats.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, SystemRecord
from trade_md.formats.files import atomic_write_path, write_json_atomic
from trade_md.objectives import ExpectationGrid, TrainingContext
from trade_md.progress import progress_bar
from trade_md.stopping import StopRules, fit_gap
from trade_md.thermo import reduced_potential
from trade_md.trade import cap_reduced_energy, importance_estimate

__all__ = ["BEST_DIR", "BEST_T0_DIR", "MAX_CONSECUTIVE_SKIPS", "Trainer"]

logger = logging.getLogger(__name__)

BEST_DIR = "best"
"""Sub-directory of a run that holds the checkpoint of the grid refresh with the highest lowest-node ESS."""
BEST_T0_DIR = "best_t0"
"""Sub-directory of a run that holds the checkpoint of the validation with the lowest validation NLL at T0
(``monitor.select: val_nll``)."""
MAX_CONSECUTIVE_SKIPS = 100
"""Training stops with an error after this many consecutive non-finite steps."""


class Trainer:
    """The training loop (see the module docs).

    generator: the model (its ``reference_temperature`` is T0); config: a validated :class:`TrainConfig`; system:
    stored in checkpoints; potential: ``x -> U [n]`` kJ/mol, differentiable in x for the energy objectives (needed
    in mode trade; in mode nll only for the ESS report); data: frames at T0 (``[n, ...]`` in the generator's
    coordinates, e.g. ``[n, atoms, 3]`` nm), split by ``config.data``; out: run directory (None: no files);
    distributed: this rank's context under torchrun (batch sizes in the config are then global).
    """

    def __init__(
        self,
        generator: Generator,
        config: TrainConfig,
        system: SystemRecord,
        *,
        potential: Callable[[Tensor], Tensor] | None = None,
        data: Tensor | None = None,
        out: str | Path | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.system = system
        self.distributed = distributed
        self.generator = generator.to(device=torch.device(config.device), dtype=getattr(torch, config.dtype))
        t0 = generator.reference_temperature
        if config.temperatures.reference is not None and not math.isclose(config.temperatures.reference, t0,
                                                                          rel_tol=1e-9):
            raise InputError(f"the config's temperatures.reference {config.temperatures.reference} K differs from "
                             f"the model's T0 {t0} K (reference_temperature); make them agree")
        self.potential = potential
        self.out = None if out is None else Path(out)
        self.objectives = config.active_objectives()
        train, self.validation_data = self._split(data)
        self._check_inputs(train)
        self.gradient_masks = self._trainable_masks()
        self.optimizer = torch.optim.Adam([p for p, _ in self.gradient_masks], lr=config.schedule.learning_rate)
        self.rng = torch.Generator().manual_seed(config.seed)
        span = config.trained_range
        self.grid = None if span is None else ExpectationGrid(
            t0, span[0], span[1], config.grid.nodes, decay=config.grid.decay,
            loss_momentum=config.grid.loss_momentum,
            all_reduce=None if distributed is None else distributed.all_reduce)
        self.context = TrainingContext(self.generator, rng=self.rng, energy=self.energy, data=train,
                                       trained_range=span, grid=self.grid, energy_cap=config.energy.cap,
                                       distributed=distributed)
        if distributed is not None:
            distributed.broadcast_parameters(self.generator)
        self.step = 0
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self.last_refresh: int | None = None
        self.history: list[dict[str, float]] = []
        self.energy_evaluations = 0
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.best_ess = -1.0
        self.stop = StopRules(config.schedule, config.monitor)   # schedule length, time budget, early stopping
        self.validation_seconds, self.validation_count = 0.0, 0
        if train is not None and any(o.needs_data_energies for o in self.objectives):
            self.context.evaluate_data_energies()

    @property
    def is_main(self) -> bool:
        """Whether this process shows progress, validates and writes files (rank 0)."""
        return self.distributed is None or self.distributed.is_main

    def energy(self, x: Tensor) -> Tensor:
        """``U(x)`` ``[n]`` kJ/mol from the potential, counted in :attr:`energy_evaluations`."""
        self.energy_evaluations += int(x.shape[0])
        return self.potential(x)

    def _split(self, data: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        if data is None:
            return None, None
        train, validation = self.config.data.split(data)
        train = train.to(device=self.generator.device, dtype=self.generator.dtype)
        validation = validation.to(device=self.generator.device, dtype=self.generator.dtype)
        return train, validation if validation.shape[0] else None

    def _check_inputs(self, data: Tensor | None) -> None:
        for objective in self.objectives:
            if objective.needs_data and data is None:
                raise InputError(f"objective {objective.name} needs data at the reference temperature; pass --data "
                                 "(or train the boundary on the energy alone: objectives.kl)")
        if self.config.mode == "trade" and self.potential is None:
            raise InputError("mode 'trade' needs the potential energy function")

    def _trainable_masks(self) -> list[tuple[torch.nn.Parameter, Tensor | None]]:
        """The optimised parameters with their gradient masks (None: every entry); with ``trainable`` "temperature"
        every other parameter is frozen (``requires_grad`` False)."""
        if self.config.trainable == "all":
            return [(p, None) for p in self.generator.parameters()]
        masks = self.generator.flow.temperature_gradient_masks()
        chosen = {id(p) for p, _ in masks}
        for parameter in self.generator.parameters():
            parameter.requires_grad_(id(parameter) in chosen)
        return masks

    # ------------------------------------------------------------------------------------------- steps
    def _refresh_due(self) -> bool:
        """Whether the grid needs fresh estimates now: before its first use as a target, then every
        ``grid.refresh_every`` steps (never when that is 0)."""
        every = self.config.grid.refresh_every
        if any(o.needs_grid_estimates for o in self.objectives) and not self.grid.ready:
            return True
        return every > 0 and (self.last_refresh is None or self.step - self.last_refresh >= every)

    def refresh_grid(self) -> None:
        """Re-estimate E[U] and the ESS at every grid node from fresh model samples; keep ``best/``."""
        start = time.perf_counter()
        self.generator.eval()
        self.grid.refresh(self.context.sample, self.energy, self.config.grid.samples, self.config.energy.cap)
        self.generator.train()
        self.last_refresh = self.step
        self.refresh_seconds += time.perf_counter() - start
        self.refreshes += 1
        lowest = float(self.grid.ess.min())
        if lowest > self.best_ess:                       # the same on every rank: the grid pools all ranks' samples
            self.best_ess = lowest
            if self.out is not None and self.is_main:
                self.save_checkpoint(self.out / BEST_DIR / CHECKPOINT_NAME)

    def train_step(self) -> dict[str, float]:
        """One optimiser step (or a counted skip); returns the logged terms as floats."""
        factors = [objective.factor(self.step) for objective in self.objectives]
        transferring = any(o.acts_away_from_t0 and f > 0 for o, f in zip(self.objectives, factors))
        if transferring and self._refresh_due():         # not in boundary-only runs; ESS and best/ for the rest
            self.refresh_grid()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.schedule.learning_rate_at(self.step, self.stop.total_steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), dtype=self.generator.dtype, device=self.generator.device)
        terms: dict[str, float] = {"boundary": 0.0}
        for objective, factor in zip(self.objectives, factors):
            if factor > 0:
                value, logged = objective.loss(self.context)
                terms.update(logged)
                loss = loss + factor * value
                if not objective.acts_away_from_t0:
                    terms["boundary"] += factor * float(value.detach())
        terms["loss"] = float(loss.detach())
        finite = self.context.everywhere(bool(torch.isfinite(loss)))
        if finite:
            if loss.requires_grad:                      # not when every term is off (a frozen boundary, no TRADE yet)
                loss.backward()
            for parameter, mask in self.gradient_masks:
                if parameter.grad is not None and mask is not None:
                    parameter.grad.mul_(mask)
            if self.distributed is not None:
                self.distributed.average_gradients(self.generator.parameters())
            norm = torch.nn.utils.clip_grad_norm_(self.generator.parameters(), self.config.schedule.grad_clip)
            finite = bool(torch.isfinite(norm))
        self._apply(finite)
        terms["skipped"] = float(not finite)
        self.step += 1
        return terms if self.distributed is None else self.distributed.mean_terms(terms)

    def _apply(self, finite: bool) -> None:
        """Take the optimiser step, or count the skip (and give up after :data:`MAX_CONSECUTIVE_SKIPS`)."""
        if finite:
            self.optimizer.step()
            self._consecutive_skips = 0
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self._consecutive_skips += 1
        logger.debug("step %d: non-finite loss or gradient, skipped", self.step)
        if self._consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            raise InputError(f"training diverged: {MAX_CONSECUTIVE_SKIPS} consecutive steps had a non-finite loss "
                             "or gradient; resume from the last checkpoint with a lower schedule.learning_rate")

    # ------------------------------------------------------------------------------------------- reports
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation NLL at T0 on held-out frames (mean −log q, nats) and, with a potential, the Kish ESS at T0 of
        ``monitor.ess_samples`` model samples."""
        started = time.perf_counter()
        self.generator.eval()
        report: dict[str, float] = {}
        t0 = self.generator.reference_temperature
        if self.validation_data is not None:
            nll = torch.cat([-self.generator.log_prob(part, t0) for part in torch.split(self.validation_data, 4096)])
            report["val_nll"] = float(nll.mean())
        n = self.config.monitor.ess_samples
        if self.potential is not None and n > 0:
            rng = torch.Generator().manual_seed(self.config.seed + self.step)  # leaves the training draws alone
            x, log_q = self.generator.sample(n, t0, generator=rng)
            u = cap_reduced_energy(reduced_potential(self.energy(x).to(torch.float64), t0), self.config.energy.cap)
            _, ess = importance_estimate(u, u, log_q.to(torch.float64))
            report["val_ess"] = float(ess)                # Kish ESS at T0 (grid ESS: "ess<T>")
        self.generator.train()
        self.validation_seconds += time.perf_counter() - started
        self.validation_count += 1
        return report

    def grid_report(self) -> dict[str, float]:
        """ESS (fraction) of the last refresh at the nodes nearest the progress temperatures."""
        if self.grid is None or self.last_refresh is None:
            return {}
        low, high = self.config.trained_range
        shown = self.config.monitor.progress_temperatures or [low, self.generator.reference_temperature, high]
        index = self.grid.nearest(torch.tensor(shown, dtype=torch.float64))
        return {f"ess{float(self.grid.temperatures[k]):.0f}": float(self.grid.ess[k]) for k in index.tolist()}

    def run(self, callback: Callable[[Trainer, dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Train until the run ends (:mod:`trade_md.stopping`), checkpointing; returns the summary. callback: called
        after every step with the trainer and the step's logged terms (e.g. to print progress lines)."""
        monitor, stop = self.config.monitor, self.stop
        self.generator.train()
        start, start_step = time.perf_counter(), self.step
        away = [o.start for o in self.objectives if o.acts_away_from_t0]   # the fit's window opens once they act
        fit_start, transferring = stop.fit_start(self.step, min(away, default=0)), bool(away)
        shown: dict[str, float] = {}
        stop.stopped_by = None
        with progress_bar(total=stop.total_steps, initial=self.step, desc=self.config.mode, unit="step",
                          enabled=monitor.progress and self.is_main) as bar:
            while self.context.everywhere(stop.reason(self.step, stop.seconds + time.perf_counter() - start) is None):
                if self.step == fit_start:
                    if self.is_main and not self.validation_count:   # the fit needs the cost of a validation
                        shown.update(self.validate())
                    stop.open_window(self.step, self.refresh_seconds, self.validation_seconds)
                terms = self.train_step()
                fitted = stop.close_window(
                    self.step, stop.budget_seconds - stop.seconds - (time.perf_counter() - start),
                    refresh_seconds=self.refresh_seconds, refreshes=self.refreshes if transferring else 0,
                    refresh_every=self.config.grid.refresh_every, validation_seconds=self.validation_seconds,
                    validations=self.validation_count)
                if fitted is not None and self.distributed is not None:   # one schedule for every rank
                    stop.set_fitted(int(self.distributed.all_reduce(
                        torch.tensor([float(fitted)], dtype=torch.float64), "max").item()), self.step)
                bar.total = stop.total_steps
                if self.is_main and (self.step % stop.validate_every == 0 or self.step == stop.total_steps):
                    shown.update({**self.validate(), **self.grid_report()})
                    self.history.append({"step": self.step, **terms, **shown})
                    self._keep_best(shown)
                if self.out is not None and self.is_main and (self.step % monitor.checkpoint_every == 0
                                                              or self.step == stop.total_steps):
                    self.save_checkpoint(seconds=stop.seconds + time.perf_counter() - start)
                bar.update(1)
                bar.set_postfix(_postfix(terms, shown), refresh=False)
                if callback is not None:
                    callback(self, terms)
        stop.stopped_by = stop.stopped_by or "another process"         # (a rank that stopped because another did)
        if self.is_main and (not self.history or self.history[-1]["step"] != self.step):
            shown.update({**self.validate(), **self.grid_report()})    # stopped between validations: the last model
            self.history.append({"step": self.step, **shown})
            self._keep_best(shown)
        session = time.perf_counter() - start
        stop.seconds += session
        if self.out is not None and self.is_main and self.step > start_step:
            self.save_checkpoint()
        summary = self.summary(seconds=session, steps_run=self.step - start_step)
        if self.distributed is not None:
            summary["processes"] = self.distributed.world_size
            summary["energy_evaluations_all_ranks"] = int(self.distributed.all_reduce(
                torch.tensor([float(self.energy_evaluations)], dtype=torch.float64)).item())
        if self.out is not None and self.is_main:
            write_json_atomic(self.out / "summary.json", summary)
        return summary

    def _keep_best(self, shown: dict[str, float]) -> None:          # best_t0/: the best validation (select)
        if self.stop.track(shown, self.step) and self.out is not None:
            self.save_checkpoint(self.out / BEST_T0_DIR / CHECKPOINT_NAME)

    def summary(self, *, seconds: float, steps_run: int) -> dict[str, Any]:
        """JSON-able end-of-run report (also written to ``<out>/summary.json``)."""
        summary: dict[str, Any] = {
            "mode": self.config.mode,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "seconds": seconds,
            "seconds_total": self.stop.seconds,
            "stopped_by": self.stop.stopped_by,
            "schedule_steps": self.stop.total_steps,
            "fitted_steps": self.stop.fitted_steps,
            "best_validation": self.stop.best_validation or None,
            "seconds_per_step": seconds / steps_run if steps_run else None,
            "seconds_per_refresh": self.refresh_seconds / self.refreshes if self.refreshes else None,
            "energy_evaluations": self.energy_evaluations,
            "reference_temperature": self.generator.reference_temperature,
            "system": self.system.name,
            "last": self.history[-1] if self.history else {}, "fit_gap": fit_gap(self.history),
        }
        if self.grid is not None and self.grid.ready:
            summary["grid"] = {
                "temperatures": self.grid.temperatures.tolist(),
                "mean_energy": self.grid.mean_energy.tolist(),
                "ess": self.grid.ess.tolist(),
                "loss": self.grid.loss.tolist(),
                "log_Z_minus_log_Z0": self.grid.free_energy_curve().tolist(),
            }
        return summary

    # ------------------------------------------------------------------------------------------- checkpoints
    def state(self, seconds: float | None = None) -> dict[str, Any]:
        """The checkpoint payload (see the module docs); seconds: training wall time so far (default: that of the
        finished sessions)."""
        generator_config = self.generator.config()
        span = self.config.trained_range
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "energy_evaluations": self.energy_evaluations,
            "last_refresh": self.last_refresh,
            "generator_config": generator_config,
            "model_state": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()},
            "normalisation": generator_config["coordinates"],
            "optimizer_state": self.optimizer.state_dict(),
            "rng_state": self.rng.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "grid_state": None if self.grid is None else self.grid.state_dict(),
            "config": self.config.to_dict(),
            "trained_range": None if span is None else list(span),
            "system": dataclasses.asdict(self.system),
            "history": self.history,
            "best_ess": self.best_ess,
            **self.stop.state_dict(),
            **({} if seconds is None else {"seconds": seconds}),
        }

    def save_checkpoint(self, path: Path | None = None, *, seconds: float | None = None) -> Path:
        """Write the checkpoint atomically to ``path`` (default ``<out>/checkpoint.pt``); returns its path.
        seconds: the training wall time so far, stored for a time budget that continues across resumes."""
        if self.out is None:
            raise InputError("this trainer has no output directory; pass out=... to save checkpoints")
        path = self.out / CHECKPOINT_NAME if path is None else path
        with atomic_write_path(path) as temp:
            torch.save(self.state(seconds), temp)
        return path

    def load_state(self, checkpoint: dict[str, Any], where: str = "checkpoint") -> None:
        """Continue from a checkpoint payload of the same system and settings (the flat config of a checkpoint
        written before the restructure is converted; only the settings a resumed run may change may differ)."""
        SystemRecord(**checkpoint["system"]).check_same(self.system, where)
        changed = config_from_checkpoint(checkpoint, where).changed_settings(self.config)
        if changed:
            raise InputError(f"{where} was written with other settings ({', '.join(changed)}); resume with the same "
                             "settings (only schedule.steps, device, out and the monitor's cadence and progress may "
                             "change) or start a new run")
        self.generator.load_state_dict(checkpoint["model_state"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        self.rng.set_state(checkpoint["rng_state"])
        torch.set_rng_state(checkpoint["torch_rng_state"])
        if self.grid is not None:
            self.grid.load_state_dict(checkpoint["grid_state"])
        self.step = int(checkpoint["step"])
        self.skipped_steps = int(checkpoint["skipped_steps"])
        self.energy_evaluations = int(checkpoint["energy_evaluations"])
        self.last_refresh = checkpoint["last_refresh"]
        self.history = list(checkpoint["history"])
        self.best_ess = float(checkpoint.get("best_ess", -1.0))
        self.stop.load_state_dict(checkpoint)


def _postfix(terms: dict[str, float], shown: dict[str, float]) -> dict[str, str]:
    postfix = {key: f"{terms[key]:.3g}" for key in ("boundary", "trade") if key in terms}
    for key, value in shown.items():
        postfix[key] = f"{100 * value:.1f}%" if key.startswith(("ess", "val_ess")) else f"{value:.3g}"
    return postfix
