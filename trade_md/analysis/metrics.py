"""Evaluation metrics: pure functions on arrays, units stated, no OpenMM or torch inside.

Conventions: log-weights are natural logs of unnormalised importance weights (log w = −u(x) − log q(x));
angles in radians on [−π, π); energies in kJ/mol; temperatures in K; free energies in kJ/mol unless the name
says ``_kT``. Ramachandran histograms use fixed edges: ``RAMACHANDRAN_BINS`` × ``RAMACHANDRAN_BINS`` equal bins
on [−π, π)², never data-dependent edges, and are normalised to probabilities.

>>> round(kish_ess(np.zeros(10)), 12)
1.0
>>> p = ramachandran_histogram(np.array([0.1]), np.array([0.2]))
>>> float(js_divergence(p, p))
0.0
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from trade_md.errors import InputError
from trade_md.features import basin_delta_f, wrap_angle
from trade_md.thermo import beta

__all__ = [
    "RAMACHANDRAN_BINS",
    "normalized_weights",
    "kish_ess",
    "pareto_k",
    "PARETO_K_UNRELIABLE",
    "ramachandran_histogram",
    "kl_divergence",
    "js_divergence",
    "bootstrap_delta_f",
    "energy_wasserstein",
    "nll_per_dof",
    "tilted_ess",
    "reweighted_frames",
    "StratumESS",
    "ess_by_stratum",
    "ess_with_exact_masses",
]

RAMACHANDRAN_BINS: int = 36
"""Bins per axis of Ramachandran histograms (10° each) on [−π, π)."""


def normalized_weights(log_w: np.ndarray) -> np.ndarray:
    """Self-normalised importance weights ``[n]`` summing to 1; −inf log-weights (e.g. dropped samples) give 0."""
    log_w = np.asarray(log_w, dtype=np.float64)
    finite = np.isfinite(log_w)
    if np.any(np.isnan(log_w)) or np.any(log_w == np.inf):
        raise InputError("log-weights contain NaN or +inf; cap or drop those samples before weighting")
    if not finite.any():
        raise InputError("every log-weight is −inf: no sample carries weight")
    return np.exp(log_w - logsumexp(log_w))


def kish_ess(log_w: np.ndarray) -> float:
    """Kish effective sample size as a fraction of n: (Σw)² / (n Σw²), in (0, 1]."""
    w = normalized_weights(log_w)
    return float(1.0 / (w.size * np.sum(w**2)))


PARETO_K_UNRELIABLE = 0.7
"""Tail shape above which a few weights can dominate any importance-sampling estimate (Vehtari et al., PSIS)."""


def pareto_k(log_w: np.ndarray) -> float:
    """Tail shape k̂ of the importance weights: a generalised Pareto distribution fitted by maximum likelihood to
    the largest M = min(n/5, 3√n) of the n positive weights, as exceedances over the next largest (the tail
    diagnostic of Pareto-smoothed importance sampling, Vehtari et al.). k̂ < 0.5: the weights have finite variance and
    the Kish ESS means what it says; 0.5–0.7: usable, slow to converge; above :data:`PARETO_K_UNRELIABLE` a few
    samples can dominate any estimate and one draw's ESS says little: draw more samples or improve the proposal.
    NaN for fewer than 100 positive weights. log_w: ``[n]``, −inf for dropped samples.
    """
    from scipy.stats import genpareto

    log_w = np.asarray(log_w, dtype=np.float64)
    log_w = log_w[np.isfinite(log_w)]
    if log_w.size < 100:
        return math.nan
    w = np.sort(np.exp(log_w - log_w.max()))
    m = int(min(w.size / 5, 3.0 * math.sqrt(w.size)))
    exceedances = w[-m:] - w[-m - 1]
    if not np.any(exceedances > 0):
        return -math.inf  # the largest weights are all equal: no tail at all
    shape, _, _ = genpareto.fit(exceedances / exceedances.max(), floc=0.0)
    return float(shape)


def ramachandran_histogram(
    phi: np.ndarray, psi: np.ndarray, weights: np.ndarray | None = None, bins: int = RAMACHANDRAN_BINS
) -> np.ndarray:
    """Probability histogram ``[bins, bins]`` (φ rows, ψ columns) on fixed edges over [−π, π)².

    phi, psi: [n] radians (wrapped to [−π, π)); weights: [n] non-negative, need not be normalised.
    """
    phi, psi = wrap_angle(phi), wrap_angle(psi)
    if phi.shape != psi.shape:
        raise InputError(f"phi and psi must have the same shape, got {phi.shape} and {psi.shape}")
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    counts, _, _ = np.histogram2d(phi, psi, bins=(edges, edges), weights=weights)
    total = counts.sum()
    if total <= 0:
        raise InputError("histogram is empty: no samples or all weights zero")
    return counts / total


def kl_divergence(p: np.ndarray, q: np.ndarray, floor: float = 1e-10) -> float:
    """KL(p ‖ q) in nats between two histograms on the same edges.

    Bins where q is empty but p is not would make KL infinite; there q is set to ``floor`` (no other bin
    changes) so the value is finite — report :func:`js_divergence` beside it, which needs no floor.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise InputError(f"histograms differ in shape: {p.shape} vs {q.shape}; use the same bins")
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    q = np.where(mask & (q == 0), floor, q)
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask]))))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in nats (finite, symmetric, ≤ ln 2) between two histograms on the same edges."""
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise InputError(f"histograms differ in shape: {p.shape} vs {q.shape}; use the same bins")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def _kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    return max(0.5 * _kl(p) + 0.5 * _kl(q), 0.0)


def bootstrap_delta_f(
    phi: np.ndarray,
    temperature: float,
    log_w: np.ndarray | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """ΔF between φ basins (kJ/mol) from (reweighted) samples and its bootstrap standard error (kJ/mol).

    Resamples (φ, log w) pairs with replacement and renormalises the weights in each replicate, so the error
    includes the weight noise. Replicates in which a basin is empty are skipped. Each estimate is
    :func:`trade_md.features.basin_delta_f`.
    """
    phi = wrap_angle(phi)
    log_w = np.zeros_like(phi) if log_w is None else np.asarray(log_w, dtype=np.float64)
    estimate = basin_delta_f(phi, temperature, normalized_weights(log_w))
    generator = np.random.default_rng(seed)
    replicates = []
    for _ in range(n_bootstrap):
        index = generator.integers(0, phi.size, phi.size)
        value = basin_delta_f(phi[index], temperature, normalized_weights(log_w[index]))
        if np.isfinite(value):
            replicates.append(value)
    error = float(np.std(replicates, ddof=1)) if len(replicates) > 1 else float("inf")
    return estimate, error


def energy_wasserstein(
    energies_a: np.ndarray,
    energies_b: np.ndarray,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
) -> float:
    """Wasserstein-1 distance (kJ/mol) between two weighted 1-D energy distributions."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(energies_a, energies_b, weights_a, weights_b))


