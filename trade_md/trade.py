"""The TRADE residual and its estimators: propagate a Boltzmann density across temperature from T0.

Parametrisation (stated once, used everywhere). The model is q_θ(x | T) with context c = log(T / T0). With the
reduced energy u_T(x) = U(x) / (k_B T) (U in kJ/mol) the Boltzmann family p(x | T) = exp(−u_T(x)) / Z(T) obeys

    ∂/∂ log T  log p(x | T) = u_T(x) − E_T[u_T],            (∂ log Z / ∂ log T = E_T[U] / (k_B T) = E_T[u_T])

so the TRADE residual at a point (x, T) is

    r(x, T) = ∂_c log q_θ(x | T) − (u_T(x) − Ê_T[u_T]),

where ∂_c is taken by autograd through the temperature input (log T is a leaf, T = exp(log T)) and both terms of
the target carry the same single power of 1/T: u_T(x) = β U(x) and Ê_T[u_T] = β Ê_T[U] with β = 1/(k_B T) at the
point's own T. The reduced form keeps r of order √(degrees of freedom) at every temperature.

Two ways to obtain the constant Ê_T[u_T] of the target (``expectation`` of the ``trade`` objective,
:mod:`trade_md.objectives.trade_residual`):

- ``"grid"`` (the paper's): Ê_T[U] from self-normalised importance sampling on the expectation grid;
- ``"centred"``: the residual minus its own mean over the batch points that share a temperature,
  r_i = g_i − mean_{j: T_j = T_i} g_j with g = ∂_c log q − u_T. Because q is normalised, E_q[∂_c log q] = 0, so the
  only solution of ∂_c log q = u_T − c(T) for all x is c(T) = E_q[u_T] and q(· | T) ∝ q(· | T0) exp(−(β − β0) U):
  the exact Boltzmann tilt of the boundary model. No importance weights enter the loss, so it stays unbiased when
  the model's ESS is low (where a self-normalised Ê rests on a handful of samples and would drag the model; see
  :func:`centred_trade_residual`). The centre is detached: for a squared loss its gradient contribution is exactly
  zero (Σ (g_i − ḡ) = 0).

Ê_T[U] comes from the model itself by self-normalised importance sampling on flow samples at T:
log w = −u_T(x) − log q(x | T), Ê_T[U] = Σ w U / Σ w, with Kish ESS (Σw)² / (n Σw²).
:class:`~trade_md.objectives.expectation_grid.ExpectationGrid`
keeps these estimates in kJ/mol on log-spaced temperature nodes (T0 is a node), interpolates E[U] linearly in
log T (so Ê_T[u_T] = β(T) · E[U](T) at any T), keeps per-node running residual losses and turns them into causality
weights w_k = exp(−ε Σ_{j from T0's node up to, not including, k} L_j), and integrates the free-energy curve
log Z(T) − log Z(T0) = −∫_{β0}^{β} E[U] dβ' as a self-check.

Energies from an untrained flow can be huge: :func:`cap_reduced_energy` caps reduced energies smoothly (identity
below a threshold in k_B T units, logarithmic above, non-finite values mapped to a large finite value), so no
inf or NaN reaches the weights, the targets or the optimiser.

>>> u = torch.tensor([1.0, 1e3, 1e9, float("inf"), float("nan")])
>>> [round(v, 2) for v in cap_reduced_energy(u, threshold=100.0).tolist()]
[1.0, 106.8, 120.72, 200.0, 200.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional

from trade_md.errors import InputError
from trade_md.thermo import reduced_potential, to_kelvin

__all__ = [
    "DEFAULT_ENERGY_CAP",
    "NONFINITE_EXCESS",
    "cap_reduced_energy",
    "centred_trade_residual",
    "group_means",
    "group_softmax",
    "huber",
    "importance_estimate",
    "integrate_free_energy",
    "kish_ess",
    "log_temperature_derivative",
    "ramp",
    "sample_log_uniform",
    "trade_residual",
]

DEFAULT_ENERGY_CAP: float = 1000.0
"""Default threshold (in k_B T) above which reduced energies grow only logarithmically."""
NONFINITE_EXCESS: float = 100.0
"""A non-finite reduced energy (inf/NaN from a broken configuration) becomes ``threshold + NONFINITE_EXCESS``."""


def cap_reduced_energy(u: Tensor, threshold: float = DEFAULT_ENERGY_CAP) -> Tensor:
    """Smoothly capped reduced energy ``[n]`` (k_B T units): ``u`` for ``u <= threshold``, else
    ``threshold + log(1 + u − threshold)``; continuous with a continuous first derivative (1 at the threshold).

    inf and NaN become ``threshold + NONFINITE_EXCESS`` with zero gradient, so every output is finite.
    """
    finite = torch.isfinite(u)
    safe = torch.where(finite, u, torch.full_like(u, threshold))
    excess = (safe - threshold).clamp(min=0.0)
    capped = torch.where(safe > threshold, threshold + torch.log1p(excess), safe)
    return torch.where(finite, capped, torch.full_like(u, threshold + NONFINITE_EXCESS))


def kish_ess(log_w: Tensor) -> Tensor:
    """Kish effective sample size as a fraction of n, ``(Σw)² / (n Σw²)`` in (0, 1]; −inf log-weights give w = 0."""
    return torch.exp(2.0 * torch.logsumexp(log_w, dim=-1) - torch.logsumexp(2.0 * log_w, dim=-1)) / log_w.shape[-1]


def importance_estimate(values: Tensor, u: Tensor, log_q: Tensor) -> tuple[Tensor, Tensor]:
    """Self-normalised importance estimate of ``E_p[values]`` from samples of q, and its Kish ESS fraction.

    values: ``[n]``; u: reduced energies ``[n]`` (capped, so finite); log_q: ``log q(x)`` ``[n]`` of the samples.
    Weights ``log w = −u − log q``; samples with non-finite ``log q`` get weight zero. Returns ``(estimate, ess)``,
    both 0-dim tensors; raises :class:`InputError` when no sample has a finite weight.
    """
    log_w = -u - log_q
    log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
    if not bool(torch.any(torch.isfinite(log_w))):
        raise InputError("no sample has a finite importance weight (log q is non-finite everywhere); the flow "
                         "diverged: restart from an earlier checkpoint or lower the learning rate")
    weights = torch.softmax(log_w, dim=-1)
    return torch.sum(weights * torch.where(weights > 0, values, torch.zeros_like(values))), kish_ess(log_w)


def sample_log_uniform(
    n: int, low: float, high: float, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``n`` temperatures ``[n]`` K drawn log-uniformly (continuously) from ``[low, high]``."""
    lo, hi = math.log(to_kelvin(low)), math.log(to_kelvin(high))
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=dtype))


