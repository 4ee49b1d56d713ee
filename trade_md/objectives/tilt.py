"""The tilt term: importance-weighted maximum likelihood of the exact TRADE solution q(x | T0) e^{−(β − β0) U} / Z."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from trade_md.objectives.base import Objective
from trade_md.objectives.context import TrainingContext
from trade_md.thermo import reduced_potential
from trade_md.trade import cap_reduced_energy, group_softmax

__all__ = ["Tilt"]


@dataclass(frozen=True)
class Tilt(Objective):
    """Forward KL from the exact solution of the TRADE equation for the model at T0, q(x | T0) exp(−(β − β0) U) / Z,
    to q(x | T), estimated with self-normalised importance weights on the model's own samples at T.

    Per step ``batch_size`` samples in ``temperatures_per_step`` groups (at most batch_size / 2) that share a
    temperature drawn log-uniformly over ``span`` (K; the trained range when absent); weights normalised within
    each group; u capped at ``energy_cap`` (absent: ``energy.cap``). Same fixed point as the TRADE residual, without
    derivatives in the loss; with ``trainable: temperature`` its target is fixed. At T > T0 the exact tilt
    multiplies the boundary's high-energy samples by exp((β0 − β) U): use it below T0, with ``kl_range`` above
    (``trade_md.analysis.metrics.tilted_ess`` says what the tilt is worth at each T).
    """

    name: ClassVar[str] = "tilt"
    acts_away_from_t0: ClassVar[bool] = True

    ramp: int = 2000
    span: list[float] | None = None
    batch_size: int = 256
    temperatures_per_step: int = 16
    energy_cap: float | None = None

    def loss(self, context: TrainingContext) -> tuple[Tensor, dict[str, float]]:
        n = self.batch_size
        n_groups = max(1, min(self.temperatures_per_step, n // 2))
        levels = context.log_uniform(n_groups, self.span_or(context.trained_range))
        groups = torch.arange(n) % n_groups
        with torch.no_grad():
            x, log_q_sampled = context.sample(n, levels[groups])
        temperature = context.local(levels[groups]).to(device=context.device, dtype=log_q_sampled.dtype)
        group = context.local(groups).to(context.device)
        t0 = context.reference_temperature
        cap = context.energy_cap if self.energy_cap is None else self.energy_cap
        u = cap_reduced_energy(reduced_potential(context.energy(x).to(log_q_sampled.dtype), temperature), cap)
        with torch.no_grad():
            log_q0 = context.generator.log_prob(x, t0)
        log_w = log_q0 - u * (1.0 - temperature / t0) - log_q_sampled      # −(β − β0) U = −u_T (1 − T / T0)
        weights = group_softmax(log_w, group, n_groups, context.all_reduce)
        log_q = context.generator.log_prob(x, temperature)
        loss = -context.total(weights.to(log_q) * log_q) / n_groups
        return loss, {"tilt": float(loss.detach())}
