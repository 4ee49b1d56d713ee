"""What an objective sees of a training run: the model, one random stream, energies, data and the expectation grid,
with every batch drawn for the whole (global) batch and handed out as this process's shard.

Data parallelism lives here and in :mod:`trade_md.distributed`, not in the objectives. All ranks follow the same
random stream and draw every global batch's random numbers; each rank transforms, evaluates and back-propagates
only its contiguous slice of ``1/world_size`` of the draws (:meth:`TrainingContext.sample`,
:meth:`TrainingContext.data_indices`, :meth:`TrainingContext.local`), and :meth:`TrainingContext.mean` turns a
slice of per-point values into the global batch mean once the trainer has averaged the gradients over ranks
(``world_size × Σ_slice / n``). On one process every slice is the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from trade_md.distributed import DistributedContext
from trade_md.generator import Generator
from trade_md.trade import sample_log_uniform

if TYPE_CHECKING:
    from trade_md.objectives.expectation_grid import ExpectationGrid

__all__ = ["TrainingContext"]


class TrainingContext:
    """The shared state of a run that the objectives draw from (see the module docs).

    generator: the model (its ``reference_temperature`` is T0); rng: the run's random stream; energy: ``x -> U [n]``
    kJ/mol (counted by the trainer; None without a potential); data: training frames at T0 ``[n, ...]`` in the
    model's dtype and device, or None; trained_range: ``(T_min, T_max)`` K or None (T0 only); grid: the
    :class:`~trade_md.objectives.expectation_grid.ExpectationGrid` (None without a range); energy_cap: k_B T
    above which reduced energies grow only logarithmically; distributed: this rank's context under torchrun.
    """

    def __init__(
        self,
        generator: Generator,
        *,
        rng: torch.Generator,
        energy: Callable[[Tensor], Tensor] | None,
        data: Tensor | None,
        trained_range: tuple[float, float] | None,
        grid: ExpectationGrid | None,
        energy_cap: float,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.generator = generator
        self.rng = rng
        self.energy = energy
        self.data = data
        self.trained_range = trained_range
        self.grid = grid
        self.energy_cap = energy_cap
        self.distributed = distributed
        self.data_energy: Tensor | None = None
        """``U [n_frames]`` kJ/mol (float64) of the training frames, once :meth:`evaluate_data_energies` ran."""

    @property
    def reference_temperature(self) -> float:
        """T0 in K."""
        return self.generator.reference_temperature

    @property
    def device(self) -> torch.device:
        return self.generator.device

    @property
    def all_reduce(self) -> Callable[[Tensor, str], Tensor] | None:
        """``(tensor, "sum" | "max") -> tensor`` over ranks for group statistics; None on one process."""
        return None if self.distributed is None else self.distributed.all_reduce

    def everywhere(self, flag: bool) -> bool:
        """``flag`` on every rank (so that all ranks take the same branch and reach the same collectives)."""
        return flag if self.distributed is None else self.distributed.all_true(flag)

    # ------------------------------------------------------------------------------------------- shards
    def share(self, n: int) -> slice:
        """This rank's slice of ``n`` draws of a global batch (all of them on one process)."""
        if self.distributed is None:
            return slice(0, n)
        rank, world = self.distributed.rank, self.distributed.world_size
        return slice(n * rank // world, n * (rank + 1) // world)

    def local(self, values: Tensor) -> Tensor:
        """This rank's part of per-draw values ``[n, ...]`` drawn for the whole batch (e.g. temperatures)."""
        return values[self.share(values.shape[0])]

    def mean(self, values: Tensor, n: int) -> Tensor:
        """Mean over the global batch of ``n`` draws, from this rank's ``values`` (exact once the gradients are
        averaged over ranks)."""
        if self.distributed is None:
            return values.mean()
        return values.sum() * (self.distributed.world_size / n)

    def total(self, values: Tensor) -> Tensor:
        """Sum over the global batch from this rank's ``values`` (exact once the gradients are averaged)."""
        world = 1 if self.distributed is None else self.distributed.world_size
        return torch.sum(values) * world

    # ------------------------------------------------------------------------------------------- draws
    def log_uniform(self, n: int, span: Sequence[float]) -> Tensor:
        """``n`` temperatures ``[n]`` K (float64, CPU) drawn log-uniformly over ``span``, the same on every rank."""
        return sample_log_uniform(n, float(span[0]), float(span[1]), generator=self.rng)

    def data_indices(self, n: int) -> Tensor:
        """This rank's slice of ``n`` random indices into :attr:`data` (all ranks draw the same ``n``)."""
        return torch.randint(self.data.shape[0], (n,), generator=self.rng)[self.share(n)].to(self.device)

    def sample(self, n: int, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
        """This rank's slice of ``n`` model samples ``(x, log q)`` at ``temperature`` (float K or ``[n]`` K).

        Every rank advances the random stream past all ``n`` samples (the flow draws one uniform per feature and
        sample) but transforms only its own slice, so the ranks together draw exactly what one process would.
        """
        if isinstance(temperature, Tensor):
            temperature = temperature.to(self.device)
        if self.distributed is None:
            return self.generator.sample(n, temperature, generator=self.rng)
        mine = self.share(n)
        self._skip_draws(mine.start)
        if mine.stop > mine.start:
            if isinstance(temperature, Tensor) and temperature.numel() > 1:
                temperature = temperature[mine]
            x, log_q = self.generator.sample(mine.stop - mine.start, temperature, generator=self.rng)
        else:                                              # more ranks than draws: an empty slice of the right shape
            x, log_q = self.generator.sample(1, self.reference_temperature, generator=torch.Generator())
            x, log_q = x[:0], log_q[:0]
        self._skip_draws(n - mine.stop)
        return x, log_q

    def _skip_draws(self, n: int) -> None:
        """Advance the random stream past ``n`` flow samples (``[n, d]`` uniforms in the model's dtype)."""
        if n > 0:
            torch.rand(n, self.generator.flow.dim, generator=self.rng, dtype=self.generator.dtype)

    # ------------------------------------------------------------------------------------------- energies
    @torch.no_grad()
    def energies(self, x: Tensor, chunk: int = 4096) -> Tensor:
        """``U(x)`` ``[n]`` kJ/mol (float64) in chunks, without gradients."""
        return torch.cat([self.energy(part).detach().to(torch.float64) for part in torch.split(x, chunk)])

    def evaluate_data_energies(self) -> None:
        """Set :attr:`data_energy`; under torchrun each rank evaluates a contiguous share and all ranks pool them."""
        if self.distributed is None:
            self.data_energy = self.energies(self.data)
            return
        n = self.data.shape[0]
        mine = self.share(n)
        energy = torch.zeros(n, dtype=torch.float64, device=self.device)
        if mine.stop > mine.start:
            energy[mine] = self.energies(self.data[mine]).to(self.device)
        self.data_energy = self.distributed.all_reduce(energy)
