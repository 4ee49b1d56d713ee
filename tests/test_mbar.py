"""MBAR and decorrelation on systems with analytic answers (harmonic oscillators, AR(1) series).

Statistical assertions use |estimate − exact| < 4 σ with the estimator's own σ, and a calibration check that the
z-scores over independent repetitions have a standard deviation near 1 (so σ is neither absurdly large nor small).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.stats import norm

from trade_md.errors import InputError
from trade_md.analysis.mbar import MBAREstimator, decorrelate, tempering_reduced_potentials
from trade_md.thermo import KB

N_SIGMA = 4.0
DIM = 3


def oscillator_case(rng: np.random.Generator, temperatures, springs, n_k):
    """Exact Gaussian draws of d-dim oscillators U = K |x|²/2 (kJ/mol, x in nm) at (T_k, K_k) with N_k samples.

    Returns u_kn [K, N], U_kn [K, N] kJ/mol, and exact f_k − f_0 and ⟨U⟩_k.
    """
    temperatures, springs, n_k = map(np.asarray, (temperatures, springs, n_k))
    x = np.concatenate([rng.normal(0.0, np.sqrt(KB * t / k), size=(n, DIM))
                        for t, k, n in zip(temperatures, springs, n_k)])
    r2 = np.sum(x**2, axis=1)
    energies_kn = 0.5 * springs[:, None] * r2[None, :]
    u_kn = energies_kn / (KB * temperatures[:, None])
    log_z = 0.5 * DIM * np.log(2 * np.pi * KB * temperatures / springs)
    return u_kn, energies_kn, -(log_z - log_z[0]), 0.5 * DIM * KB * temperatures


def test_harmonic_free_energies_and_energies_within_4_sigma(rng):
    temperatures, springs = [300.0, 450.0, 380.0, 700.0], [200.0, 150.0, 300.0, 100.0]
    n_k = [800, 800, 0, 800]  # the third state is unsampled
    u_kn, energies_kn, f_exact, u_exact = oscillator_case(rng, temperatures, springs, n_k)
    estimator = MBAREstimator(u_kn, np.array(n_k))
    assert estimator.converged and estimator.residual < 1e-8 and not estimator.warnings
    f, df = estimator.free_energies()
    assert np.all(np.abs(f[1:] - f_exact[1:]) < N_SIGMA * df[1:])
    assert np.all(df[1:] < 0.15)
    for k in range(len(temperatures)):  # ⟨U_k⟩ at state k: the observable depends on the state's spring
        mean, sem = estimator.expectations(energies_kn[k])
        assert abs(mean[k] - u_exact[k]) < N_SIGMA * sem[k]
        if n_k[k]:  # MBAR's error is not absurdly above the plain standard error of the state's own samples
            plain = np.sqrt(0.5 * DIM) * KB * temperatures[k] / np.sqrt(n_k[k])
            assert 0.5 * plain < sem[k] < 2.0 * plain


def test_tempering_potentials_recover_log_z_and_mean_energy_off_ladder(rng):
    spring = 250.0
    ladder, n = np.array([300.0, 420.0, 600.0]), 1500
    x = np.concatenate([rng.normal(0.0, np.sqrt(KB * t / spring), size=(n, DIM)) for t in ladder])
    energies = 0.5 * spring * np.sum(x**2, axis=1)
    states = np.array([300.0, 420.0, 600.0, 350.0, 500.0])
    estimator = MBAREstimator(tempering_reduced_potentials(energies, states), np.array([n, n, n, 0, 0]))
    f, df = estimator.free_energies()
    exact = -0.5 * DIM * np.log(states / states[0])
    assert np.all(np.abs(f[1:] - exact[1:]) < N_SIGMA * df[1:])
    mean, sem = estimator.expectations(energies)
    assert np.all(np.abs(mean - 0.5 * DIM * KB * states) < N_SIGMA * sem)


def test_reported_sigma_is_calibrated_over_repetitions():
    zs_f, zs_u = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        u_kn, energies_kn, f_exact, u_exact = oscillator_case(rng, [300.0, 400.0, 350.0], [100.0, 100.0, 100.0],
                                                              [300, 300, 0])
        estimator = MBAREstimator(u_kn, np.array([300, 300, 0]))
        f, df = estimator.free_energies()
        mean, sem = estimator.expectations(energies_kn[0])
        zs_f.append((f[2] - f_exact[2]) / df[2])
        zs_u.append((mean[2] - u_exact[2]) / sem[2])
    for zs in (zs_f, zs_u):  # 40 repetitions: the std of z is 1 ± 0.11; a σ wrong by 2× fails
        assert 0.6 < np.std(zs) < 1.5
        assert abs(np.mean(zs)) < 0.7


def test_indicator_free_energy_of_shifted_oscillator_at_unsampled_temperature(rng):
    spring, centre = 400.0, 0.08  # 1-D, U = K (x − μ)²/2; P(x > 0) = Φ(μ / σ_T)
    ladder, n = np.array([300.0, 600.0]), 4000
    x = np.concatenate([rng.normal(centre, np.sqrt(KB * t / spring), size=n) for t in ladder])
    energies = 0.5 * spring * (x - centre) ** 2
    states = np.array([300.0, 600.0, 450.0])
    estimator = MBAREstimator(tempering_reduced_potentials(energies, states), np.array([n, n, 0]))
    delta_f, sigma, p, sigma_p = estimator.indicator_free_energy(x > 0)
    p_exact = norm.cdf(centre / np.sqrt(KB * states / spring))
    exact = -np.log(p_exact / (1 - p_exact))
    assert np.all(np.abs(delta_f - exact) < N_SIGMA * sigma)
    assert np.all(sigma < 0.1)
    assert np.allclose(p, 1 / (1 + np.exp(delta_f))) and np.all(np.abs(p - p_exact) < N_SIGMA * sigma_p)
    errors = estimator.block_bootstrap(np.arange(x.size), indicators={"right": x > 0}, n_bootstrap=60)
    # independent samples: the bootstrap and the delta method agree (60 replicates: ±10 % on the bootstrap σ)
    assert np.all((errors["right"] > 0.6 * sigma) & (errors["right"] < 1.6 * sigma))
    assert np.all((errors["right_p"] > 0.6 * sigma_p) & (errors["right_p"] < 1.6 * sigma_p))


def test_indicator_without_weight_gives_infinite_free_energy(rng):
    energies = rng.gamma(1.5, KB * 300.0, size=200)
    estimator = MBAREstimator(tempering_reduced_potentials(energies, [300.0, 310.0]), np.array([100, 100]))
    delta_f, sigma, p, _ = estimator.indicator_free_energy(np.zeros(200, dtype=bool))
    assert np.all(np.isposinf(delta_f)) and np.all(np.isinf(sigma)) and np.all(p == 0)


def test_overlap_identical_and_disjoint_states(rng):
    energies = rng.gamma(1.5, KB * 300.0, size=400)
    same = MBAREstimator(tempering_reduced_potentials(energies, [300.0, 300.0]), np.array([200, 200])).overlap()
    assert np.allclose(same.matrix, 0.5, atol=1e-8) and same.scalar == pytest.approx(1.0)
    assert np.allclose(same.matrix.sum(axis=1), 1.0)
    # 30-D oscillators at 100 K and 5000 K barely overlap
    far_energies = np.concatenate([rng.gamma(15.0, KB * 100.0, size=300), rng.gamma(15.0, KB * 5000.0, size=300)])
    far = MBAREstimator(tempering_reduced_potentials(far_energies, [100.0, 5000.0]), np.array([300, 300])).overlap()
    assert far.neighbours[0] < 0.03 and far.scalar < 0.1
    assert np.allclose(far.matrix.sum(axis=1), 1.0)


def test_unconverged_solution_is_a_logged_warning(monkeypatch, caplog, rng):
    import pymbar

    real = pymbar.MBAR

    class Perturbed(real):  # a solver that "returns" without reaching the solution, as pymbar can
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.f_k = self.f_k + np.array([0.0, 0.3])

    monkeypatch.setattr(pymbar, "MBAR", Perturbed)
    energies = rng.gamma(1.5, KB * 300.0, size=400)
    with caplog.at_level(logging.WARNING, logger="trade_md.analysis.mbar"):
        estimator = MBAREstimator(tempering_reduced_potentials(energies, [300.0, 400.0]), np.array([200, 200]))
    assert not estimator.converged and estimator.residual > 0.1
    assert "did not converge" in estimator.warnings[0]
    assert "did not converge" in caplog.text


def test_bad_shapes_and_values_are_input_errors():
    with pytest.raises(InputError, match="sum to N"):
        MBAREstimator(np.zeros((2, 5)), np.array([2, 2]))
    with pytest.raises(InputError, match="NaN or inf"):
        MBAREstimator(np.array([[0.0, np.inf], [0.0, 1.0]]), np.array([1, 1]))
    with pytest.raises(InputError, match="> 0"):
        tempering_reduced_potentials(np.zeros(3), [300.0, -1.0])


def test_decorrelate_ar1_inefficiency_and_burn_in(rng):
    rho, n = 0.9, 20000
    noise = rng.normal(size=n)
    series = np.empty(n)
    series[0] = 0.0
    for t in range(1, n):
        series[t] = rho * series[t - 1] + noise[t]
    series[:500] += 15.0  # a non-equilibrated start
    result = decorrelate(series)
    g_exact = (1 + rho) / (1 - rho)
    assert abs(result.g / g_exact - 1) < 0.25
    assert 450 <= result.t0 <= 1500
    assert result.indices[0] == result.t0 and np.all(np.diff(result.indices) >= np.floor(result.g))
    # a slower second observable sets the stride
    slow = np.repeat(rng.normal(size=n // 100), 100)
    assert decorrelate(series, slow).g > 3 * result.g


def test_decorrelate_constant_series():
    result = decorrelate(np.ones(50))
    assert result.t0 == 0 and result.g == 1.0 and result.indices.size == 50


def test_stratified_block_bootstrap_keeps_each_stratum_whole():
    # One state; stratum 0 holds 10 blocks of A = 0, stratum 1 10 blocks of A = 1. Resampled within strata every
    # replicate keeps 10 of each, so <A> = 0.5 exactly and its error is 0; across strata the mix varies (about
    # sqrt(0.25 / 20) = 0.11).
    n = 200
    estimator = MBAREstimator(np.zeros((1, n)), np.array([n]))
    values, blocks, strata = np.repeat([0.0, 1.0], n // 2), np.arange(n) // 10, np.repeat([0, 1], n // 2)
    within = estimator.block_bootstrap(blocks, observables={"A": values}, n_bootstrap=40, strata=strata)
    across = estimator.block_bootstrap(blocks, observables={"A": values}, n_bootstrap=40)
    assert within["A"][0] < 1e-12 and across["A"][0] > 0.05


def test_block_bootstrap_is_calibrated_on_correlated_samples():
    """AR(1) draws with exact N(0, kT/K) marginals: MBAR's asymptotic σ assumes independence and is too small by
    about sqrt(g); the block bootstrap over blocks longer than the correlation time is calibrated."""
    spring, rho, n, block = 100.0, 0.9, 2000, 100  # g = 19
    ladder, states = np.array([300.0, 450.0]), np.array([300.0, 450.0, 380.0])
    z_block, z_strata, z_asymptotic = [], [], []
    for seed in range(25):
        rng = np.random.default_rng(seed)
        chains = []
        for t in ladder:
            sd = np.sqrt(KB * t / spring)
            x = np.empty(n)
            x[0] = rng.normal(0.0, sd)
            noise = rng.normal(0.0, sd * np.sqrt(1 - rho**2), size=n)
            for i in range(1, n):
                x[i] = rho * x[i - 1] + noise[i]
            chains.append(x)
        x = np.concatenate(chains)
        energies = 0.5 * spring * x**2
        estimator = MBAREstimator(tempering_reduced_potentials(energies, states), np.array([n, n, 0]))
        mean, sem = estimator.expectations(energies)
        blocks = np.tile(np.arange(n) // block, 2)  # both states' samples of one time window share a block
        errors = estimator.block_bootstrap(blocks, observables={"U": energies}, n_bootstrap=40, seed=seed)
        exact = 0.5 * KB * states[2]
        z_block.append((mean[2] - exact) / errors["U"][2])
        z_asymptotic.append((mean[2] - exact) / sem[2])
        if seed % 2 == 0:  # the chains are independent: resampling each within itself is calibrated too
            own = np.concatenate([np.arange(n) // block, 1000 + np.arange(n) // block])
            errors = estimator.block_bootstrap(own, observables={"U": energies}, n_bootstrap=40, seed=seed,
                                               strata=np.repeat([0, 1], n))
            z_strata.append((mean[2] - exact) / errors["U"][2])
    # the std of 25 (13) unit normals lies within these bounds with probability 0.998 (0.993), by chi-square
    assert 0.6 < np.std(z_block) < 1.6 and 0.5 < np.std(z_strata) < 1.7
    with pytest.raises(InputError, match="within one stratum"):
        estimator.block_bootstrap(blocks, observables={"U": energies}, n_bootstrap=10, strata=np.repeat([0, 1], n))
    assert np.std(z_asymptotic) > 2.0  # what ignoring the correlation would have claimed


def test_pymbar_generic_notices_are_dropped_and_real_warnings_kept(caplog):
    from pymbar.timeseries import LongWarning

    with caplog.at_level(logging.WARNING):  # both notices as pymbar logs them when its modules are imported
        logging.getLogger("pymbar.timeseries").warning(LongWarning)
        logging.getLogger("pymbar.mbar_solvers").warning("\n********* JAX NOT FOUND *********\n")
        logging.getLogger("pymbar.mbar_solvers").warning("Failed to reach a solution")
    assert "timeseries module" not in caplog.text and "JAX" not in caplog.text
    assert "Failed to reach a solution" in caplog.text


def test_expectations_leave_the_observable_untouched(rng):
    energies = np.concatenate([rng.gamma(6.0, KB * t, 300) for t in (300.0, 400.0)])
    estimator = MBAREstimator(tempering_reduced_potentials(energies, np.array([300.0, 400.0])), np.array([300, 300]))
    before = energies.copy()
    estimator.expectations(energies)  # pymbar 4 shifts its argument in place, by about one ulp
    assert np.array_equal(energies, before)
