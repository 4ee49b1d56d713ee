"""TRADE building blocks (trade_md.trade): energy capping, importance estimates and ESS, the residual; and the
expectation grid (trade_md.objectives.expectation_grid)."""

from __future__ import annotations

import math

import pytest
import torch

from trade_md.analysis.metrics import kish_ess as numpy_kish_ess
from trade_md.errors import InputError
from trade_md.objectives.expectation_grid import ExpectationGrid
from trade_md.thermo import KB, reduced_potential
from trade_md.toys import DoubleWell1D, DoubleWell2D, HarmonicOscillator, ToySystem
from trade_md.trade import (
    NONFINITE_EXCESS,
    cap_reduced_energy,
    centred_trade_residual,
    group_means,
    group_softmax,
    huber,
    importance_estimate,
    integrate_free_energy,
    kish_ess,
    log_temperature_derivative,
    ramp,
    sample_log_uniform,
    trade_residual,
)

T0 = 300.0


# ----------------------------------------------------------------------------------------------- energy capping


def test_cap_is_identity_below_threshold_and_logarithmic_above() -> None:
    u = torch.tensor([-50.0, 0.0, 99.9, 100.0, 101.0, 1e4], dtype=torch.float64)
    capped = cap_reduced_energy(u, threshold=100.0)
    torch.testing.assert_close(capped[:4], u[:4])
    torch.testing.assert_close(capped[4:], 100.0 + torch.log1p(u[4:] - 100.0))


def test_cap_is_continuous_with_continuous_slope_and_monotone() -> None:
    u = torch.linspace(90.0, 110.0, 20001, dtype=torch.float64).requires_grad_(True)
    capped = cap_reduced_energy(u, threshold=100.0)
    (slope,) = torch.autograd.grad(capped.sum(), u)
    capped = capped.detach()
    assert float(torch.diff(capped).abs().max()) < 2e-3          # no jump (grid step 1e-3, slope <= 1)
    assert float(torch.diff(slope).abs().max()) < 2e-3           # slope continuous through the threshold
    assert bool(torch.all(torch.diff(capped) > 0))
    assert float(slope[0]) == 1.0 and 0 < float(slope[-1]) < 0.1


def test_cap_makes_everything_finite_with_finite_gradients() -> None:
    u = torch.tensor([1.0, 1e30, float("inf"), float("nan"), -float("inf")], requires_grad=True)
    capped = cap_reduced_energy(u, threshold=1000.0)
    (grad,) = torch.autograd.grad(capped.sum(), u)
    capped = capped.detach()
    assert bool(torch.all(torch.isfinite(capped)))
    assert float(capped[2]) == float(capped[3]) == 1000.0 + NONFINITE_EXCESS
    assert float(capped[1]) < 1000.0 + NONFINITE_EXCESS
    assert bool(torch.all(torch.isfinite(grad))) and grad.tolist()[2:] == [0.0, 0.0, 0.0]


def test_reduced_energy_divides_by_kt() -> None:
    energy = torch.tensor([2.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(cap_reduced_energy(reduced_potential(energy, 400.0)), energy / (KB * 400.0))


# ----------------------------------------------------------------------------------------------- ESS, estimates


def test_kish_ess_matches_metrics_module() -> None:
    log_w = torch.randn(1000, dtype=torch.float64) * 1.3
    assert float(kish_ess(log_w)) == pytest.approx(numpy_kish_ess(log_w.numpy()), rel=1e-12)
    assert float(kish_ess(torch.tensor([0.0, -math.inf, 0.0]))) == pytest.approx(2 / 3)


def test_ess_of_exact_samples_with_exact_weights_is_one() -> None:
    toy = DoubleWell1D()
    x = toy.sample(5000, 450.0, generator=torch.Generator().manual_seed(2))
    u = toy.potential(x) / (KB * 450.0)
    estimate, ess = importance_estimate(toy.potential(x), u, toy.log_density(x, 450.0))
    assert float(ess) == pytest.approx(1.0, abs=1e-12)
    assert float(estimate) == pytest.approx(float(toy.potential(x).mean()), rel=1e-12)


def test_grid_ess_and_mean_energy_under_known_mismatch() -> None:
    """Samples of the exact density at T' = 1.44 T weighted to T: Kish ESS → Π σp √(2σq² − σp²) / σq²."""
    toy = HarmonicOscillator(stiffness=(40.0, 10.0), half_width=(3.0, 6.0))   # truncation negligible
    t, t_q = 300.0, 432.0
    ratio = math.sqrt(t_q / t)                                                 # σq / σp = 1.2
    analytic = (math.sqrt(2 * ratio**2 - 1) / ratio**2) ** 2                   # 0.9066 for d = 2
    grid = ExpectationGrid(t, t, t_q, n_nodes=2)
    n = 200_000
    x = toy.sample(n, t_q, generator=torch.Generator().manual_seed(4))
    grid.update_node(0, toy.potential(x), toy.log_density(x, t_q))
    assert float(grid.ess[0]) == pytest.approx(analytic, abs=0.01)
    # E_T[U] = k_B T (d/2); the weighted estimate is within 4 standard errors (SE ≈ std(U)/√(n ESS))
    standard_error = float(toy.potential(x).std()) / math.sqrt(n * analytic)
    assert abs(float(grid.mean_energy[0]) - float(toy.mean_energy(t))) < 4 * standard_error


def test_importance_estimate_ignores_non_finite_log_q_and_rejects_all_bad() -> None:
    values = torch.tensor([1.0, 5.0, 3.0], dtype=torch.float64)
    log_q = torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64)
    estimate, ess = importance_estimate(values, torch.zeros(3, dtype=torch.float64), log_q)
    assert float(estimate) == pytest.approx(2.0) and float(ess) == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="diverged"):
        importance_estimate(values, torch.zeros(3), torch.full((3,), float("nan")))


