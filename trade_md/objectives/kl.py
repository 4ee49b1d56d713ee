"""Reverse KL at T0 on the energy: ``E_q[log q(x | T0) + u_T0(x)]`` = KL(q ‖ p) − log Z(T0) (nats)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from trade_md.objectives.base import Objective
from trade_md.objectives.context import TrainingContext
from trade_md.thermo import reduced_potential
from trade_md.trade import cap_reduced_energy

__all__ = ["ReverseKL"]


@dataclass(frozen=True)
class ReverseKL(Objective):
    """Reverse KL of ``batch_size`` model samples per step at T0 (energies only, no data; u capped at
    ``energy.cap``). Mixed with ``nll`` it corrects basin populations a finite MD run gets wrong and keeps the
    flow from overfitting the frames."""

    name: ClassVar[str] = "kl"
    trains_t0: ClassVar[bool] = True

    batch_size: int = 256

    def loss(self, context: TrainingContext) -> tuple[Tensor, dict[str, float]]:
        t0 = context.reference_temperature
        x, log_q = context.sample(self.batch_size, t0)
        u = cap_reduced_energy(reduced_potential(context.energy(x).to(log_q.dtype), t0), context.energy_cap)
        kl = context.mean(log_q + u, self.batch_size)
        return kl, {"kl": float(kl.detach())}