def nll_per_dof(log_q: np.ndarray, n_dof: int) -> float:
    """Mean negative log-likelihood per degree of freedom (nats) from log q of reference frames ``[n]``."""
    log_q = np.asarray(log_q, dtype=np.float64)
    if n_dof <= 0:
        raise InputError(f"n_dof must be positive, got {n_dof}")
    return float(-np.mean(log_q) / n_dof)


def tilted_ess(
    log_w: np.ndarray, energies: np.ndarray, reference_temperature: float, temperature: float
) -> tuple[float, float]:
    """What TRADE can reach at ``temperature`` from a boundary model q0 at T0, before any TRADE training.

    TRADE's exact solution is the Boltzmann tilt q_T ∝ q0 · exp(−(β − β0) U) of the boundary, whose importance
    weights for p_T are q0's own weights w0 = p0 / q0 (up to a constant). From samples of q0 at T0 with log-weights
    ``log_w`` ``[n]`` (for p0) and energies ``[n]`` kJ/mol, returns ``(ess, support)``: the Kish ESS fraction of that
    tilt at T, (Σ t w0)² / (Σ t · Σ t w0²) with t = exp(−(β − β0) U), and the Kish fraction of q0 samples the
    estimate rests on, (Σ t)² / (n Σ t²). A small support means a few high-energy samples of q0 dominate the tilt
    (at T > T0 this is the boundary's high-energy debris, multiplied by exp((β0 − β) U)) and the ESS estimate is
    itself uncertain. Non-finite log-weights or energies drop the sample.
    """
    log_w, energies = np.asarray(log_w, dtype=np.float64), np.asarray(energies, dtype=np.float64)
    if log_w.shape != energies.shape:
        raise InputError(f"log_w {log_w.shape} and energies {energies.shape} must have the same shape")
    keep = np.isfinite(log_w) & np.isfinite(energies)
    if not keep.any():
        raise InputError("no sample has a finite log-weight and energy")
    log_w, energies = log_w[keep], energies[keep]
    log_t = -(beta(temperature) - beta(reference_temperature)) * energies
    ess = np.exp(2.0 * logsumexp(log_t + log_w) - logsumexp(log_t) - logsumexp(log_t + 2.0 * log_w))
    return float(ess), kish_ess(log_t)