def log_temperature_derivative(
    log_prob: Callable[[Tensor, Tensor], Tensor], x: Tensor, temperature: Tensor
) -> tuple[Tensor, Tensor]:
    """``(log q(x | T) [n], ∂ log q(x | T) / ∂ log T [n])`` with a graph for training (``create_graph=True``).

    log_prob: ``(x, T [n] K) -> [n]`` differentiable in T (e.g. ``Generator.log_prob``); x: detached points;
    temperature: ``[n]`` K (detached; a fresh leaf log T is made here, T = exp(log T)).
    """
    log_t = torch.log(temperature.detach()).requires_grad_(True)
    log_q = log_prob(x, torch.exp(log_t))
    (derivative,) = torch.autograd.grad(log_q.sum(), log_t, create_graph=True)
    return log_q, derivative


def trade_residual(
    log_prob: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    temperature: Tensor,
    energy: Tensor,
    mean_energy: Tensor,
    threshold: float = DEFAULT_ENERGY_CAP,
) -> Tensor:
    """TRADE residual ``r [n] = ∂_logT log q(x | T) − (u_T(x) − β Ê_T[U])`` (see the module docs).

    x: points ``[n, ...]`` (detached); temperature: ``[n]`` K; energy: ``U(x)`` ``[n]`` kJ/mol (detached);
    mean_energy: ``Ê_T[U]`` ``[n]`` kJ/mol at each point's temperature. u is capped (:func:`cap_reduced_energy`).
    """
    _, derivative = log_temperature_derivative(log_prob, x, temperature)
    t = temperature.detach().to(derivative.dtype)
    u = cap_reduced_energy(reduced_potential(energy.detach().to(derivative.dtype), t), threshold)
    mean_u = reduced_potential(mean_energy.detach().to(derivative.dtype), t)
    return derivative - (u - mean_u)


