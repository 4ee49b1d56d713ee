"""Analytic toy systems: exact thermodynamics against closed forms, exact samplers, KL helper, toy generators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trade_md.errors import InputError
from trade_md.thermo import KB
from trade_md.toys import (
    TOYS,
    DoubleWell1D,
    DoubleWell2D,
    HarmonicOscillator,
    ToySystem,
    kl_divergence,
    make_toy,
    toy_from_spec,
    toy_generator,
)

ALL_TOYS = [DoubleWell1D(), DoubleWell2D(), HarmonicOscillator()]


@pytest.mark.parametrize("temperature", [150.0, 300.0, 600.0])
def test_harmonic_closed_form_matches_quadrature(temperature: float) -> None:
    toy = HarmonicOscillator()
    assert float(toy.log_Z(temperature)) == pytest.approx(float(ToySystem.log_Z(toy, temperature)), abs=1e-10)
    assert float(toy.mean_energy(temperature)) == pytest.approx(
        float(ToySystem.mean_energy(toy, temperature)), abs=1e-9
    )


def test_harmonic_wide_box_is_equipartition() -> None:
    toy = HarmonicOscillator(stiffness=(40.0, 10.0, 25.0), half_width=20.0)
    t = 450.0
    assert float(toy.mean_energy(t)) == pytest.approx(1.5 * KB * t, rel=1e-12)
    sigma2 = KB * t / np.array([40.0, 10.0, 25.0])
    assert float(toy.log_Z(t)) == pytest.approx(0.5 * np.sum(np.log(2 * np.pi * sigma2)), abs=1e-12)


@pytest.mark.parametrize("toy", ALL_TOYS, ids=lambda toy: toy.name)
def test_log_z_derivative_is_mean_reduced_energy(toy: ToySystem) -> None:
    log_t = torch.log(torch.tensor([160.0, 300.0, 590.0], dtype=torch.float64)).requires_grad_(True)
    (derivative,) = torch.autograd.grad(toy.log_Z(torch.exp(log_t)).sum(), log_t)
    temperature = torch.exp(log_t.detach())
    expected = toy.mean_energy(temperature) / (KB * temperature)
    torch.testing.assert_close(derivative, expected, rtol=1e-9, atol=1e-9)


def test_double_well_density_normalised_by_independent_rule() -> None:
    toy = DoubleWell1D()
    x = torch.linspace(-toy.half_width, toy.half_width, 20001, dtype=torch.float64).unsqueeze(-1)
    for t in (150.0, 600.0):
        assert float(torch.trapezoid(torch.exp(toy.log_density(x, t)), x[:, 0])) == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("toy", ALL_TOYS, ids=lambda toy: toy.name)
@pytest.mark.parametrize("temperature", [150.0, 600.0])
def test_exact_samples_match_exact_expectations(toy: ToySystem, temperature: float) -> None:
    n = 40000
    x = toy.sample(n, temperature, generator=torch.Generator().manual_seed(7))
    assert x.shape == (n, toy.dim) and x.dtype == torch.float64
    assert bool(torch.all((x >= torch.tensor(toy.low)) & (x <= torch.tensor(toy.high))))
    energy = toy.potential(x)
    standard_error = float(energy.std()) / math.sqrt(n)
    assert abs(float(energy.mean() - toy.mean_energy(temperature))) < 4 * standard_error
    points, log_weights, _ = toy.quadrature() if toy.dim <= 2 else (None, None, None)
    left = torch.exp(log_weights + toy.log_density(points, temperature))[points[:, 0] < 0].sum()
    fraction = float((x[:, 0] < 0).double().mean())
    assert abs(fraction - float(left)) < 4 * math.sqrt(float(left) * (1 - float(left)) / n)


def test_double_well_populations_change_with_temperature() -> None:
    toy = DoubleWell1D()
    points, log_weights, _ = toy.quadrature()
    left = {t: float(torch.exp(log_weights + toy.log_density(points, t))[points[:, 0] < 0].sum()) for t in (150, 600)}
    assert left[150] > 0.88 and left[600] < 0.66


def test_kl_divergence_against_analytic_gaussian_kl() -> None:
    # Wide boxes (negligible truncation): KL(N(0, σp²) ‖ N(0, σq²)) per dim = (r − 1 − log r)/2, r = Tp/Tq.
    t_p, t_q = 300.0, 432.0
    ratio = t_p / t_q
    per_dim = 0.5 * (ratio - 1.0 - math.log(ratio))
    toy2 = HarmonicOscillator(stiffness=(40.0, 10.0), half_width=(2.0, 4.0))
    exact_q = lambda x, t: toy2.log_density(x, torch.full_like(t, t_q))
    assert kl_divergence(toy2, exact_q, t_p) == pytest.approx(2 * per_dim, rel=1e-6)
    toy3 = HarmonicOscillator(stiffness=(40.0, 10.0, 20.0), half_width=(2.0, 4.0, 3.0))
    exact_q3 = lambda x, t: toy3.log_density(x, torch.full_like(t, t_q))
    estimate = kl_divergence(toy3, exact_q3, t_p, n_samples=40000, generator=torch.Generator().manual_seed(3))
    assert estimate == pytest.approx(3 * per_dim, abs=0.004)  # Monte Carlo: SE ≈ 0.0015


def test_kl_divergence_of_exact_density_is_zero() -> None:
    toy = DoubleWell2D()
    exact = lambda x, t: toy.log_density(x, 250.0)
    assert abs(kl_divergence(toy, exact, 250.0)) < 1e-10


@pytest.mark.parametrize("toy", ALL_TOYS, ids=lambda toy: toy.name)
def test_spec_round_trip(toy: ToySystem) -> None:
    rebuilt = toy_from_spec(toy.spec())
    assert type(rebuilt) is type(toy) and rebuilt.spec() == toy.spec()
    x = toy.sample(10, 300.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rebuilt.potential(x), toy.potential(x))
    assert set(TOYS) == {"harmonic-oscillator", "double-well-1d", "double-well-2d"}


def test_bad_toy_input_raises_input_error() -> None:
    with pytest.raises(InputError, match="unknown toy"):
        make_toy("triple-well")
    with pytest.raises(InputError, match="bad parameters"):
        make_toy("double-well-1d", depth=3.0)
    with pytest.raises(InputError, match="half_width"):
        HarmonicOscillator(stiffness=(1.0, 2.0), half_width=(1.0,))
    with pytest.raises(InputError, match=r"shape \[n, 1\]"):
        DoubleWell1D().potential(torch.zeros(3, 2))
    with pytest.raises(InputError, match="> 0 K"):
        DoubleWell1D().log_Z(torch.tensor([-1.0]))


def _random_generator(toy: ToySystem) -> torch.nn.Module:
    torch.manual_seed(5)
    generator = toy_generator(toy, 300.0, n_layers=3, hidden=16, n_bins=8).double()
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return generator


@pytest.mark.parametrize("temperature", [150.0, 300.0, 600.0])
def test_toy_generator_samples_follow_its_density(temperature: float) -> None:
    """Pitfall 2 of the design notes: samples at T must follow log_prob at the same T (histogram vs density)."""
    toy = DoubleWell1D()
    generator = _random_generator(toy)
    with torch.no_grad():
        x, log_q = generator.sample(60000, temperature, generator=torch.Generator().manual_seed(11))
        torch.testing.assert_close(log_q, generator.log_prob(x, temperature), atol=1e-8, rtol=1e-8)
        edges = torch.linspace(toy.low[0], toy.high[0], 31, dtype=torch.float64)
        counts = torch.histc(x[:, 0], bins=30, min=toy.low[0], max=toy.high[0])
        fine = torch.linspace(toy.low[0], toy.high[0], 30001, dtype=torch.float64)
        density = torch.exp(generator.log_prob(fine.unsqueeze(-1), temperature))
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumulative_trapezoid(density, fine)])
        expected = torch.diff(torch.from_numpy(np.interp(edges.numpy(), fine.numpy(), cdf.numpy())))
    assert float(cdf[-1]) == pytest.approx(1.0, abs=1e-4)
    chi2 = float(torch.sum((counts - 60000 * expected) ** 2 / (60000 * expected)))
    assert chi2 < 70.0  # 29 degrees of freedom: P(chi2 > 70) < 1e-4
    # the temperature reaches the sampler: the samples differ from those at T0 in distribution
    if temperature != 300.0:
        with torch.no_grad():
            reference, _ = generator.sample(60000, 300.0, generator=torch.Generator().manual_seed(11))
        assert abs(float(reference.std() - x.std())) > 0.01
