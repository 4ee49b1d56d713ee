"""Reverse KL over a temperature span: ``E_T E_q[log q(x | T) + u_T(x)]`` with T log-uniform over the span."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from trade_md.objectives.base import Objective
from trade_md.objectives.context import TrainingContext
from trade_md.thermo import reduced_potential
from trade_md.trade import cap_reduced_energy

__all__ = ["RangeReverseKL"]


@dataclass(frozen=True)
class RangeReverseKL(Objective):
    """Reverse KL on the energy at ``batch_size`` temperatures per step drawn log-uniformly over ``span`` (K; the
    trained range when absent), one model sample each; u capped at ``energy.cap``. No data.

    Its minimum is the Boltzmann density at every T, so it cannot bias the transfer (the constant −log Z(T) of each
    T does not reach the gradient). Above T0 it replaces the exact tilt of an imperfect boundary, which multiplies
    the boundary's few high-energy samples by exp((β0 − β) U): the split recipe (benchmarks/configs/ala2_split.yaml)
    uses it over [T0, T_max].
    """

    name: ClassVar[str] = "kl_range"
    acts_away_from_t0: ClassVar[bool] = True
    trains_t0: ClassVar[bool] = True

    ramp: int = 2000
    span: list[float] | None = None
    batch_size: int = 256

    def loss(self, context: TrainingContext) -> tuple[Tensor, dict[str, float]]:
        n = self.batch_size
        temperature = context.log_uniform(n, self.span_or(context.trained_range))
        x, log_q = context.sample(n, temperature)
        local = context.local(temperature).to(device=context.device, dtype=log_q.dtype)
        u = cap_reduced_energy(reduced_potential(context.energy(x).to(log_q.dtype), local), context.energy_cap)
        kl = context.mean(log_q + u, n)
        return kl, {"kl_range": float(kl.detach())}
