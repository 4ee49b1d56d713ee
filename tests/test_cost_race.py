"""Tests of benchmarks/cost_race.py's estimators: the weighted ΔF and its delta-method error against an exact case
and a bootstrap, the 'reached' rule, and the extrapolation of a run that does not reach the target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark_module import load_benchmark

cost_race = load_benchmark("cost_race")


def test_weighted_delta_f_is_exact_for_equal_weights_and_its_error_matches_a_bootstrap() -> None:
    rng = np.random.default_rng(0)
    phi = np.where(rng.random(4000) < 0.2, 1.0, -2.0)                     # 20 % in phi > 0
    p = float(np.mean(phi > 0))
    value, sem = cost_race.weighted_delta_f(phi, np.zeros(phi.size))
    assert value == pytest.approx(-math.log(p / (1 - p)), abs=1e-12)
    assert sem == pytest.approx(math.sqrt(p * (1 - p) / phi.size) / (p * (1 - p)), rel=1e-9)   # binomial
    log_w = rng.normal(0.0, 1.0, phi.size)                                # unequal weights: against a bootstrap
    value, sem = cost_race.weighted_delta_f(phi, log_w)
    draws = [cost_race.weighted_delta_f(phi[i], log_w[i])[0] for i in
             (rng.integers(0, phi.size, phi.size) for _ in range(400))]
    assert sem == pytest.approx(float(np.std(draws)), rel=0.15)           # 400 draws: ~4 % error on the spread
    assert cost_race.weighted_delta_f(np.full(10, -1.0), np.zeros(10)) == (None, math.inf)


def test_a_temperature_is_reached_only_once_the_criterion_holds_to_the_end() -> None:
    def point(cost: float, value: float, sem: float) -> dict:
        return {"cost_cpu_s": cost, "delta_f_kT": value, "sem_kT": sem}

    series = [point(1, 3.0, 0.5), point(2, 3.02, 0.05), point(3, 3.2, 0.05), point(4, 3.03, 0.04), point(5, 3.0, 0.03)]
    assert cost_race.reached_at(series, 3.0)["cost_cpu_s"] == 4             # 2 held, then 3 broke it
    assert cost_race.reached_at(series[:3], 3.0) is None
    # not reached: σ 0.14 at 1,000 CPU-s must fall to 0.1 / 1.80 = 0.056, (0.14 x 1.80 / 0.1)^2 = 6.35 x the cost
    assert cost_race.extrapolated_cost([point(1000, 3.3, 0.14)]) == pytest.approx(1000 * (0.14 * 1.7979 / 0.1) ** 2,
                                                                                  rel=1e-4)
    assert cost_race.extrapolated_cost([point(1000, None, math.inf)]) is None