# ----------------------------------------------------------------------------------------------- the residual


@pytest.mark.parametrize("toy", [DoubleWell1D(), DoubleWell2D(), HarmonicOscillator()], ids=lambda toy: toy.name)
def test_residual_vanishes_for_the_exact_density(toy: ToySystem) -> None:
    """r = ∂_logT log p − (u_T − β E_T[U]) is zero for the exact family at every T, at points from anywhere."""
    generator = torch.Generator().manual_seed(8)
    x = torch.cat([toy.sample(100, t, generator=generator) for t in (150.0, T0, 600.0)])
    temperature = sample_log_uniform(x.shape[0], 150.0, 600.0, generator=generator)
    energy = toy.potential(x)
    residual = trade_residual(toy.log_density, x, temperature, energy, toy.mean_energy(temperature)).detach()
    assert float(residual.abs().max()) < 1e-9
    # the test can fail: the pitfall of the official code (expectation term at another power of T) shows up
    wrong = trade_residual(toy.log_density, x, temperature, energy, toy.mean_energy(temperature) * T0 / temperature)
    assert float(wrong.detach().abs().max()) > 0.1
    stale = trade_residual(toy.log_density, x, temperature, energy, toy.mean_energy(T0).expand_as(temperature))
    assert float(stale.detach().abs().max()) > 0.1