def reweighted_frames(energies: np.ndarray, reference_temperature: float, temperature: float) -> float:
    """Effective number of frames, (Σ t)² / Σ t², of a T0 data set reweighted to ``temperature`` with
    t = exp(−(β − β0) U): what the reweighted NLL of :class:`trade_md.config.TrainConfig` learns from at that T.
    ``energies`` ``[n]`` kJ/mol of the frames; temperatures in K (or ``openmm.unit`` quantities)."""
    energies = np.asarray(energies, dtype=np.float64)
    if energies.ndim != 1 or energies.size == 0 or not np.all(np.isfinite(energies)):
        raise InputError(f"energies must be a non-empty 1-D array of finite kJ/mol values, got shape "
                         f"{energies.shape}")
    log_t = -(beta(temperature) - beta(reference_temperature)) * energies
    return kish_ess(log_t) * energies.size


@dataclass(frozen=True)
class StratumESS:
    """One stratum (e.g. a conformational basin) of an importance sample, see :func:`ess_by_stratum`.

    label: the stratum; n: samples in it; q_fraction: n / n_total (the proposal's mass there); p_fraction: its
    share of the normalised weights (the target's mass estimate); ess: Kish ESS fraction of the weights within
    the stratum (how well the proposal's shape there fits, whatever its mass; 0 if all its weights are 0);
    share_of_sum_w2: its share of Σw², i.e. of the overall ESS loss.
    """

    label: Hashable
    n: int
    q_fraction: float
    p_fraction: float
    ess: float
    share_of_sum_w2: float


def ess_by_stratum(log_w: np.ndarray, labels: np.ndarray) -> list[StratumESS]:
    """Split an importance sample's Kish ESS by stratum: log_w ``[n]`` (−inf for dropped samples), labels ``[n]``
    (any hashable values; one stratum per distinct value, sorted).

    The strata recombine exactly: kish_ess(log_w) = 1 / Σ_m p_m² / (q_m ess_m) over the strata with weight. A
    stratum the proposal under-weights (p_m ≫ q_m) costs ESS through its mass even where its shape is exact
    (ess_m = 1); :func:`ess_with_exact_masses` gives the ESS with every q_m set to p_m.
    """
    log_w, labels = np.asarray(log_w, dtype=np.float64), np.asarray(labels)
    if labels.shape != log_w.shape or log_w.ndim != 1:
        raise InputError(f"labels {labels.shape} and log-weights {log_w.shape} must be 1-D of the same length")
    w = normalized_weights(log_w)
    sum_w2 = float(np.sum(w**2))
    strata = []
    for label in np.unique(labels):
        inside = labels == label
        w_in = w[inside]
        total = float(w_in.sum())
        strata.append(StratumESS(
            label=label.item() if hasattr(label, "item") else label,
            n=int(inside.sum()),
            q_fraction=float(inside.mean()),
            p_fraction=total,
            ess=float(total**2 / (w_in.size * np.sum(w_in**2))) if total > 0 else 0.0,
            share_of_sum_w2=float(np.sum(w_in**2) / sum_w2),
        ))
    return strata


def ess_with_exact_masses(strata: Sequence[StratumESS]) -> float:
    """Kish ESS fraction of a proposal with the same in-stratum shapes but the target's stratum masses
    (q_m = p_m): 1 / Σ_m p_m / ess_m, what a generator that weighted its basins right would reach. (It is not the
    best allocation, q_m ∝ p_m / √ess_m, which gives 1 / (Σ_m p_m / √ess_m)²; a proposal that over-weights a
    badly shaped stratum can beat it.) Strata the sample never visited are not in it: their mass is unknown."""
    weighted = [s for s in strata if s.p_fraction > 0]
    if not weighted:
        raise InputError("no stratum carries weight")
    return float(1.0 / sum(s.p_fraction / s.ess for s in weighted))
