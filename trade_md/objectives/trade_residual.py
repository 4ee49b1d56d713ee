"""The paper's derivative TRADE residual: ∂ log q / ∂ log T = u_T(x) − E_T[u_T], Huber loss, causality weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from trade_md.objectives.base import Objective, check, is_number
from trade_md.objectives.context import TrainingContext
from trade_md.trade import centred_trade_residual, huber, trade_residual

__all__ = ["EXPECTATIONS", "TradeResidual"]

EXPECTATIONS = ("centred", "grid")
"""How the residual's constant E_T[u_T] is obtained (see :mod:`trade_md.trade`)."""


@dataclass(frozen=True)
class TradeResidual(Objective):
    """The causality-weighted Huber loss of the TRADE residual (:mod:`trade_md.trade`) at ``batch_size`` points per
    step, at temperatures drawn log-uniformly over the trained range.

    expectation: ``"centred"`` (the residual minus its mean over the points that share a temperature; exact because
    q is normalised, no importance weights) or ``"grid"`` (E_T[U] by self-normalised importance sampling on the
    expectation grid, the paper's estimator; biased when the grid ESS is low). temperatures_per_step: distinct
    temperatures per step with ``"centred"`` (at most batch_size / 2, so that every centre rests on at least 2
    points); the batch is dealt out evenly among them. from_model, from_reference, from_data: relative shares of
    the points that are model samples at the point's own T, model samples at T0, and data frames at T0 (without
    data the data share goes to reference samples). huber_delta: Huber threshold (reduced units).
    causality_epsilon: ε of the causality weights exp(−ε Σ L_j) of the grid (0: off). energy_cap: k_B T above which
    the target's reduced energies grow logarithmically (absent: ``energy.cap``); the exact tilt multiplies a
    boundary sample of reduced energy u by up to exp((1 − T0/T) u) at T > T0, so a lower cap here (e.g. 50) keeps
    the derivative targets of an imperfect boundary's high-energy debris of the size of the physical ones.
    """

    name: ClassVar[str] = "trade"
    acts_away_from_t0: ClassVar[bool] = True

    ramp: int = 2000
    batch_size: int = 256
    expectation: str = "centred"
    temperatures_per_step: int = 16
    from_model: float = 0.5
    from_reference: float = 0.25
    from_data: float = 0.25
    huber_delta: float = 1.0
    causality_epsilon: float = 0.1
    energy_cap: float | None = None

    @property
    def needs_data_energies(self) -> bool:
        return self.from_data > 0

    @property
    def needs_grid_estimates(self) -> bool:
        return self.expectation == "grid"

    @property
    def n_centres(self) -> int:
        """Temperatures per step of the centred residual: temperatures_per_step, at most batch_size / 2."""
        return max(1, min(self.temperatures_per_step, self.batch_size // 2))

    def check(self, where: str, trained_range: Sequence[float] | None) -> None:
        super().check(where, trained_range)
        check(self.expectation in EXPECTATIONS, where, "expectation", self.expectation, "'centred' or 'grid'")
        for name in ("from_model", "from_reference", "from_data", "causality_epsilon"):
            check(is_number(getattr(self, name), 0.0), where, name, getattr(self, name), "a number >= 0")
        check(is_number(self.huber_delta, 0.0, open_low=True), where, "huber_delta", self.huber_delta,
              "a number > 0")
        check(self.from_model + self.from_reference + self.from_data > 0, where, "from_model/_reference/_data",
              [self.from_model, self.from_reference, self.from_data], "not all 0 (give one a positive share)")

    def loss(self, context: TrainingContext) -> tuple[Tensor, dict[str, float]]:
        temperature, x, energy, group = self._points(context)
        cap = context.energy_cap if self.energy_cap is None else self.energy_cap
        grid = context.grid
        if self.expectation == "centred":
            residual, _ = centred_trade_residual(context.generator.log_prob, x, temperature, energy, group,
                                                 self.n_centres, cap, context.all_reduce)
        else:
            mean_energy = grid.mean_energy_at(temperature.cpu()).to(context.device)
            residual = trade_residual(context.generator.log_prob, x, temperature, energy, mean_energy, cap)
        losses = huber(residual, self.huber_delta)
        weights = grid.causality_weight_at(temperature.cpu(), self.causality_epsilon)
        loss = context.mean(weights.to(losses) * losses, self.batch_size)
        if context.everywhere(bool(torch.all(torch.isfinite(losses)))):
            grid.update_losses(temperature.cpu(), losses.cpu())
        return loss, {"trade": float(loss.detach())}

    def _points(self, context: TrainingContext) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """This rank's temperatures ``[n]`` K, detached points ``[n, ...]``, their energies ``[n]`` kJ/mol and group
        ids ``[n]``.

        With expectation ``"grid"`` every point has its own temperature (group ids unused); with ``"centred"``
        :attr:`n_centres` temperatures are drawn and the batch (model, reference and data points, in that order) is
        dealt out among them in turn, so every group mixes all kinds of points.
        """
        n = self.batch_size
        shares = [self.from_model, self.from_reference, self.from_data if context.data is not None else 0.0]
        total = sum(shares)
        n_model = round(n * shares[0] / total)
        n_data = round(n * shares[2] / total)
        n_reference = n - n_model - n_data
        parts = ((0, n_model), (n_model, n - n_data), (n - n_data, n))   # model, reference and data points
        if self.expectation == "centred":
            levels = context.log_uniform(self.n_centres, context.trained_range)
            groups = torch.arange(n) % self.n_centres
            drawn = levels[groups]
        else:
            drawn = context.log_uniform(n, context.trained_range)
            groups = torch.zeros(n, dtype=torch.long)
        temperature = torch.cat([context.local(drawn[a:b]) for a, b in parts])
        group = torch.cat([context.local(groups[a:b]) for a, b in parts])
        points, energies = [], []
        with torch.no_grad():
            for count, at in ((n_model, drawn[:n_model]), (n_reference, context.reference_temperature)):
                if count > 0:
                    x, _ = context.sample(count, at)
                    points.append(x)
                    energies.append(context.energy(x).to(torch.float64) if x.shape[0] else
                                    torch.zeros(0, dtype=torch.float64, device=x.device))
            if n_data > 0:
                index = context.data_indices(n_data)
                points.append(context.data[index])
                energies.append(context.data_energy[index])
        return (temperature.to(context.device), torch.cat(points).detach(), torch.cat(energies),
                group.to(context.device))