@pytest.mark.parametrize("toy", [DoubleWell1D(), DoubleWell2D(), HarmonicOscillator()], ids=lambda toy: toy.name)
def test_centred_residual_vanishes_for_the_exact_density_and_recovers_mean_energy(toy: ToySystem) -> None:
    """With groups of shared temperature, g − mean_group(g) is zero for the exact family (no E[U] needed), and the
    centre is −β E_T[U] up to the sampling error of the group's points."""
    generator = torch.Generator().manual_seed(8)
    levels = torch.tensor([150.0, 220.0, T0, 600.0], dtype=torch.float64)
    group = torch.arange(4).repeat_interleave(250)   # log_density(x, T [n]) integrates Z(T) per point: keep n small
    temperature = levels[group]
    x = torch.cat([toy.sample(250, float(t), generator=generator) for t in levels])
    energy = toy.potential(x)
    residual, centre = centred_trade_residual(toy.log_density, x, temperature, energy, group, 4)
    assert float(residual.detach().abs().max()) < 1e-9
    # exact samples at each level: the centre is the sample mean of −u, within 5 standard errors of −β E_T[U]
    u = energy / (KB * temperature)
    for k in range(4):
        at = group == k
        sigma = float(u[at].std()) / math.sqrt(int(at.sum()))
        assert abs(float(centre[at][0]) + float(toy.mean_energy(levels[k:k + 1])[0] / (KB * levels[k]))) < 5 * sigma
    # the test can fail: a density with the wrong temperature dependence leaves a residual
    def wrong(points: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return toy.log_density(points, T0 + 0.5 * (t - T0))
    bad, _ = centred_trade_residual(wrong, x, temperature, energy, group, 4)
    assert float(bad.detach().abs().max()) > 0.1


def test_group_means_are_detached_per_group_means() -> None:
    values = torch.tensor([1.0, 3.0, 10.0, 20.0, 5.0], requires_grad=True)
    group = torch.tensor([0, 0, 1, 1, 2])
    means = group_means(values, group, 4)
    torch.testing.assert_close(means, torch.tensor([2.0, 2.0, 15.0, 15.0, 5.0]))
    assert not means.requires_grad
    pooled = group_means(values, group, 4, all_reduce=lambda totals, op: 2 * totals)   # two identical ranks
    torch.testing.assert_close(pooled, means)


def test_group_softmax_normalises_within_groups_and_drops_non_finite() -> None:
    log_w = torch.tensor([0.0, math.log(3.0), 1000.0, float("nan"), -math.inf, 2.0], requires_grad=True)
    group = torch.tensor([0, 0, 1, 1, 1, 2])
    weights = group_softmax(log_w, group, 4)
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.75, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    assert not weights.requires_grad
    reduce = {"max": lambda t: t, "sum": lambda t: 2 * t}                                # two identical ranks
    pooled = group_softmax(log_w, group, 4, all_reduce=lambda t, op: reduce[op](t))
    torch.testing.assert_close(pooled, weights / 2)


def test_log_temperature_derivative_matches_finite_difference() -> None:
    toy = DoubleWell1D()
    x = toy.sample(5, 300.0, generator=torch.Generator().manual_seed(9))
    temperature = torch.tensor([170.0, 230.0, 300.0, 410.0, 590.0], dtype=torch.float64)
    log_q, derivative = log_temperature_derivative(toy.log_density, x, temperature)
    h = 1e-5
    finite = (toy.log_density(x, temperature * math.exp(h)) - toy.log_density(x, temperature * math.exp(-h))) / (2 * h)
    torch.testing.assert_close(derivative.detach(), finite, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(log_q.detach(), toy.log_density(x, temperature))
    assert derivative.requires_grad                                      # create_graph: trainable through it


def test_huber_and_ramp() -> None:
    torch.testing.assert_close(huber(torch.tensor([0.5, -3.0]), 1.0), torch.tensor([0.125, 2.5]))
    assert [ramp(s, 10, 4) for s in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert ramp(5, 5, 0) == 1.0


def test_sample_log_uniform_covers_the_range_log_uniformly() -> None:
    t = sample_log_uniform(100_000, 150.0, 600.0, generator=torch.Generator().manual_seed(1))
    assert float(t.min()) >= 150.0 and float(t.max()) <= 600.0
    fraction_below_t0 = float((t < 300.0).double().mean())                  # log-midpoint of 150..600 is 300
    assert fraction_below_t0 == pytest.approx(0.5, abs=0.01)


# ----------------------------------------------------------------------------------------------- the grid


def test_grid_nodes_are_log_spaced_and_include_t0() -> None:
    grid = ExpectationGrid(600.0, 280.0, 1050.0, n_nodes=26)
    nodes = grid.temperatures
    assert grid.n_nodes == 26 and float(nodes[0]) == pytest.approx(280.0) and float(nodes[-1]) == pytest.approx(1050.0)
    assert float(nodes[grid.reference_index]) == 600.0
    spacing = torch.diff(torch.log(nodes))
    assert float(spacing.max() / spacing.min()) < 1.1
    assert ExpectationGrid(300.0, 300.0, 600.0, n_nodes=5).reference_index == 0
    with pytest.raises(InputError, match="T_min <= T0 <= T_max"):
        ExpectationGrid(700.0, 280.0, 600.0)


def test_grid_interpolates_linearly_in_log_t() -> None:
    grid = ExpectationGrid(300.0, 150.0, 600.0, n_nodes=5)
    with pytest.raises(InputError, match="refresh"):
        grid.mean_energy_at(torch.tensor([300.0]))
    grid.mean_energy = torch.log(grid.temperatures) * 2.0 + 1.0          # linear in log T: interpolation is exact
    t = torch.tensor([150.0, 170.0, 300.0, 444.0, 600.0, 900.0], dtype=torch.float64)
    expected = torch.log(t.clamp(150.0, 600.0)) * 2.0 + 1.0
    torch.testing.assert_close(grid.mean_energy_at(t), expected)


def test_grid_refresh_with_an_exact_model_recovers_exact_expectations() -> None:
    toy = DoubleWell1D()
    grid = ExpectationGrid(T0, 150.0, 600.0, n_nodes=5, decay=1.0)
    generator = torch.Generator().manual_seed(12)

    def exact_sampler(n: int, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = float(temperature[0])
        x = toy.sample(n, t, generator=generator)
        return x, toy.log_density(x, t)

    for _ in range(2):                                                   # decay = 1: plain average of refreshes
        grid.refresh(exact_sampler, toy.potential, 4000)
    exact = toy.mean_energy(grid.temperatures)
    standard_error = torch.tensor([float(toy.potential(toy.sample(4000, float(t))).std()) for t in grid.temperatures])
    assert bool(torch.all((grid.mean_energy - exact).abs() < 4 * standard_error / math.sqrt(8000)))
    torch.testing.assert_close(grid.ess, torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(grid.sample_weight, torch.full((5,), 8000.0, dtype=torch.float64))


def test_grid_decay_zero_replaces_the_estimate() -> None:
    grid = ExpectationGrid(T0, 150.0, 600.0, n_nodes=3, decay=0.0)
    zeros = torch.zeros(10, dtype=torch.float64)
    grid.update_node(1, torch.full((10,), 5.0, dtype=torch.float64), zeros)
    grid.update_node(1, torch.full((10,), 7.0, dtype=torch.float64), zeros)
    assert float(grid.mean_energy[1]) == pytest.approx(7.0)


def test_causality_weights_are_one_at_t0_and_decrease_outward() -> None:
    grid = ExpectationGrid(T0, 150.0, 600.0, n_nodes=9)
    k0 = grid.reference_index
    torch.testing.assert_close(grid.causality_weights(1.0), torch.ones(9, dtype=torch.float64))  # nothing seen
    losses = torch.rand(9, dtype=torch.float64) + 0.1
    grid.update_losses(grid.temperatures, losses)
    torch.testing.assert_close(grid.loss, losses)
    weights = grid.causality_weights(0.7)
    assert float(weights[k0]) == 1.0
    assert bool(torch.all(torch.diff(weights[k0:]) < 0)) and bool(torch.all(torch.diff(weights[: k0 + 1]) > 0))
    # w_k = exp(−ε Σ L_j over nodes from T0 towards k, k excluded)
    assert float(weights[k0 + 2]) == pytest.approx(math.exp(-0.7 * float(losses[k0] + losses[k0 + 1])))
    assert float(weights[k0 - 3]) == pytest.approx(math.exp(-0.7 * float(losses[k0 - 2:k0 + 1].sum())))
    torch.testing.assert_close(grid.causality_weights(0.0), torch.ones(9, dtype=torch.float64))
    # between nodes: log-linear interpolation, equal to the node weights at the nodes, monotone outward
    at_nodes = grid.causality_weight_at(grid.temperatures, 0.7)
    torch.testing.assert_close(at_nodes, weights)
    fine = torch.exp(torch.linspace(math.log(T0), math.log(600.0), 200, dtype=torch.float64))
    assert bool(torch.all(torch.diff(grid.causality_weight_at(fine, 0.7)) <= 0))


def test_running_losses_use_the_momentum() -> None:
    grid = ExpectationGrid(T0, 150.0, 600.0, n_nodes=3, loss_momentum=0.9)
    t = torch.tensor([T0, T0], dtype=torch.float64)
    grid.update_losses(t, torch.tensor([1.0, 3.0]))
    grid.update_losses(t, torch.tensor([0.0, 0.0]))
    assert float(grid.loss[grid.reference_index]) == pytest.approx(0.9 * 2.0)
    assert math.isnan(float(grid.loss[0]))


@pytest.mark.parametrize(
    ("toy", "tolerance"), [(DoubleWell1D(), 2e-3), (HarmonicOscillator(), 5e-5)], ids=["double-well", "harmonic"]
)
def test_free_energy_curve_from_exact_mean_energies(toy: ToySystem, tolerance: float) -> None:
    """−∫E[U]dβ by the trapezoid rule in log β on 13 nodes matches exact log Z(T) − log Z(T0)."""
    grid = ExpectationGrid(T0, 150.0, 600.0, n_nodes=13)
    grid.mean_energy = toy.mean_energy(grid.temperatures)
    exact = toy.log_Z(grid.temperatures) - toy.log_Z(T0)
    curve = grid.free_energy_curve()
    assert float(curve[grid.reference_index]) == 0.0
    assert float((curve - exact).abs().max()) < tolerance
    assert float(exact.abs().max()) > 100 * tolerance                   # the curve itself is far from flat
    torch.testing.assert_close(integrate_free_energy(grid.temperatures, grid.mean_energy, grid.reference_index), curve)


def test_grid_state_round_trip() -> None:
    grid = ExpectationGrid(T0, 150.0, 600.0, n_nodes=5)
    grid.update_node(2, torch.arange(4.0, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    grid.update_losses(torch.tensor([160.0]), torch.tensor([0.3]))
    other = ExpectationGrid(T0, 150.0, 600.0, n_nodes=5)
    other.load_state_dict(grid.state_dict())
    for name in ("mean_energy", "sample_weight", "ess", "loss"):
        torch.testing.assert_close(getattr(other, name), getattr(grid, name), equal_nan=True)
    with pytest.raises(InputError, match="other temperature nodes"):
        ExpectationGrid(T0, 150.0, 600.0, n_nodes=7).load_state_dict(grid.state_dict())
