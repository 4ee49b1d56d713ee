"""Metric functions against cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from trade_md.analysis import metrics
from trade_md.errors import InputError
from trade_md.thermo import kT


def test_ess_uniform_weights_is_one() -> None:
    assert metrics.kish_ess(np.full(1000, -3.7)) == pytest.approx(1.0, abs=1e-12)


def test_ess_k_equal_weights_out_of_n_is_k_over_n() -> None:
    log_w = np.concatenate([np.zeros(25), np.full(75, -np.inf)])
    assert metrics.kish_ess(log_w) == pytest.approx(0.25, abs=1e-12)


def test_ess_lognormal_weights_matches_asymptote(rng: np.random.Generator) -> None:
    # log w ~ N(0, s²): E[w]² / E[w²] = exp(−s²); with 200k draws the relative error is ~1 %.
    s = 0.8
    ess = metrics.kish_ess(rng.normal(0.0, s, 200_000))
    assert ess == pytest.approx(np.exp(-s**2), rel=0.03)


@pytest.mark.parametrize("shape", [0.3, 0.9])
def test_pareto_k_recovers_the_tail_shape(rng: np.random.Generator, shape: float) -> None:
    # Weights w = U^(-k) have a generalised-Pareto tail of shape k exactly. With 200,000 weights the fit (1,341 tail
    # points) scatters by about 0.04 between seeds (20 seeds: sd 0.034 at k = 0.3, 0.041 at 0.9): 0.15 is ~4 sd.
    assert metrics.pareto_k(-shape * np.log(rng.random(200_000))) == pytest.approx(shape, abs=0.15)


def test_pareto_k_of_light_tails_and_small_samples(rng: np.random.Generator) -> None:
    assert metrics.pareto_k(rng.normal(0.0, 0.5, 200_000)) < 0.2        # log-normal weights, sd 0.5: a light tail
    assert metrics.pareto_k(np.zeros(1000)) == -np.inf                  # equal weights: no tail at all
    assert np.isnan(metrics.pareto_k(np.zeros(50)))                     # too few weights to fit a tail
    assert np.isnan(metrics.pareto_k(np.concatenate([np.zeros(50), np.full(500, -np.inf)])))


def test_ess_rejects_nan() -> None:
    with pytest.raises(InputError, match="NaN"):
        metrics.kish_ess(np.array([0.0, np.nan]))


def test_identical_histograms_have_zero_divergence(rng: np.random.Generator) -> None:
    phi, psi = rng.uniform(-np.pi, np.pi, (2, 5000))
    p = metrics.ramachandran_histogram(phi, psi)
    assert p.shape == (metrics.RAMACHANDRAN_BINS, metrics.RAMACHANDRAN_BINS)
    assert p.sum() == pytest.approx(1.0)
    assert metrics.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert metrics.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)


def test_disjoint_histograms_have_js_ln2_and_finite_kl() -> None:
    p = metrics.ramachandran_histogram(np.array([-2.0]), np.array([-2.0]))
    q = metrics.ramachandran_histogram(np.array([2.0]), np.array([2.0]))
    assert metrics.js_divergence(p, q) == pytest.approx(np.log(2.0), abs=1e-12)
    assert np.isfinite(metrics.kl_divergence(p, q))
    assert metrics.kl_divergence(p, q) > 10.0


def test_histogram_edges_are_fixed_and_wrap() -> None:
    # φ = π wraps to −π and lands in the first bin; bins do not follow the data.
    p = metrics.ramachandran_histogram(np.array([np.pi, -np.pi + 1e-9]), np.array([0.01, 0.01]))
    assert p[0, metrics.RAMACHANDRAN_BINS // 2] == pytest.approx(1.0)


def test_two_state_delta_f_within_four_standard_errors(rng: np.random.Generator) -> None:
    temperature, p_plus = 300.0, 0.1
    phi = np.where(rng.random(20_000) < p_plus, 1.0, -1.5)
    exact = -kT(temperature) * np.log(p_plus / (1 - p_plus))
    estimate, error = metrics.bootstrap_delta_f(phi, temperature, n_bootstrap=100)
    assert 0 < error < 0.1 * abs(exact)
    assert abs(estimate - exact) < 4 * error


def test_reweighted_delta_f_matches_target(rng: np.random.Generator) -> None:
    # Uniform proposals in φ reweighted so that P(φ > 0) = 0.2 exactly in expectation.
    temperature = 450.0
    phi = rng.uniform(-np.pi, np.pi, 40_000)
    log_w = np.where(phi > 0, np.log(0.2), np.log(0.8))
    exact = -kT(temperature) * np.log(0.2 / 0.8)
    estimate, error = metrics.bootstrap_delta_f(phi, temperature, log_w, n_bootstrap=100)
    assert abs(estimate - exact) < 4 * error


def test_wasserstein_of_shift_is_shift(rng: np.random.Generator) -> None:
    energies = rng.normal(-50.0, 10.0, 5000)
    assert metrics.energy_wasserstein(energies, energies + 3.0) == pytest.approx(3.0, abs=1e-9)


def test_nll_per_dof() -> None:
    assert metrics.nll_per_dof(np.array([-10.0, -20.0]), 5) == pytest.approx(3.0)
    with pytest.raises(InputError):
        metrics.nll_per_dof(np.zeros(2), 0)


@pytest.mark.parametrize("ratio", [0.8, 1.25])
def test_reweighted_frames_match_the_gaussian_closed_form(rng: np.random.Generator, ratio: float) -> None:
    """Frames x ~ N(0, 1) at T0 with U = k_B T0 x² / 2, reweighted to T = ratio · T0 by t = exp(−(β − β0) U): with
    c = 1/ratio − 1, E t = (1 + c)^(−1/2) and E t² = (1 + 2c)^(−1/2), so the effective fraction (E t)² / E t² is
    √(1 + 2c) / (1 + c) (0.980 at 0.8 T0, 0.968 at 1.25 T0). 400,000 frames: within 0.005."""
    t0, n = 300.0, 400_000
    energies = kT(t0) * rng.normal(0.0, 1.0, n) ** 2 / 2.0
    c = 1.0 / ratio - 1.0
    expected = np.sqrt(1.0 + 2.0 * c) / (1.0 + c)
    assert metrics.reweighted_frames(energies, t0, ratio * t0) / n == pytest.approx(expected, abs=0.005)
    assert metrics.reweighted_frames(energies, t0, t0) == pytest.approx(n, rel=1e-9)
    with pytest.raises(InputError, match="finite"):
        metrics.reweighted_frames(np.array([1.0, np.nan]), t0, ratio * t0)


@pytest.mark.parametrize("ratio", [0.8, 1.25])
def test_tilted_ess_matches_the_gaussian_closed_form(rng: np.random.Generator, ratio: float) -> None:
    """q0 = N(0, 1.3²) for p0 = N(0, 1) (U = k_B T0 x² / 2): the tilt to T = ratio · T0 is a Gaussian of
    precision 1/1.3² + 1/ratio − 1 against p_T = N(0, ratio); Kish ESS a √(2b² − a²) / b² with a² = ratio and b²
    the tilt's variance (0.860 at 1.25 T0, 0.945 at 0.8 T0). 400,000 samples: within 0.01. A perfect boundary
    (log_w constant) gives 1 at any T."""
    t0, s = 300.0, 1.3
    x = rng.normal(0.0, s, 400_000)
    energies = kT(t0) * x**2 / 2.0
    log_w = -(x**2) / 2.0 + x**2 / (2.0 * s**2)
    a2, b2 = ratio, 1.0 / (1.0 / s**2 + 1.0 / ratio - 1.0)
    expected = np.sqrt(a2 * (2.0 * b2 - a2)) / b2
    ess, support = metrics.tilted_ess(log_w, energies, t0, ratio * t0)
    assert ess == pytest.approx(expected, abs=0.01)
    assert 0.0 < support < 1.0
    perfect, _ = metrics.tilted_ess(np.zeros_like(x), energies, t0, ratio * t0)
    assert perfect == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(InputError, match="same shape"):
        metrics.tilted_ess(log_w[:5], energies, t0, ratio * t0)


def test_ess_by_stratum_separates_mass_from_shape(rng: np.random.Generator) -> None:
    """q = 0.9 N(-6, 1) + 0.1 N(6, 1) for p = 0.5 N(-6, 1) + 0.5 N(6, 1.1²), strata by sign (the modes' overlap
    is < 1e-9): in-stratum Kish ESS 1 on the left and 1.1 √(2 − 1.1²) = 0.978 on the right (Gaussian closed
    form), overall 1 / (0.25/0.9 + 0.25/(0.1 · 0.978)) = 0.353, with the target's masses 1 / (0.5 + 0.5/0.978)
    = 0.989. 400,000 samples: every figure within 0.01, and the strata recombine to kish_ess to 1e-12."""
    n, a = 400_000, 1.1
    right = rng.random(n) < 0.1
    x = np.where(right, rng.normal(6.0, 1.0, n), rng.normal(-6.0, 1.0, n))

    def log_normal(v: np.ndarray, mean: float, sd: float) -> np.ndarray:
        return -0.5 * ((v - mean) / sd) ** 2 - np.log(sd)

    log_p = np.logaddexp(np.log(0.5) + log_normal(x, -6.0, 1.0), np.log(0.5) + log_normal(x, 6.0, a))
    log_q = np.logaddexp(np.log(0.9) + log_normal(x, -6.0, 1.0), np.log(0.1) + log_normal(x, 6.0, 1.0))
    log_w = log_p - log_q
    strata = metrics.ess_by_stratum(log_w, x > 0)
    left, right_stratum = strata
    assert (left.label, right_stratum.label) == (False, True)
    assert left.q_fraction == pytest.approx(0.9, abs=0.01) and right_stratum.q_fraction == pytest.approx(0.1, abs=0.01)
    assert left.p_fraction == pytest.approx(0.5, abs=0.01) and right_stratum.p_fraction == pytest.approx(0.5, abs=0.01)
    assert left.ess == pytest.approx(1.0, abs=0.01)
    assert right_stratum.ess == pytest.approx(a * np.sqrt(2.0 - a**2), abs=0.01)
    assert right_stratum.share_of_sum_w2 > 0.85
    recombined = 1.0 / sum(s.p_fraction**2 / (s.q_fraction * s.ess) for s in strata)
    assert recombined == pytest.approx(metrics.kish_ess(log_w), rel=1e-12)
    assert metrics.kish_ess(log_w) == pytest.approx(0.353, abs=0.01)
    assert metrics.ess_with_exact_masses(strata) == pytest.approx(0.989, abs=0.01)
    with pytest.raises(InputError, match="same length"):
        metrics.ess_by_stratum(log_w, (x > 0)[:10])
