"""The objectives' common parts: the weight schedule, the checks of their settings, and the training context that
hands each objective its shard of every global batch (their physics is tested through the trainer, test_train.py)."""

from __future__ import annotations

import pytest
import torch

from trade_md.distributed import DistributedContext
from trade_md.errors import InputError
from trade_md.objectives import NLL, OBJECTIVES, Tilt, TradeResidual, TrainingContext
from trade_md.toys import DoubleWell1D, toy_generator


def test_an_objective_weight_ramps_in_from_its_start() -> None:
    tilt = Tilt(weight=2.0, start=10, ramp=4)
    assert [tilt.factor(step) for step in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
    assert NLL(weight=0.5).factor(0) == 0.5                       # terms at T0 default to a constant weight
    assert [cls.name for cls in OBJECTIVES.values()] == list(OBJECTIVES)


def test_objective_settings_are_checked_by_name() -> None:
    with pytest.raises(InputError, match=r"objectives\.tilt: batch_size = 0 is invalid"):
        Tilt(batch_size=0).check("objectives.tilt", (300.0, 900.0))
    with pytest.raises(InputError, match=r"span = \[250\.0, 600\.0\] is invalid.*300\.0 <= low"):
        Tilt(span=[250.0, 600.0]).check("objectives.tilt", (300.0, 900.0))
    with pytest.raises(InputError, match="not all 0"):
        TradeResidual(from_model=0.0, from_reference=0.0, from_data=0.0).check("objectives.trade", (300.0, 900.0))
    Tilt(span=[300.0, 600.0]).check("objectives.tilt", (300.0, 900.0))


def _context(rank: int, world: int) -> TrainingContext:
    toy = DoubleWell1D()
    distributed = None if world == 1 else DistributedContext(rank, world, rank, torch.device("cpu"))
    return TrainingContext(toy_generator(toy, 300.0, n_layers=1, hidden=4, n_bins=4), rng=torch.Generator(),
                           energy=toy.potential, data=None, trained_range=(150.0, 600.0), grid=None,
                           energy_cap=1000.0, distributed=distributed)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_the_shards_of_the_ranks_partition_every_global_batch(world: int) -> None:
    """Every draw of a global batch of n belongs to exactly one rank (in order), even with more ranks than draws;
    the ranks' ``mean`` contributions add up to the global mean."""
    for n in (1, 4, 7, 126):
        values = torch.arange(n, dtype=torch.float64)
        parts = [_context(rank, world).local(values) for rank in range(world)]
        assert torch.equal(torch.cat(parts), values)
        total = sum(float(_context(rank, world).mean(part, n)) for rank, part in enumerate(parts)) / world
        assert total == pytest.approx(float(values.mean()), rel=1e-12)
