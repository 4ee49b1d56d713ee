"""Maximum likelihood at T on the T0 frames reweighted to T by e^{−(β − β0) U}: a sample of p(x | T) exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from trade_md.objectives.base import Objective
from trade_md.objectives.context import TrainingContext
from trade_md.thermo import reduced_potential

__all__ = ["ReweightedNLL"]


@dataclass(frozen=True)
class ReweightedNLL(Objective):
    """NLL at T of ``batch_size`` T0 frames drawn with probabilities ∝ exp(−(β − β0) U) over the whole training
    set, in ``temperatures_per_step`` groups (at most batch_size / 2) that share a temperature T drawn
    log-uniformly over ``span`` (K; the trained range when absent).

    The T0 data reweighted to T is a sample of the Boltzmann density at T exactly (the TRADE identity integrated on
    the data, not on the model), so it covers a mode the data holds and the model's own samples miss (cis peptide
    bonds). Its effective number of frames falls fast away from T0
    (:func:`trade_md.analysis.metrics.reweighted_frames`): keep ``span`` where it is in the hundreds or more. Part of
    the best alanine-dipeptide recipe (benchmarks/configs/ala2_split_pt12.yaml, over 600–900 K).
    """

    name: ClassVar[str] = "reweighted_nll"
    acts_away_from_t0: ClassVar[bool] = True
    needs_data: ClassVar[bool] = True

    ramp: int = 2000
    span: list[float] | None = None
    batch_size: int = 256
    temperatures_per_step: int = 16

    @property
    def needs_data_energies(self) -> bool:
        return True

    def loss(self, context: TrainingContext) -> tuple[Tensor, dict[str, float]]:
        n_groups = max(1, min(self.temperatures_per_step, self.batch_size // 2))
        per_group = self.batch_size // n_groups
        n = n_groups * per_group
        levels = context.log_uniform(n_groups, self.span_or(context.trained_range))
        energy = context.data_energy.cpu()[None, :]
        log_w = reduced_potential(energy, context.reference_temperature) - reduced_potential(energy, levels[:, None])
        probabilities = torch.softmax(log_w, dim=1)
        index = torch.multinomial(probabilities, per_group, replacement=True, generator=context.rng).reshape(n)
        temperature = context.local(levels.repeat_interleave(per_group)).to(device=context.device,
                                                                              dtype=context.generator.dtype)
        log_q = context.generator.log_prob(context.data[context.local(index).to(context.device)], temperature)
        loss = context.mean(-log_q, n)
        return loss, {"reweighted_nll": float(loss.detach())}
