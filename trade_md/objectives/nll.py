"""Maximum likelihood on the data at T0: ``−E_data[log q(x | T0)]`` (nats per frame)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from trade_md.objectives.base import Objective
from trade_md.objectives.context import TrainingContext

__all__ = ["NLL"]


@dataclass(frozen=True)
class NLL(Objective):
    """NLL of ``batch_size`` data frames per step, drawn with replacement from the training frames at T0.

    Maximum likelihood alone overfits a finite MD set within a few thousand steps (validation NLL rises, the ESS at
    T0 falls; benchmarks/results/README.md); mixed with ``kl`` it does not.
    """

    name: ClassVar[str] = "nll"
    trains_t0: ClassVar[bool] = True
    needs_data: ClassVar[bool] = True

    batch_size: int = 256

    def loss(self, context: TrainingContext) -> tuple[Tensor, dict[str, float]]:
        frames = context.data[context.data_indices(self.batch_size)]
        nll = context.mean(-context.generator.log_prob(frames, context.reference_temperature), self.batch_size)
        return nll, {"nll": float(nll.detach())}
