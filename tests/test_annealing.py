"""Annealed importance sampling: exact on a solvable toy whatever the proposal, plain importance sampling as its
one-level case, a base-space random walk that keeps the uniform base invariant, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from trade_md.annealing import Annealing, anneal
from trade_md.errors import InputError
from trade_md.sampler import Sampler
from trade_md.toys import DoubleWell2D, toy_generator
from trade_md.thermo import KB

TEMPERATURE = 150.0


@pytest.fixture(scope="module")
def toy() -> tuple[DoubleWell2D, Sampler]:
    """The 2-D double well with an *untrained* generator: q is uniform on the box, a poor proposal at 150 K."""
    system = DoubleWell2D()
    generator = toy_generator(system, 300.0, n_layers=2, hidden=8, n_bins=4).double()

    def energy(positions: np.ndarray) -> np.ndarray:
        return system.potential(torch.as_tensor(positions)).double().numpy()

    return system, Sampler(generator, energy)


def weighted_mean_and_error(log_w: np.ndarray, values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Self-normalised mean of ``values`` and its bootstrap standard error (200 resamples)."""
    w = np.exp(log_w - log_w.max())
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(200):
        i = rng.integers(0, len(w), len(w))
        boot.append(np.sum(w[i] * values[i]) / w[i].sum())
    return float(np.sum(w * values) / w.sum()), float(np.std(boot))


def test_annealed_weights_are_exact_and_beat_plain_importance_sampling(toy: tuple) -> None:
    # From a uniform proposal at 150 K the plain weights are poor; AIS must (a) agree with quadrature for <U> and
    # for the x > 0 basin's share within 4 bootstrap standard errors, those errors below a tenth of the spread of
    # U (resp. 0.05), and (b) give at least 1.8 times the plain Kish ESS (measured over seeds 0-4: 3.2-3.4 % ->
    # 7.4-8.3 %, ratio 2.3-2.5; AIS cannot move draws between the wells, so the basin masses still cost weight).
    system, sampler = toy
    torch.manual_seed(0)
    plain = sampler.sample(6000, TEMPERATURE, progress=False)
    torch.manual_seed(0)
    annealed = sampler.sample(6000, TEMPERATURE, progress=False, annealing=Annealing(levels=8, steps=2, step_size=0.1))
    assert annealed.ess > 1.8 * plain.ess, (plain.ess, annealed.ess)
    exact_u = float(system.mean_energy(TEMPERATURE))
    estimate, error = weighted_mean_and_error(annealed.log_weights, annealed.energies)
    assert error < 0.1 * float(np.std(annealed.energies))
    assert abs(estimate - exact_u) < 4.0 * error, (estimate, exact_u, error)
    x, log_w = system.quadrature()[:2]
    exact_share = float(torch.sum(torch.exp(log_w + system.log_density(x, TEMPERATURE)) * (x[:, 0] > 0)))
    assert 0.05 < exact_share < 0.95
    share, share_error = weighted_mean_and_error(annealed.log_weights, (annealed.positions[:, 0] > 0).astype(float))
    assert share_error < 0.05 and abs(share - exact_share) < 4.0 * share_error, (share, exact_share, share_error)
    assert annealed.acceptance is not None and annealed.acceptance.shape == (7,)
    assert np.all((annealed.acceptance > 0.05) & (annealed.acceptance < 1.0))


def test_one_level_is_plain_importance_sampling(toy: tuple) -> None:
    # With a single level nothing moves: the draws and their weights are those of q itself, log W = -U/kT - log q.
    system, sampler = toy
    torch.manual_seed(5)
    draws = anneal(sampler.generator, sampler.energy, 500, TEMPERATURE, Annealing(levels=1, steps=3))
    torch.manual_seed(5)
    with torch.no_grad():
        x, log_q = sampler.generator.sample(500, TEMPERATURE)
    np.testing.assert_allclose(draws.positions.numpy(), x.detach().numpy(), atol=1e-12)
    expected = -system.potential(x).double().numpy() / (KB * TEMPERATURE) - log_q.detach().numpy()
    np.testing.assert_allclose(draws.log_weights, expected, rtol=1e-12, atol=1e-9)
    assert draws.acceptance.shape == (0,)


def test_base_random_walk_keeps_the_uniform_base_invariant(toy: tuple) -> None:
    # fold_into_base after a symmetric step must map uniform points to uniform points, inside the domains; checked
    # by a Kolmogorov-Smirnov test per coordinate (p > 1e-3; a missing fold or a one-sided clamp gives p ~ 0).
    _, sampler = toy
    flow = sampler.generator.flow
    torch.manual_seed(2)
    u = sampler.generator.draw_base(50000)
    moved = flow.fold_into_base(u + 0.7 * torch.randn_like(u))
    low, high = flow._low.numpy(), flow._high.numpy()
    assert np.all((moved.numpy() >= low) & (moved.numpy() <= high))
    for j in range(u.shape[1]):
        scaled = (moved[:, j].numpy() - low[j]) / (high[j] - low[j])
        assert stats.kstest(scaled, "uniform").pvalue > 1e-3
    # the fold itself: reflection at interval ends, wrapping of angles
    interval = torch.tensor([[1.3], [-1.2], [3.5]], dtype=torch.float64)
    reflected = flow.fold_into_base(interval.expand(3, u.shape[1]).clone() * (high[0] - low[0]) / 2.0)
    half = (high[0] - low[0]) / 2.0
    np.testing.assert_allclose(reflected[:, 0].numpy() / half, [0.7, -0.8, -0.5], atol=1e-12)


def test_wrapping_of_circular_coordinates() -> None:
    from trade_md.flows import ConditionalSplineFlow
    from trade_md.splines import Domain

    flow = ConditionalSplineFlow([Domain.circular(), Domain.interval(-1.0, 1.0)], n_layers=2, hidden=8)
    folded = flow.fold_into_base(torch.tensor([[math.pi + 0.1, 0.5], [-math.pi - 0.3, 0.2]], dtype=torch.float64))
    np.testing.assert_allclose(folded[:, 0].numpy(), [-math.pi + 0.1, math.pi - 0.3], atol=1e-12)


def test_bad_annealing_settings_name_the_fix(toy: tuple) -> None:
    _, sampler = toy
    for bad, match in [({"levels": 0}, "levels"), ({"steps": -1}, "steps"), ({"step_size": 0.0}, "step size"),
                       ({"step_size": 1.5}, "step size"), ({"levels": 2.5}, "whole number")]:
        with pytest.raises(InputError, match=match):
            Annealing(**bad)
    with pytest.raises(InputError, match="LEVELS:STEPS:STEP_SIZE"):
        Annealing.parse("10:2")
    assert Annealing.parse("10:2:0.05") == Annealing(10, 2, 0.05)
    with pytest.raises(InputError, match="combines with neither"):
        sampler.sample(10, TEMPERATURE, progress=False, mixture=[(300.0, 0.2)], annealing=Annealing())
    with pytest.raises(InputError, match="whole number"):
        sampler.sample(150.0, 100, progress=False)  # arguments swapped