def group_means(
    values: Tensor, group: Tensor, n_groups: int, all_reduce: Callable[[Tensor, str], Tensor] | None = None
) -> Tensor:
    """Detached mean of ``values [n]`` over the points of each group, returned per point ``[n]``.

    group: ``[n]`` integer ids in ``[0, n_groups)``; all_reduce: ``(tensor, "sum") -> tensor`` pooling the sums and
    counts of all data-parallel ranks (None: one process). Groups without points get mean 0 (unused).
    """
    totals = torch.zeros(2, n_groups, dtype=torch.float64, device=values.device)
    totals[0].index_add_(0, group, values.detach().to(torch.float64))
    totals[1].index_add_(0, group, torch.ones_like(values, dtype=torch.float64))
    if all_reduce is not None:
        totals = all_reduce(totals, "sum")
    means = totals[0] / totals[1].clamp(min=1.0)
    return means[group].to(values.dtype)


def group_softmax(
    log_w: Tensor, group: Tensor, n_groups: int, all_reduce: Callable[[Tensor, str], Tensor] | None = None
) -> Tensor:
    """Detached self-normalised weights ``[n]``: ``exp(log_w)`` over its sum within each group (pooled over ranks
    with ``all_reduce``, as in :func:`group_means`); non-finite log-weights get weight 0."""
    log_w = log_w.detach().to(torch.float64)
    log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
    peak = torch.full((n_groups,), -math.inf, dtype=torch.float64, device=log_w.device)
    peak = peak.scatter_reduce(0, group, log_w, "amax")
    if all_reduce is not None:
        peak = all_reduce(peak, "max")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(log_w - peak[group])
    totals = torch.zeros(n_groups, dtype=torch.float64, device=log_w.device).index_add_(0, group, weights)
    if all_reduce is not None:
        totals = all_reduce(totals, "sum")
    return weights / totals[group].clamp(min=1e-300)


def centred_trade_residual(
    log_prob: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    temperature: Tensor,
    energy: Tensor,
    group: Tensor,
    n_groups: int,
    threshold: float = DEFAULT_ENERGY_CAP,
    all_reduce: Callable[[Tensor, str], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Centred TRADE residual ``r [n] = g − mean_group(g)``, ``g = ∂_logT log q(x | T) − u_T(x)`` (module docs).

    Points of one group must share one temperature (``temperature [n]`` K, ``group [n]`` ids in
    ``[0, n_groups)``); x ``[n, ...]`` and energy ``U [n]`` kJ/mol as in :func:`trade_residual`. Returns
    ``(r, centre)`` where ``centre [n]`` (detached) estimates −E_q[u_T] at each point's temperature, so
    ``−k_B T · centre`` is the model's own E_T[U] in kJ/mol.
    """
    _, derivative = log_temperature_derivative(log_prob, x, temperature)
    t = temperature.detach().to(derivative.dtype)
    g = derivative - cap_reduced_energy(reduced_potential(energy.detach().to(derivative.dtype), t), threshold)
    centre = group_means(g, group, n_groups, all_reduce)
    return g - centre, centre


def huber(residual: Tensor, delta: float) -> Tensor:
    """Elementwise Huber loss ``[n]`` of a residual: r²/2 for |r| <= δ, δ(|r| − δ/2) above."""
    return functional.huber_loss(residual, torch.zeros_like(residual), reduction="none", delta=delta)


def ramp(step: int, start: int, length: int) -> float:
    """Ramp factor in [0, 1]: 0 before ``start``, rising linearly over ``length`` steps, then 1."""
    if step < start:
        return 0.0
    if length <= 0:
        return 1.0
    return min(1.0, (step - start + 1) / length)


def integrate_free_energy(temperatures: Tensor, mean_energy: Tensor, reference_index: int) -> Tensor:
    """``log Z(T_k) − log Z(T_ref)`` ``[K]`` from ``E_T[U]`` at sorted temperatures ``[K]`` K (mean_energy kJ/mol).

    Integrates −∫ E[U] dβ = −∫ E[u] d(log β) = ∫ E[u] d(log T) by the trapezoid rule in log T (E[u] = β E[U] is
    nearly constant in log T, exactly for harmonic systems), outward from ``temperatures[reference_index]``.
    """
    temperatures = temperatures.to(torch.float64)
    log_t = torch.log(temperatures)
    mean_u = reduced_potential(mean_energy.to(torch.float64), temperatures)
    segments = 0.5 * (mean_u[1:] + mean_u[:-1]) * (log_t[1:] - log_t[:-1])
    k0 = reference_index
    curve = torch.zeros_like(temperatures)
    curve[k0 + 1:] = torch.cumsum(segments[k0:], dim=0)
    curve[:k0] = -torch.flip(torch.cumsum(torch.flip(segments[:k0], [0]), dim=0), [0])
    return curve
